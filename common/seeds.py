"""Seeds derived from names: one per image (``purify --seed``) or per attacked copy
(``make_dataset``), stable across runs, batch sizes, processes and platforms."""

from __future__ import annotations

import hashlib


def name_seed(seed: int, name: str) -> int:
    """A 63-bit seed from the run ``seed`` and a ``name`` (e.g. a relative path). A name that
    is not valid UTF-8 (its undecodable bytes arrive as surrogates) is hashed as its original
    bytes."""
    digest = hashlib.sha256(f"{seed}/{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
