"""The tiny model that ships with the package: it is the default spec's build, and a fresh cache gets it at once."""

from __future__ import annotations

import json
import time

import torch

from rlvr.models import tiny


def test_the_shipped_model_is_the_default_specs_build():
    meta = json.loads((tiny.SHIPPED / "rlvr_tiny.json").read_text())
    assert tiny.TinySpec(**meta["spec"]) == tiny.TinySpec(), (
        "TinySpec changed but the shipped model did not: run python scripts/build_tiny_model.py")
    assert tiny.shipped_key() == tiny.TinySpec().key()


def test_a_fresh_cache_gets_the_shipped_model_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiny, "warm_start", lambda *args: (_ for _ in ()).throw(AssertionError("built")))
    started = time.perf_counter()
    path = tiny.ensure_tiny_model()
    assert time.perf_counter() - started < 10
    assert path == tmp_path / "tiny" / tiny.TinySpec().key()
    from rlvr.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(str(path), "float32"), load_tokenizer(str(path))
    assert sum(p.numel() for p in model.parameters()) > 500_000
    ids = torch.tensor([tokenizer("47+38=").input_ids])
    assert model(input_ids=ids).logits.shape[-1] == len(tokenizer)
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in tiny.SHIPPED.iterdir())


def test_another_spec_is_still_built(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(tiny, "warm_start", lambda model, tokenizer, spec: built.append(spec) or [0.0])
    spec = tiny.TinySpec(warmup_steps=3)
    path = tiny.ensure_tiny_model(spec)
    assert built == [spec] and path.name == spec.key()
