"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
import torch

from rlvr.kernels import logprob


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Kernel outputs start as NaN instead of whatever memory held, so an entry left unwritten fails."""

    def nan_empty(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(logprob, "empty", nan_empty)
