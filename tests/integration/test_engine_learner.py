"""The Hugging Face engine and the torch learner on the real tiny model, in-process."""

import pytest
import torch

from rlvr import algos
from rlvr.config import build_recipe
from rlvr.data.prompts import load_prompts, render
from rlvr.learner.torch import TorchLearner
from rlvr.models.loading import load_tokenizer
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.rollout.sampler import assemble_batch


def _setup(model_dir, **overrides):
    recipe = build_recipe({}, [f"model.path={model_dir}", "learner.lr=1e-3",
                               *[f"{k}={v}" for k, v in overrides.items()]])
    learner = TorchLearner(recipe, model_dir, algos.build("grpo"))
    tokenizer = load_tokenizer(model_dir)
    return recipe, learner, tokenizer, HFEngine(learner.model, tokenizer, batch_size=64)


def _batch(tokenizer, engine, sampling, count=12, n=4):
    prompts = load_prompts("tiny:train", limit=count)
    rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
    tokens = [render(p, "plain", tokenizer) for _, p in rows]
    completions = engine.generate(tokens, sampling)
    return assemble_batch(rows, tokens, completions, tokenizer.pad_token_id), completions


def test_generation_is_seeded_stops_on_eos_and_logprobs_match_the_learner(tiny_model_dir):
    torch.set_num_threads(1)
    _, learner, tokenizer, engine = _setup(tiny_model_dir)
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    batch, completions = _batch(tokenizer, engine, sampling)
    again, _ = _batch(tokenizer, engine, sampling)
    assert torch.equal(batch.response_tokens, again.response_tokens)
    for c in completions:
        assert len(c.tokens) == len(c.logprobs) > 0
        assert (c.finish_reason == "stop") == (c.tokens[-1] == tokenizer.eos_token_id)
        assert tokenizer.eos_token_id not in c.tokens[:-1]
    assert any(c.finish_reason == "stop" for c in completions)
    mask = batch.response_mask.bool()
    # The engine's log-probs equal those of the distributions generate sampled from (its own logits).
    torch.manual_seed(sampling.seed)
    reference = learner.model.generate(
        input_ids=batch.prompt_tokens, attention_mask=batch.prompt_mask, max_new_tokens=8, do_sample=True,
        temperature=1.0, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, output_logits=True, return_dict_in_generate=True)
    sampled = reference.sequences[:, batch.prompt_tokens.shape[1]:][:, : mask.shape[1]]
    assert torch.equal(sampled[mask], batch.response_tokens[mask])
    logits = torch.stack(reference.logits, dim=1)[:, : mask.shape[1]]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(batch.rollout_logprobs[mask], expected[mask], atol=1e-4)
    # The learner's recomputation (chunked kernel, response positions only) equals the sampler's.
    recomputed = learner.logprobs(batch)
    assert torch.allclose(recomputed[mask], batch.rollout_logprobs[mask], atol=1e-4)
    assert (recomputed[~mask] == 0).all()



@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 10, 0.9)])
def test_truncated_sampling_draws_what_generate_draws_with_log_probs_of_the_tempered_distribution(
        tiny_model_dir, temperature, top_k, top_p):
    """The engine applies temperature, top-k and top-p itself (recording the log-probs between them): the same tokens
    as generate's own warpers, log-probs of the tempered distribution before truncation, as the learner computes."""
    torch.set_num_threads(1)
    _, learner, tokenizer, engine = _setup(tiny_model_dir, **{"rollout.temperature": temperature})
    sampling = SamplingParams(max_new_tokens=8, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    batch, _ = _batch(tokenizer, engine, sampling)
    mask = batch.response_mask.bool()
    torch.manual_seed(sampling.seed)
    reference = learner.model.generate(
        input_ids=batch.prompt_tokens, attention_mask=batch.prompt_mask, max_new_tokens=8, do_sample=True,
        temperature=temperature, top_k=top_k, top_p=top_p, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id)
    sampled = reference[:, batch.prompt_tokens.shape[1]:][:, : mask.shape[1]]
    assert torch.equal(sampled[mask], batch.response_tokens[mask])
    recomputed = learner.logprobs(batch)  # at the recipe's temperature, over the whole vocabulary
    assert torch.allclose(recomputed[mask], batch.rollout_logprobs[mask], atol=1e-4)

def test_update_moves_logprobs_in_the_direction_of_the_advantage(tiny_model_dir):
    torch.manual_seed(0)
    _, learner, tokenizer, engine = _setup(tiny_model_dir)
    batch, _ = _batch(tokenizer, engine, SamplingParams(max_new_tokens=8, seed=1), count=16, n=1)
    n = len(batch)
    batch.rewards = torch.tensor([1.0, 0.0] * (n // 2))
    batch.advantages = torch.tensor([1.0, -1.0] * (n // 2))
    batch.old_logprobs = learner.logprobs(batch)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    metrics = learner.update(batch)
    after = learner.logprobs(batch)
    assert any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
    change = ((after - batch.old_logprobs) * batch.response_mask).sum(1)
    # One gradient step raises the advantage-weighted log-likelihood, and most rows move its way.
    assert (batch.advantages * change).sum() > 0
    assert (torch.sign(change) == batch.advantages).float().mean() > 0.6
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clip_frac", "actor/lr"):
        assert torch.isfinite(torch.tensor(metrics[key])), key


def test_one_update_per_rollout_needs_no_old_logprob_pass(tiny_model_dir):
    """With a single optimizer step the behaviour log-probs are the update's own forward, detached: the weights
    it reaches equal those reached with a separate recomputation pass (which the trainer then skips)."""
    torch.manual_seed(0)
    _, learner, tokenizer, engine = _setup(tiny_model_dir)
    batch, _ = _batch(tokenizer, engine, SamplingParams(max_new_tokens=8, seed=1), count=16, n=1)
    batch.advantages = torch.tensor([1.0, -1.0] * (len(batch) // 2))
    start = {k: v.clone() for k, v in learner.model.state_dict().items()}
    batch.old_logprobs = learner.logprobs(batch)
    recomputed = learner.update(batch)
    with_pass = {k: v.clone() for k, v in learner.model.state_dict().items()}

    _, learner, _, _ = _setup(tiny_model_dir)  # the same start, a fresh optimizer
    assert all(torch.equal(start[k], v) for k, v in learner.model.state_dict().items())
    batch.old_logprobs = None
    own = learner.update(batch)
    moved = max((with_pass[k] - start[k]).abs().max().item() for k in start)
    differ = max((v - with_pass[k]).abs().max().item() for k, v in learner.model.state_dict().items())
    assert moved > 1e-4 and differ < 1e-6
    assert own["actor/pg_loss"] == pytest.approx(recomputed["actor/pg_loss"], abs=1e-6)
    assert own["actor/ratio_mean"] == 1.0


def test_bf16_parameters_train_too(tiny_model_dir):
    torch.manual_seed(0)
    _, learner, tokenizer, engine = _setup(tiny_model_dir, **{"model.dtype": "bfloat16"})
    assert next(learner.model.parameters()).dtype == torch.bfloat16
    batch, _ = _batch(tokenizer, engine, SamplingParams(max_new_tokens=8, seed=2), count=16, n=1)
    batch.advantages = torch.tensor([1.0, -1.0] * (len(batch) // 2))
    batch.old_logprobs = learner.logprobs(batch)
    mask = batch.response_mask.bool()
    assert (batch.old_logprobs[mask] - batch.rollout_logprobs[mask]).abs().max() < 0.1  # bf16 forward noise
    metrics = learner.update(batch)
    assert torch.isfinite(torch.tensor(metrics["actor/grad_norm"])) and metrics["actor/skipped_steps"] == 0
    change = ((learner.logprobs(batch) - batch.old_logprobs) * batch.response_mask).sum(1)
    assert (batch.advantages * change).sum() > 0


def test_logprobs_are_skipped_when_not_asked_for(tiny_model_dir):
    _, _, tokenizer, engine = _setup(tiny_model_dir)
    asked = SamplingParams(max_new_tokens=8, seed=3)
    with_logprobs, _ = _batch(tokenizer, engine, asked, count=4, n=2)
    without, completions = _batch(tokenizer, engine, SamplingParams(max_new_tokens=8, seed=3, logprobs=False),
                                  count=4, n=2)
    assert torch.equal(with_logprobs.response_tokens, without.response_tokens)  # same samples either way
    assert all(c.logprobs == [] for c in completions)
    mask = without.response_mask.bool()
    assert without.rollout_logprobs[mask].isnan().all() and (without.rollout_logprobs[~mask] == 0).all()


def test_logged_losses_do_not_depend_on_the_micro_batch_size(tiny_model_dir):
    """Micro-batches add up to the mini-batch's loss: the logged pg_loss and kl are the mini-batch's whatever
    the cut (they used to be token-weighted a second time and shrink with more micro-batches)."""
    torch.manual_seed(0)
    metrics = {}
    for micro in (32, 4):
        _, learner, tokenizer, engine = _setup(tiny_model_dir, **{"learner.micro_batch_size": micro})
        learner.algorithm = algos.build("grpo", kl_coef=0.1)
        batch, _ = _batch(tokenizer, engine, SamplingParams(max_new_tokens=8, seed=1), count=16, n=2)
        batch.advantages = torch.tensor([1.0, -1.0] * (len(batch) // 2))
        batch.old_logprobs = learner.logprobs(batch)
        batch.ref_logprobs = batch.old_logprobs - 0.05 * batch.response_mask  # a fixed, non-zero KL
        metrics[micro] = learner.update(batch)
    for key in ("actor/pg_loss", "actor/kl", "actor/grad_norm", "actor/entropy"):
        assert metrics[4][key] == pytest.approx(metrics[32][key], rel=1e-4, abs=1e-7), key
    assert metrics[32]["actor/kl"] > 0
