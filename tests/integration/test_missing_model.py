"""``rlvr train`` with a model.path that does not exist: named as a missing local path, not as a bad hub id."""

from __future__ import annotations

from rlvr.cli import main
from tests.conftest import REPO


def test_a_train_model_path_that_does_not_exist_is_named_as_a_path(tmp_path, capsys):
    code = main(["train", str(REPO / "recipes" / "tiny" / "grpo.yaml"), "model.path=/nonexistent/model",
                 f"trainer.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "rlvr: model path '/nonexistent/model' does not exist, and it is not a Hugging Face hub id" in err
    assert "Repo id" not in err
