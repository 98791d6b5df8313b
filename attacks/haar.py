"""One-level orthonormal 2-D Haar wavelet transform of ``(B, C, H, W)`` tensors (even H, W).

Mallat, "A Theory for Multiresolution Signal Decomposition: The Wavelet Representation",
IEEE TPAMI 1989. Used by SSAH for its low-frequency constraint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` with even H, W -> ``(LL, LH, HL, HH)``, each ``(B, C, H/2, W/2)``."""
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"haar_dwt needs (B, C, H, W) with even H and W, got {tuple(x.shape)}")
    a, b, c, d = rearrange(x, "n ch (h p) (w q) -> (p q) n ch h w", p=2, q=2)
    ll = (a + b + c + d) / 2
    lh = (a + b - c - d) / 2
    hl = (a - b + c - d) / 2
    hh = (a - b - c + d) / 2
    return ll, lh, hl, hh


def haar_idwt(
    ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor, hh: torch.Tensor
) -> torch.Tensor:
    """Inverse of ``haar_dwt``: four ``(B, C, h, w)`` bands -> ``(B, C, 2h, 2w)``."""
    a = (ll + lh + hl + hh) / 2
    b = (ll + lh - hl - hh) / 2
    c = (ll - lh + hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    return rearrange(torch.stack((a, b, c, d)), "(p q) n ch h w -> n ch (h p) (w q)", p=2, q=2)


def low_frequency(x: torch.Tensor) -> torch.Tensor:
    """The image rebuilt from its Haar LL band alone (odd sizes: edge-padded, then cropped).

    Equals the mean of each 2x2 block, repeated over the block.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else x
    ll, lh, hl, hh = haar_dwt(padded)
    zero = torch.zeros_like(ll)
    return haar_idwt(ll, zero, zero, zero)[..., :h, :w]
