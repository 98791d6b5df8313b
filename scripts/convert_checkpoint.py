"""Re-save a trusted Linearity checkpoint as plain tensors and floats.

Some ``p1q2.pth`` copies store ``k``/``b`` as numpy scalars or tensors wrapped in pickled
objects, which ``torch.load(weights_only=True)`` refuses. Run this ONCE on a file you trust
(it unpickles it with ``weights_only=False``) to get a file the toolkit loads safely::

    python scripts/convert_checkpoint.py p1q2_original.pth p1q2.pth --trust
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch


def convert(src: Path, dst: Path) -> None:
    """Load trusted ``src``; save ``{'model', 'k', 'b'}`` with plain types to ``dst``."""
    if dst.exists():
        raise ValueError(f"refusing to overwrite {dst}")
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or not {"model", "k", "b"} <= set(ckpt):
        raise ValueError(f"{src} is not a Linearity checkpoint with 'model', 'k', 'b'")
    state = {k: torch.as_tensor(v).clone() for k, v in dict(ckpt["model"]).items()}
    k = [float(v) for v in ckpt["k"]]
    b = [float(v) for v in ckpt["b"]]
    torch.save({"model": state, "k": k, "b": b}, dst)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="original checkpoint (must be trusted)")
    parser.add_argument("dst", type=Path, help="output path (must not exist)")
    parser.add_argument("--trust", action="store_true", help="confirm that SRC is trusted")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.trust:
        parser.error("unpickling runs code from the file: pass --trust if you trust SRC")
    try:
        convert(args.src, args.dst)
    except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        parser.exit(1, f"convert_checkpoint.py: error: {err}\n")
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
