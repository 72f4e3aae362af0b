"""PRM early rejection in training rollouts, end to end: real Ray workers, the real tiny model, the real
reward pool, and the tiny task's exact partial-progress scorer."""

from __future__ import annotations

import json

import pytest

from rlvr.config import build_recipe
from rlvr.trainer import train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out


def test_training_with_early_rejection_keeps_n_rows_per_prompt_and_counts_every_token(tiny_model_dir, ray_session,
                                                                                      tmp_path):
    overrides = tiny_overrides(tiny_model_dir, tmp_path, **{
        "data.heldout": "null", "rollout.max_new_tokens": 8, "rollout.early_rejection.scorer": "arithmetic",
        "rollout.early_rejection.oversample": 3, "rollout.early_rejection.tau": 2})
    train(build_recipe({}, overrides))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2
    for row in rows:
        assert row["rollout/num_rows"] == 8 * 4  # data.batch_size x rollout.n, as without early rejection
        assert row["early_rejection/candidates"] == 8 * 4 * 3
        assert row["early_rejection/rejection_rate"] == 2 / 3
        # Rejected candidates spent at most tau tokens each; the kept rows' tokens are the trained ones.
        assert 0 < row["early_rejection/tokens_rejected"] <= 8 * 4 * 2 * 2
        assert row["tokens/generated"] == row["tokens/trained"] + row["early_rejection/tokens_rejected"]
        assert row["early_rejection/kept_score_mean"] >= row["early_rejection/candidate_score_mean"]
        assert row["actor/grad_norm"] > 0
