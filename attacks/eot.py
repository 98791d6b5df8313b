"""Random differentiable transforms for EOT (Athalye et al., ICML 2018).

Each is a callable ``(x, generator) -> x'`` on ``(B, 3, H, W)`` images in [0, 1] that draws
its randomness only from ``generator``; pass one as ``Attack(..., eot_transform=...)``.
"""

from __future__ import annotations

import torch

from attacks.base import check_int, check_number


class GaussianNoise:
    """Add N(0, sigma^2) noise and clip to [0, 1]."""

    def __init__(self, sigma: float = 2 / 255) -> None:
        check_number("sigma", sigma, minimum=0.0)
        self.sigma = float(sigma)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # drawn where the generator lives (a CPU generator with CUDA images works)
        noise = torch.randn(x.shape, generator=generator, device=generator.device)
        noise = noise.to(device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma:.4g})"


class RandomShift:
    """Circularly shift the whole batch by up to ``max_shift`` pixels in each direction."""

    def __init__(self, max_shift: int = 2) -> None:
        check_int("max_shift", max_shift, minimum=0)
        self.max_shift = max_shift

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = self.max_shift
        dy, dx = torch.randint(-k, k + 1, (2,), generator=generator, device=generator.device)
        return torch.roll(x, shifts=(int(dy), int(dx)), dims=(-2, -1))

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"
