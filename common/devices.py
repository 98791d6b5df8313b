"""Turn a user's ``device`` argument into a usable ``torch.device``, or say why it is not.

``torch.device("cuda")`` succeeds on a CPU-only build; the failure only comes later, as an
``AssertionError`` or ``RuntimeError`` from deep inside the first tensor moved there.
``resolve_device`` checks up front and raises ``ValueError`` with a clear message instead.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``torch.device``...) as a
    ``torch.device`` that this machine has; ``ValueError`` for a malformed name, CUDA/MPS
    without such a device, or a CUDA index beyond the device count."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this torch build sees no CUDA device")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) (0..{count - 1})")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    return resolved


def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously), so a clock read after it
    measures the work; nothing to wait for elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
