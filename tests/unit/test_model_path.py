"""A model argument that reads as a local path and is not there is named as a missing path, before any load;
built-in names, existing directories and hub ids pass through."""

from __future__ import annotations

import pytest

from rlvr.models.loading import check_model_path, resolve_model_path


@pytest.mark.parametrize("path", ["/nonexistent", "/nonexistent/model", "./nope", "../nope", "~/no-such-model",
                                  "a/b/c", "no such model"])
def test_a_missing_local_path_is_named_as_one(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"^model path '{path}' does not exist, and it is not a Hugging Face hub id, "
                                         r"which is 'org/name' \(Qwen/Qwen2.5-Math-1.5B\); the built-in models are "
                                         "tiny, smollm2-135m-instruct"):
        resolve_model_path(path)


def test_a_path_whose_first_part_is_here_is_local_and_shows_where_it_stops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for step in ("step_5", "step_8"):
        (tmp_path / "runs" / "exp1" / "checkpoints" / step).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"model path 'runs/exp1/checkpoints/step_10' does not exist \(runs/exp1/"
                                         r"checkpoints holds step_5, step_8\)"):
        check_model_path("runs/exp1/checkpoints/step_10")
    with pytest.raises(ValueError, match=r"model path 'runs/exp2' does not exist \(runs holds exp1\)"):
        check_model_path("runs/exp2")  # org/name-shaped, but ./runs is a directory here
    absolute = tmp_path / "runs" / "exp1" / "step_1"
    with pytest.raises(ValueError, match=f"\\({tmp_path}/runs/exp1 holds checkpoints\\)"):
        check_model_path(str(absolute))


def test_hub_ids_builtin_names_and_existing_directories_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    for path in ("Qwen/Qwen2.5-Math-1.5B", "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "tiny",
                 "smollm2-135m-instruct", "model", str(tmp_path / "model"), "./model"):
        check_model_path(path)
    assert resolve_model_path("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/model") == str(tmp_path / "model")  # transformers does not expand ~
