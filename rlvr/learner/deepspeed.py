"""The DeepSpeed learner: one rank of a ZeRO-2/3 data-parallel learner group (docs/deepspeed.md).

M ranks, one Ray actor each (:class:`rlvr.workers.actors.LearnerActor`), hold one policy between them:
ZeRO-2 partitions the AdamW state and the gradients over the ranks, ZeRO-3 the parameters too. The group
offers what :class:`rlvr.learner.torch.TorchLearner` offers, and rank 0 answers for it: every call goes to
every rank (ZeRO's gathers and reductions are collective), rank 0 returns the result, the others ``None``
or nothing.

Data parallelism. Every rank receives the whole step batch and works on its share of it: a mini-batch is
cut into M * k near-equal pieces of at most ``learner.micro_batch_size`` rows, k per rank
(:func:`plan_pieces`), so that every rank runs the same number of forward and backward passes. The loss of
each piece is normalised by the whole mini-batch's token and sequence counts (the algorithm's
``num_tokens`` / ``num_seqs``), which every rank computes from the batch without communication. DeepSpeed
averages the reduced gradients over the M ranks, so each rank backpropagates M times its loss: the reduced
gradient is then the sum over all pieces, the single-process learner's gradient on the same mini-batch.
Gradient clipping is DeepSpeed's, by the global norm over every rank's partition.

The LM head under ZeRO-3: :func:`rlvr.models.forward.response_logprobs` hands the LM-head weight straight
to the fused log-prob kernel instead of calling the head module, so no hook of that module would gather
it. DeepSpeed wraps :class:`_Policy`, whose forward is the whole log-prob computation, and the weight is
registered as an external parameter of it: gathered for the kernel's forward, gathered again for its
backward, and its gradient reduced like every other one.

The reference policy (KL) follows OpenRLHF: under ZeRO-3 a DeepSpeed inference engine partitioned like
the policy (``get_eval_ds_config(stage=3)``), under ZeRO-2 a full frozen copy per rank (OpenRLHF's
stage-0 engine amounts to that).

Weights for the rollout workers are gathered onto rank 0 bucket by bucket (:data:`SYNC_BUCKET_BYTES` of
parameters at a time under ``deepspeed.zero.GatheredParameters``), never the whole model at once on every
rank, and leave as the numpy arrays of :mod:`rlvr.transfer.arrays`, named as the Hugging Face model's
``state_dict``: the rollout side cannot tell them from the torch learner's.

``deepspeed`` is imported only here and only when a rank starts: ``import rlvr`` and the torch learner
never load it.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from rlvr.algos.algorithm import Algorithm
from rlvr.algos.objective import ADDITIVE_METRICS
from rlvr.batch import RolloutBatch
from rlvr.learner.torch import (linear_warmup, micro_loss, optimizer_steps, recipe_hyperparameters, step_metrics,
                                weight_metrics, weight_norm)
from rlvr.memory import LEARNER_MMAP_THRESHOLD
from rlvr.models.forward import response_logprobs
from rlvr.models.loading import load_model
from rlvr.transfer.specs import TensorSpec
from rlvr.transfer.arrays import digest_arrays, tensor_arrays

if TYPE_CHECKING:
    from rlvr.config import LearnerConfig, Recipe

SYNC_BUCKET_BYTES = 256 * 2**20  # parameters gathered at once for a weight sync or a save (OpenRLHF-sized)
ENGINE_DIR = "deepspeed"  # inside a checkpoint: DeepSpeed's optimizer and engine state, one file per rank
ENGINE_TAG = "state"


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join the learner group's process group: gloo on CPUs (CI), NCCL on GPUs.

    ``LOCAL_RANK`` is 0: Ray gives each rank actor its own device, which it sees as device 0. DeepSpeed's
    shared-memory all-reduce (CPU only) would JIT-compile a C++ op for ~30 s; gloo does without it.
    """
    cuda = torch.cuda.is_available()
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
    # Said, not detected: detection warns "unable to detect" a GPU on every CPU rank.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    # DeepSpeed calls torch.distributed's collectives under names torch 2.13 deprecates, once per call.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (the module whose op builder is replaced below)

    if not cuda:
        # ``deepspeed.comm.torch`` as an attribute is shadowed by the torch package deepspeed.comm imports.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")


def engine_config(cfg: LearnerConfig, dtype: str, cuda: bool) -> dict[str, Any]:
    """The DeepSpeed config of the policy engine.

    ``managed_gradient_accumulation: false`` makes every ``engine.step()`` the accumulation boundary, so a
    mini-batch may hold any number of micro-batches (the last one of a step batch is often smaller); the
    loss is already normalised over the mini-batch, hence ``gradient_accumulation_steps: 1``. bf16 keeps
    fp32 master weights in the optimizer partitions and skips a step with a non-finite gradient norm, as
    the torch learner does. The optimizer is torch's AdamW (DeepSpeed's fused Adam JIT-compiles for ~47 s
    on a CPU), also when it is offloaded.
    """
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": cuda, "contiguous_gradients": True}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16", "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def reference_config(cfg: LearnerConfig, dtype: str) -> dict[str, Any]:
    """The reference engine's config (ZeRO-3 only): partitioned like the policy, no optimizer."""
    return {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "zero_optimization": {"stage": 3},
            "bf16": {"enabled": dtype == "bfloat16"}, "steps_per_print": 2**62, "wall_clock_breakdown": False}


def plan_pieces(rows: int, ranks: int, micro_batch_size: int) -> list[list[int]]:
    """Rows ``0 .. rows-1`` cut into ``ranks * k`` contiguous pieces of near-equal size (at most one row
    apart, larger first), ``k = ceil(rows / (ranks * micro_batch_size))``; rank ``r`` takes pieces
    ``r*k .. r*k+k-1``. No piece exceeds ``micro_batch_size``; pieces are empty only when there are fewer
    rows than pieces, and never the first one."""
    per_rank = max(1, math.ceil(rows / (ranks * micro_batch_size)))
    count = ranks * per_rank
    sizes = [rows // count + (i < rows % count) for i in range(count)]
    starts = np.cumsum([0, *sizes]).tolist()
    return [list(range(starts[i], starts[i + 1])) for i in range(count)]


def rank_pieces(pieces: list[list[int]], rank: int, ranks: int) -> list[tuple[int, bool]]:
    """``(piece index, counts)`` for each of ``rank``'s passes. An empty piece is replaced by piece 0 that
    does not count (zero loss, no metrics): the rank must still join the others' collective passes."""
    per_rank = len(pieces) // ranks
    mine = range(rank * per_rank, (rank + 1) * per_rank)
    return [(index, True) if pieces[index] else (0, False) for index in mine]


class _Policy(torch.nn.Module):
    """What DeepSpeed wraps: a causal LM whose forward is the log-prob computation at response positions
    (:func:`rlvr.models.forward.response_logprobs`), so ZeRO-3's hooks span the LM-head kernel too."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, prompt_tokens: Tensor, prompt_mask: Tensor, response_tokens: Tensor, response_mask: Tensor,
                temperature: float, with_entropy: bool, with_hidden: bool = False):
        return response_logprobs(self.model, prompt_tokens, prompt_mask, response_tokens, response_mask,
                                 temperature, with_entropy, with_hidden)


class DeepSpeedLearner:
    """One rank of the learner group. Every method is collective: call it on every rank, in the same order."""

    mmap_threshold = LEARNER_MMAP_THRESHOLD

    def __init__(self, recipe: Recipe, model_dir: str, algorithm: Algorithm, rank: int = 0, world_size: int = 1):
        import deepspeed

        if algorithm.needs_hidden:  # the recipe check says so earlier; this guards direct use
            raise ValueError(f"algorithm {algorithm.name!r} needs the LM-head weight in its loss, which ZeRO "
                             "partitions; use learner.backend torch")
        self.recipe, self.algorithm, self.rank, self.world_size = recipe, algorithm, rank, world_size
        cfg, dtype = recipe.learner, recipe.model.dtype
        self.stage, self.temperature = cfg.zero_stage, recipe.rollout.temperature
        torch.manual_seed(recipe.trainer.seed)
        config = engine_config(cfg, dtype, torch.cuda.is_available())
        # Every rank loads the whole model into host memory and deepspeed.initialize partitions it (ZeRO-3).
        # Not transformers' zero.Init loading: under bf16 it computes the rotary inv_freq with a bf16 arange,
        # which moved the tiny model's log-probs by up to 0.04 against the rollout engine's.
        # Tiled MLPs under ZeRO-2 (whole weights); ZeRO-3 gathers a weight only inside its own module's forward.
        # No row blocks in the recompute (model.checkpoint_tokens): each block would hand a weight a gradient of its
        # own within one backward, and ZeRO-1/2 reduce a parameter's gradient once per backward.
        tiled = recipe.model.tiled_mlp if self.stage < 3 else False
        self.model = load_model(model_dir, dtype, recipe.model.gradient_checkpointing, recipe.model.trust_remote_code,
                                tiled, recipe.model.tiled_mlp_tokens, checkpoint_tokens=None)
        self.model.train()
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                      weight_decay=cfg.weight_decay)
        # Stepped here, not by DeepSpeed: like the torch learner's, it advances also past a skipped step.
        self.scheduler = linear_warmup(optimizer, cfg.warmup_steps)
        self.engine, *_ = deepspeed.initialize(model=_Policy(self.model), optimizer=optimizer, config=config,
                                               dist_init_required=False)
        self.device = self.engine.device
        self._register_lm_head(self.engine.module)
        self.reference = self._reference(model_dir) if algorithm.needs_reference else None

    # -- setup -------------------------------------------------------------------------------------
    init_group = staticmethod(init_process_group)

    def sampling_module(self) -> torch.nn.Module | None:
        """The module whole in this process under ZeRO-2; under ZeRO-3 none: a partitioned module's forward is a
        collective that the other ranks would have to join for every generated token."""
        return self.model if self.stage < 3 else None

    def _register_lm_head(self, policy: _Policy) -> None:
        if self.stage == 3:
            import deepspeed

            deepspeed.zero.register_external_parameter(policy, policy.model.get_output_embeddings().weight)

    def _reference(self, model_dir: str):
        """The frozen reference policy: a ZeRO-3 inference engine, or a full copy on this rank's device."""
        recipe = self.recipe
        model = load_model(model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
        model.requires_grad_(False).eval()
        if self.stage < 3:
            return _Policy(model).to(self.device)
        import deepspeed

        config = reference_config(recipe.learner, recipe.model.dtype)
        engine, *_ = deepspeed.initialize(model=_Policy(model), config=config, dist_init_required=False)
        self._register_lm_head(engine.module)
        return engine

    # -- forward -----------------------------------------------------------------------------------
    def _forward(self, policy, micro: RolloutBatch, with_entropy: bool, with_hidden: bool = False):
        micro = _to_device(micro, self.device)
        return policy(micro.prompt_tokens, micro.prompt_mask, micro.response_tokens, micro.response_mask,
                      self.temperature, with_entropy, with_hidden)

    def _forward_for_loss(self, micro: RolloutBatch, with_entropy: bool, with_hidden: bool):
        return self._forward(self.engine, micro, with_entropy, with_hidden)

    @torch.no_grad()
    def _entropy(self, micro: RolloutBatch) -> Tensor:  # [n,T]
        return self._forward(self.engine, micro, with_entropy=True)[1].cpu()

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, reference: bool = False, everywhere: bool = False) -> Tensor | None:
        """[N,T] log-probs of the batch's responses under the policy (or the reference); each rank computes its
        pieces, rank 0 returns them all in row order (``everywhere``: every rank does), the other ranks ``None``."""
        policy = self.reference if reference else self.engine
        pieces = plan_pieces(len(batch), self.world_size, self.recipe.learner.micro_batch_size)
        mine = []
        for index, counts in rank_pieces(pieces, self.rank, self.world_size):
            logp, _ = self._forward(policy, batch.select(pieces[index]).trimmed(), with_entropy=False)
            if counts:
                mine.append((pieces[index], logp.float().cpu()))
        parts = self._gather(mine, everywhere)
        if parts is None:
            return None
        out = torch.zeros(batch.response_tokens.shape)
        for rows, logp in (piece for part in parts for piece in part):
            out[rows, : logp.shape[1]] = logp
        return out

    # -- update ------------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``epochs`` x mini-batches of optimizer steps on ``batch``, as the torch learner; rank 0 returns
        the step's learner metrics over every rank's tokens, the other ranks ``{}``."""
        before = self._weight_norm()
        sums, grad_norms, skipped = optimizer_steps(batch, self.recipe.learner, self._optimizer_step)
        after = self._weight_norm()
        totals: dict[str, float] = defaultdict(float)
        for part in self._gather(dict(sums)) or []:
            for key, value in part.items():
                totals[key] += value
        if self.rank != 0:
            return {}
        return {**step_metrics(totals, grad_norms, skipped, self.scheduler.get_last_lr()[0]),
                **weight_metrics(before, after)}

    def _weight_norm(self) -> float:
        """The policy weights' L2 norm (collective: under ZeRO-3 each rank holds a partition, ``ds_tensor``)."""
        if self.stage < 3:
            return weight_norm(self.model.parameters())
        local = weight_norm((getattr(p, "ds_tensor", p) for p in self.model.parameters()), squared=True)
        return sum(self._gather(local, everywhere=True)) ** 0.5

    def _optimizer_step(self, minibatch: RolloutBatch, sums: dict[str, float]) -> tuple[float, bool]:
        """One optimizer step on this rank's pieces of ``minibatch``; adds this rank's share of the metrics
        to ``sums``. Returns the global gradient norm before clipping and whether the step was applied."""
        algo, ranks = self.algorithm, self.world_size
        num_tokens = float(minibatch.response_mask.sum().item())
        pieces = plan_pieces(len(minibatch), ranks, self.recipe.learner.micro_batch_size)
        real = [i for i, rows in enumerate(pieces) if rows]
        # Every rank computes every piece's context (the same no-grad forwards, in step): mini-batch-scope
        # forking tokens rank entropies over the whole mini-batch.
        contexts = dict(zip(real, algo.minibatch_context(minibatch, [pieces[i] for i in real], self._entropy)))
        lr = self.scheduler.get_last_lr()[0]
        for index, counts in rank_pieces(pieces, self.rank, ranks):
            micro = _to_device(minibatch.select(pieces[index]).trimmed(), self.device)
            context = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in contexts[index].items()}
            loss, metrics = micro_loss(algo, self._forward_for_loss, micro, num_tokens, float(len(minibatch)),
                                       len(real), lr, context)
            # x ranks: DeepSpeed averages the ranks' gradients, the mini-batch's gradient is their sum.
            self.engine.backward(loss * (ranks if counts else 0.0), scale_wrt_gas=False)
            if counts:
                share = float(micro.response_mask.sum().item()) / max(num_tokens, 1.0)
                for key, value in metrics.items():
                    sums[key] += value if key in ADDITIVE_METRICS else value * share
        self.engine.step()
        self.scheduler.step()
        applied = self.engine.was_step_applied()
        if applied:
            step_metrics = algo.on_optimizer_step()
            if self.rank == 0:  # counted once, not once per rank
                for key, value in step_metrics.items():
                    sums[key] += value
        return float(self.engine.get_global_grad_norm()), applied

    # -- weights and state -------------------------------------------------------------------------
    def _gathered(self, buckets: list[list[tuple[list[str], Tensor]]]) -> Iterator[list[tuple[list[str], Tensor]]]:
        """Each of ``buckets`` (:func:`_buckets` of the policy's state) with its parameters whole while it is the
        current one: under ZeRO-3 gathered on every rank (a collective: every rank runs this through, in step)
        and released before the next, so no rank holds more than one bucket beyond its partition."""
        import deepspeed

        for bucket in buckets:
            partitioned = [tensor for _, tensor in bucket if hasattr(tensor, "ds_id")]
            with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None, enabled=bool(partitioned)):
                yield bucket

    def _full_state(self) -> dict[str, Tensor]:
        """The policy's ``state_dict`` as CPU copies on rank 0 (``{}`` elsewhere), gathered
        :data:`SYNC_BUCKET_BYTES` at a time (:meth:`_gathered`; rank 0 holds the copies besides)."""
        out: dict[str, Tensor] = {}
        for bucket in self._gathered(_buckets(self.model.state_dict(keep_vars=True), SYNC_BUCKET_BYTES)):
            if self.rank == 0:
                for names, tensor in bucket:
                    out.update(dict.fromkeys(names, tensor.detach().to("cpu", copy=True)))
        return out

    def device_weights(self) -> tuple[list[TensorSpec], Iterator[tuple[str, Tensor]]]:
        """The full policy weights on this rank's device, for a GPU weight sync (:mod:`rlvr.workers.sync`): every
        tensor's spec up front (Hugging Face names, the learner's dtype; ZeRO-3 parameters at their full shape),
        and the tensors in that order as an iterator that every rank must run through together, since under
        ZeRO-3 it gathers bucket by bucket (:meth:`_gathered`). Gathered tensors are yielded as copies: vLLM's
        NCCL packer may still hold a tensor when its bucket is released. Tied weights go under each name."""
        buckets = _buckets(self.model.state_dict(keep_vars=True), SYNC_BUCKET_BYTES)
        specs = [TensorSpec(name, tensor.dtype, tuple(getattr(tensor, "ds_shape", tensor.shape)))
                 for bucket in buckets for names, tensor in bucket for name in names]

        def tensors() -> Iterator[tuple[str, Tensor]]:
            for bucket in self._gathered(buckets):
                for names, tensor in bucket:
                    full = tensor.detach().clone() if hasattr(tensor, "ds_id") else tensor.detach()
                    for name in names:
                        yield name, full

        return specs, tensors()

    def weights(self) -> dict[str, np.ndarray]:
        """The full policy weights as numpy arrays (:mod:`rlvr.transfer.arrays`) on rank 0; ``{}`` elsewhere."""
        return tensor_arrays(self._full_state())

    def digest(self) -> str:
        """:func:`rlvr.transfer.arrays.digest` of the full weights on rank 0; ``""`` elsewhere."""
        arrays = self.weights()
        return digest_arrays(arrays) if self.rank == 0 else ""

    def save(self, directory: str) -> dict:
        """The model in Hugging Face format and the scheduler state (rank 0), and DeepSpeed's optimizer and engine
        state (every rank its partition) under ``directory/deepspeed``; returns the algorithm's learner-side state,
        which the driver saves with its own."""
        state = self._full_state()
        if self.rank == 0:
            self.model.save_pretrained(directory, state_dict=state, safe_serialization=True)
            torch.save({"scheduler": self.scheduler.state_dict()}, Path(directory) / "learner_state.pt")
        self.engine.save_checkpoint(str(Path(directory) / ENGINE_DIR), tag=ENGINE_TAG, save_latest=False)
        return self.algorithm.state_dict()

    def load(self, directory: str, algorithm_state: dict) -> None:
        """Resume from :meth:`save`'s files; the group must have as many ranks and the same ZeRO stage."""
        engine_dir = Path(directory) / ENGINE_DIR
        if not (engine_dir / ENGINE_TAG).is_dir():
            raise FileNotFoundError(f"{directory} holds no DeepSpeed state ({ENGINE_DIR}/{ENGINE_TAG}/); was it "
                                    "saved by learner.backend torch? Resume with the backend that wrote it")
        self.engine.load_checkpoint(str(engine_dir), tag=ENGINE_TAG, load_optimizer_states=True,
                                    load_lr_scheduler_states=False)
        state = torch.load(Path(directory) / "learner_state.pt", weights_only=False)
        self.scheduler.load_state_dict(state["scheduler"])
        recipe_hyperparameters(self.scheduler, self.recipe.learner)
        self.algorithm.load_state_dict(algorithm_state)

    def _gather(self, value: Any, everywhere: bool = False) -> list[Any] | None:
        """Every rank's ``value``, in rank order, on rank 0 (``everywhere``: on every rank; ``None`` elsewhere)."""
        if self.world_size == 1:
            return [value]
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, value)
        return parts if self.rank == 0 or everywhere else None


def _buckets(state: dict[str, Tensor], limit: int) -> list[list[tuple[list[str], Tensor]]]:
    """``state``'s tensors in order, each once with all its names (tied weights share one), grouped into
    buckets of about ``limit`` bytes (ZeRO-3 parameters count their full size, ``ds_numel``)."""
    by_tensor: dict[int, tuple[list[str], Tensor]] = {}
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), ([], tensor))[0].append(name)
    buckets, current, size = [], [], 0
    for names, tensor in by_tensor.values():
        current.append((names, tensor))
        size += getattr(tensor, "ds_numel", tensor.numel()) * tensor.element_size()
        if size >= limit:
            buckets.append(current)
            current, size = [], 0
    return buckets + [current] if current else buckets


def _to_device(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    """``batch`` with its tensors (and algorithm fields) on ``device``; the same object on a CPU."""
    if device.type == "cpu":
        return batch
    moved = {f.name: getattr(batch, f.name).to(device) for f in fields(batch)
             if isinstance(getattr(batch, f.name), Tensor)}
    moved["algo_fields"] = {k: v.to(device) for k, v in batch.algo_fields.items()}
    return replace(batch, **moved)
