"""Shared fixtures: a quickly warm-started tiny model and one private Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU the Triton kernels run in Triton's interpreter (on CPU tensors, fp32). The variable is read
# when a kernel is decorated, so it is set before anything imports rlvr.kernels' Triton modules.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        _has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        _has_cuda = False
    if not _has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the project's data sets, beside the clone (never copied in)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need CUDA: skipped, and said so, where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (a GPU test); run tests/gpu on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The tests' own model cache (``$RLVR_TEST_CACHE_DIR``, default ``~/.cache/rlvr-tests``), never the user's
    ~/.cache/rlvr. It lasts between sessions: the tiny model is keyed by its spec and a converted GGUF by its
    file's hash, so a changed spec or file builds anew."""
    path = Path(os.environ.get("RLVR_TEST_CACHE_DIR", Path.home() / ".cache" / "rlvr-tests"))
    path.mkdir(parents=True, exist_ok=True)
    os.environ["RLVR_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> str:
    """The real tiny model with a short warm start (enough for a non-zero reward, quick to build)."""
    from rlvr.models.tiny import TinySpec, ensure_tiny_model

    return str(ensure_tiny_model(TinySpec(warmup_steps=120)))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_overrides(model_dir: str, output_dir: Path, **extra: object) -> list[str]:
    """Overrides that make the tiny recipe a few-second run: few prompts, few steps, a small held-out set."""
    values = {
        "model.path": model_dir,
        "trainer.output_dir": str(output_dir),
        "trainer.total_steps": 2,
        "trainer.progress": False,
        "data.batch_size": 8,
        "data.heldout_size": 32,
        "rollout.n": 4,
        "placement.num_threads": 1,
        "placement.object_store_mb": 256,
        "reward.function": "tests.rewards_for_tests:by_length",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]
