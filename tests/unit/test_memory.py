"""Memory accounting (rlvr/memory.py): tensor bytes, the per-step peak, and learner phases whose freed
tensors go back to the kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.memory import heap_stats, model_bytes, optimizer_state_bytes, tensor_bytes

MiB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc")


def _resettable() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def test_tensor_bytes_counts_tied_weights_and_views_once():
    weight = torch.zeros(100, 10)
    embed, head = torch.nn.Embedding(100, 10), torch.nn.Linear(10, 100, bias=False)
    embed.weight = head.weight = torch.nn.Parameter(weight)
    model = torch.nn.ModuleDict({"embed": embed, "head": head})
    assert model_bytes(model) == 100 * 10 * 4
    assert tensor_bytes([weight, weight[:10], weight.T, None, torch.zeros(3, dtype=torch.float64)]) == 4000 + 24
    optimizer = torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(optimizer) == 0  # AdamW allocates its moments at the first step
    model["head"](torch.ones(2, 10)).sum().backward()
    optimizer.step()
    assert optimizer_state_bytes(optimizer) >= 2 * 4000  # two moments (and the step counts)


_PEAK_SCRIPT = """
import torch
from rlvr.memory import peak_resident_bytes, resident_bytes
from rlvr.memory import peak_memory_bytes
MiB = 2**20
peak_memory_bytes()  # starts a new window
start = resident_bytes()
big = torch.ones(256 * MiB // 4)  # touched: resident
del big
first = peak_memory_bytes()
second = peak_memory_bytes()
assert first >= start + 200 * MiB, f"peak {first // MiB} MiB, resident before {start // MiB} MiB"
assert second < first - 150 * MiB, f"next window {second // MiB} MiB"  # the freed 256 MiB no longer counts
assert peak_resident_bytes() >= resident_bytes() - MiB
"""


@linux_only
def test_the_peak_is_each_steps_own_not_the_process_lifetime():
    """In a fresh interpreter: in one that earlier tests have used, the 256 MiB can come from pages a heap already
    holds (freed, not yet trimmed), so that the high-water mark does not move."""
    if not _resettable():
        pytest.skip("this kernel does not let the process reset its peak resident set")
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


_PHASE_SCRIPT = """
import torch
from rlvr.memory import heap_stats, learner_phase, release_free_memory, resident_bytes
MiB = 2**20
warm = torch.ones(6 * MiB)  # 24 MiB, mapped and freed: glibc's sliding threshold rises above 4 MiB, as it
del warm  # does in any process that has freed a large tensor (and a phase's end sets it to 32 MiB)
release_free_memory()
start = resident_bytes()
with learner_phase():
    mapped = heap_stats()["mmapped"]
    # Activation-sized tensors (4 MiB: under glibc's own 32 MiB threshold, so heap memory outside a phase), with
    # small survivors between them that would pin a heap's freed holes.
    tensors = [torch.ones(MiB) for _ in range(60)]
    survivors = [torch.ones(100) for _ in range(60)]
    grown = heap_stats()["mmapped"] - mapped
    assert grown >= 200 * MiB, f"mapped {grown // MiB} MiB"  # each in pages of its own ...
    del tensors
    held = resident_bytes() - start
    assert held < 60 * MiB, f"held {held // MiB} MiB after free"  # ... returned to the kernel when freed
held = resident_bytes() - start
assert held < 60 * MiB, f"held {held // MiB} MiB after the phase"
"""


@linux_only
def test_a_learner_phase_maps_its_tensors_and_gives_them_back():
    """In a fresh interpreter: a process that has already freed hundreds of MB (earlier tests) serves the phase's
    first allocations from its heap's free space, which only the trim at the phase's end returns."""
    if not heap_stats():
        pytest.skip("glibc's malloc is not the allocator here")
    done = subprocess.run([sys.executable, "-c", _PHASE_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
