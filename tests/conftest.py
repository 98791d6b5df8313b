"""Shared fixtures: a checkpoint in the exact p1q2.pth format, tiny image folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import IQAModel

P1Q2_K = [0.5, 2.0, 3.0]
P1Q2_B = [10.0, 20.0, 30.0]


@pytest.fixture(scope="session")
def p1q2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Linearity checkpoint in ``p1q2.pth`` format (k/b as lists)."""
    gen = torch.Generator().manual_seed(0)
    model = IQAModel()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "p1q2.pth"
    torch.save({"model": state, "k": list(P1Q2_K), "b": list(P1Q2_B)}, path)
    return path
