"""A step batch is put into the object store once; what the driver changes afterwards travels beside the reference
(StagedBatch.changes) and the learner applies it (with_changes), so the learner sees the driver's batch."""

from __future__ import annotations

import torch

from rlvr.batch import RolloutBatch, with_changes
from rlvr.workers.placement import StagedBatch


def _batch() -> RolloutBatch:
    return RolloutBatch(prompt_id=["a", "a", "b", "b"], group=torch.tensor([0, 0, 1, 1]),
                        prompt_tokens=torch.ones(4, 2, dtype=torch.long), prompt_mask=torch.ones(4, 2, dtype=torch.long),
                        response_tokens=torch.ones(4, 3, dtype=torch.long), response_mask=torch.ones(4, 3),
                        rollout_logprobs=torch.zeros(4, 3), rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
                        algo_fields={"kept": torch.ones(4)})


def test_changes_are_the_fields_set_after_the_put_and_the_learner_applies_them():
    batch = _batch()
    staged = StagedBatch(batch, ref=None)
    assert staged.changes() == {}
    put = _batch()  # what the learner gets back from the object store: an equal, separate copy
    batch.advantages = torch.tensor([0.5, -0.5, 0.0, 0.0])
    batch.ref_logprobs = torch.full((4, 3), -1.0)
    batch.algo_fields["copo_global"] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    changes = staged.changes()
    assert set(changes) == {"advantages", "ref_logprobs", "algo_fields"}
    assert set(changes["algo_fields"]) == {"copo_global"}  # the fields already put do not travel again
    learner_side = with_changes(put, changes)
    assert torch.equal(learner_side.advantages, batch.advantages)
    assert torch.equal(learner_side.ref_logprobs, batch.ref_logprobs)
    assert set(learner_side.algo_fields) == {"kept", "copo_global"}
    assert learner_side.old_logprobs is None and torch.equal(learner_side.rewards, batch.rewards)
    batch.algo_fields["kept"] = torch.zeros(4)  # replaced on the driver: sent again
    assert set(staged.changes()["algo_fields"]) == {"copo_global", "kept"}
