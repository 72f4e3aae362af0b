"""The recipe schema: one pydantic model per section, YAML recipes, ``key=value`` overrides.

Every field says what it does, its unit and where its default comes from. Unknown keys and bad values
are errors that name the field path, the value and what is allowed (:class:`RecipeError`), raised before
any work starts.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from rlvr.algos.options import AlgorithmOptions
from rlvr.learner import registry as learners
from rlvr.rollout import registry as engines
from rlvr.data.sources import DatasetSpec
from rlvr.eval.settings import EvalSampling



class RecipeError(ValueError):
    """A recipe or an override is wrong; the message says where, with which value, and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: str = Field("tiny", description="'tiny' (the embedded model, built locally), a local Hugging Face "
                      "model directory, or a hub id such as Qwen/Qwen2.5-Math-1.5B.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Parameter dtype of learner and rollout.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute each layer's activations in backward instead of keeping them (about a third "
        "more compute; a micro-batch keeps only each layer's input, SmolLM2-135M 0.08 MB per token instead of "
        "1.7 MB, docs/memory.md). Default: on, except for the embedded tiny model, whose activations are small "
        "next to the cost of recomputing them.")
    tiled_mlp: bool | None = Field(
        None, description="In the update, gated SiLU MLPs (Llama, Qwen, Mistral, SmolLM2) keep only their input and "
        "recompute a block of tokens at a time in the backward (rlvr.models.tiled_mlp): the largest transient of a "
        "checkpointed update, SmolLM2-135M's 145 MiB at 3.8k tokens, becomes one block's. Default: on when "
        "gradient checkpointing is. Not under ZeRO-3, whose partitioned weights take the module's own forward.")
    tiled_mlp_tokens: int = Field(512, ge=1, description="Tokens per block of a tiled MLP's backward.")
    checkpoint_tokens: int | None = Field(
        1024, ge=1, description="With gradient checkpointing, the backward recomputes each layer on row blocks of at "
        "most this many tokens (rows x padded width; at least one row; rlvr.models.checkpointing): the recompute "
        "on top of all the gradients, SmolLM2-135M's ~115 MiB at 4k tokens, becomes a block's. null: the whole "
        "micro-batch at once. Torch learner only: a block per gradient is more than ZeRO's once-per-backward "
        "reduction allows.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own modelling code (transformers' "
                                    "trust_remote_code), for architectures transformers does not ship.")


class DataConfig(Section):
    train: str | DatasetSpec = Field(
        "tiny:train", description="Prompt source (docs/data.md): 'tiny:train', a .jsonl/.json/.parquet file, a "
        "'name[:split]' that datasets.load_dataset reads (hub id or local dataset directory), or a mapping "
        "{path, name, split, data_files} with load_dataset's meaning ({path: parquet, data_files: f.parquet}; "
        "a save_to_disk directory as path is read with load_from_disk).")
    train_size: int | None = Field(None, ge=1, description="Use the first K training prompts (default: all); "
                                   "a small pool makes prompts recur, as DCPO's per-prompt statistics need.")
    heldout: str | DatasetSpec | None = Field(
        "tiny:heldout", description="Held-out prompts scored before the first and after the last step "
        "(heldout/accuracy), in any form data.train takes; null to skip.")
    heldout_size: int | None = Field(None, ge=1, description="Use the first K held-out prompts (default: all).")
    problem_key: str = Field("problem", description="The problem column; dotted keys read nested fields. It holds "
                             "text, or a list of {role, content} chat messages (TRL / verl: 'prompt'), which go "
                             "through the model's chat template as they are.")
    answer_key: str = Field("answer", description="The gold-answer column; dotted keys read nested fields "
                            "(verl parquet: reward_model.ground_truth).")
    answer_format: Literal["raw", "gsm8k"] = Field(
        "raw", description="How the answer column holds the gold answer: 'raw' (as it is) or 'gsm8k' (a worked "
        "solution ending in '#### 42', as openai/gsm8k's answer column: the text after '####', stripped).")
    template: str = Field(
        "plain", description="Prompt template: 'plain' (the raw problem), 'chat' (the model's chat template), "
        "'qwen-boxed' (Qwen2.5-Math chain of thought with a boxed answer), 'r1' (DeepSeek-R1's instruction in "
        "the user message), or a format string with a {problem} field. Chat-message problems always use the "
        "chat template; qwen-boxed adds its system prompt only where they have none (rlvr.data.prompts.render).")
    batch_size: int = Field(32, ge=1, description="Prompts per step (each sampled rollout.n times).")
    shuffle: bool = Field(True, description="Shuffle the training prompts each epoch (seeded by trainer.seed).")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="A row that cannot be a prompt (a missing or null problem/answer field, an empty problem, "
        "an answer not in data.answer_format, an id an earlier row has): 'error' stops the run naming the file and "
        "line (a table's row index); 'skip' leaves such rows out, counted in one warning that shows the first few. "
        "A file that is not UTF-8 or not JSON always stops the run.")

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from rlvr.data.prompts import check_template

        return check_template(value)

    @field_validator("train", "heldout", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return DatasetSpec.parse(value)
        if value is not None and not isinstance(value, (str, DatasetSpec)):
            raise ValueError("a source is a string ('tiny:train', a file, 'name[:split]') or a mapping {path, name, "
                             "split, data_files}")
        return value


class EarlyRejectionConfig(Section):
    """PRM early rejection in training rollouts (rlvr.rollout.early_rejection; ALGORITHMS.md section 8)."""

    scorer: str | None = Field(None, description="Scorer of partial responses: 'arithmetic' (the tiny task), "
                               "'math-shepherd:PATH', 'qwen-prm:PATH', or a 'module:function' with "
                               "fn(prompt, partial_response) -> float; null: off (plain sampling).")
    scorer_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of a PRM scorer's from_pretrained: dtype, trust_remote_code, "
        "step_delimiter, batch_size, device.")
    oversample: int = Field(4, ge=2, description="Candidates per kept row: n * oversample are sampled to tau "
                            "tokens, the best n finished (the paper keeps 1/M = 1/4).")
    tau: int = Field(64, ge=1, description="Tokens generated before the partial responses are scored (paper 64).")


class RolloutConfig(Section):
    engine: str = Field(engines.DEFAULT, description="The rollout engine (rlvr list engines): hf, Hugging Face "
                        "generate (CPU / small GPU); vllm, vLLM 0.32 (CUDA GPUs, the 'gpu' extra, docs/multi-gpu.md; "
                        "or its CPU build).")
    n: int = Field(8, ge=1, description="Samples per prompt (the GRPO group size G; TRL num_generations 8).")
    max_new_tokens: int = Field(16, ge=1, description="Response length limit in tokens.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature (DAPO recipe 1.0).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 disables it.")
    batch_size: int = Field(256, ge=1, description="Sequences per generate call (memory knob of the Hugging Face "
                            "engine; vLLM schedules its own batches and gets every request of a call at once).")
    num_workers: int = Field(1, ge=1, description="Rollout engines in placement.mode split, each a Ray actor with a "
                             "copy of the policy (vLLM: rollout.tensor_parallel_size GPUs each); a step's requests "
                             "are shared out evenly (verl / OpenRLHF: vllm_num_engines). Colocated placement has one "
                             "engine per learner rank with vLLM (rank 0's only with hf) and leaves this at 1.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM only. GPUs per engine (tensor parallelism, on one "
                                      "node); 1 in colocated placement, where each learner rank's GPU holds one "
                                      "engine.")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="vLLM only. Fraction of each engine GPU's "
                                          "whole memory the awake engine may take, weights and KV cache together "
                                          "(verl's default 0.5 for colocated engines, which sleep while the learner "
                                          "trains; split engines own their GPUs: 0.85-0.9).")
    enforce_eager: bool = Field(False, description="vLLM only. No CUDA graphs: less memory and a faster start, "
                                "slower decoding.")
    max_model_len: int | None = Field(None, ge=1, description="vLLM only. Context limit in tokens (prompt + "
                                      "response); default: the model's own. A smaller one lets vLLM start with less "
                                      "KV-cache memory.")
    enable_prefix_caching: bool = Field(True, description="vLLM only. Reuse the KV cache of a prompt across its n "
                                        "samples (a group is n requests of one prompt).")
    kv_cache_gb: float | None = Field(None, gt=0.0, description="vLLM only. KV cache size in GiB. Default: on GPUs "
                                      "what gpu_memory_utilization leaves after the weights; with vLLM's CPU build "
                                      "1 GiB (what VLLM_CPU_KVCACHE_SPACE sets; SmolLM2-135M in float32 holds "
                                      "about 23k tokens in it).")
    max_staleness: int = Field(0, ge=0, description="Off-policy rollouts: 0 samples every step's batch with the "
                               "weights it trains (on-policy); k > 0 lets the engines sample up to k steps ahead while "
                               "the learner trains, so a batch trained at step t was sampled with the weights after "
                               "step t-1-k (verl one-step-off-policy, prime-rl max_off_policy_steps). Needs "
                               "placement.mode split; algorithm.tis_cap corrects the ratio (docs/architecture.md).")
    early_rejection: EarlyRejectionConfig = Field(
        EarlyRejectionConfig(), description="Oversample, score partial responses with a PRM at tau tokens, "
        "finish only the best rollout.n per prompt (off unless early_rejection.scorer is set).")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        engines.get(value)  # raises naming the known engines
        return value


class RewardLimitsConfig(Section):
    """Resource limits (setrlimit) of each reward process and every process it starts (rlvr.rewards.sandbox)."""

    memory_mb: int | None = Field(4096, ge=1, description="Private writable memory a reward process may map "
                                  "(heap, anonymous mappings, thread stacks: RLIMIT_DATA), in MiB; past it an "
                                  "allocation fails, the call scores failure_score ('memory limit: ...') and its "
                                  "process is replaced. math_answer needs ~60 MiB, importing torch ~250 MiB. "
                                  "null: no limit.")
    cpu_s: int | None = Field(None, ge=1, description="CPU seconds one call may use, all its threads together "
                              "(RLIMIT_CPU, re-armed before each call); past it the kernel stops the process "
                              "('cpu limit: ...'). timeout_s bounds wall time already; this bounds multi-threaded "
                              "rewards. null: no limit.")
    file_size_mb: int | None = Field(None, ge=1, description="Largest file a reward process may write, in MiB "
                                     "(RLIMIT_FSIZE; 'file size limit: ...'). It also holds for a stdout or stderr "
                                     "inherited from the run that is a file, so a run logging to a file larger "
                                     "than this would lose the reward's output. null: no limit.")
    processes: int | None = Field(None, ge=1, description="Processes and threads the run's user may have, counted "
                                  "over all of that user's processes, the run's included (RLIMIT_NPROC); a fork "
                                  "past it fails. Not enforced for root. null: no limit.")


class RewardConfig(Section):
    function: str = Field("math_answer", description="A registered reward name (rlvr list rewards) or an "
                          "importable 'module:function' with fn(completion, answer, **fields) -> float | dict.")
    timeout_s: float = Field(10.0, gt=0.0, description="Hard limit per call, in seconds; past it the call "
                             "gets failure_score and its process is replaced.")
    failure_score: float = Field(0.0, description="Score of a call that raises, times out, or returns NaN or "
                                 "a non-number; such calls are counted in reward/errors.")
    num_workers: int = Field(2, ge=1, description="Reward processes.")
    spare_workers: int = Field(1, ge=0, description="Reward processes kept started and idle beside num_workers; "
                               "one takes the place of a process killed for a timeout, a crash or a limit at "
                               "once, so that call costs its timeout and not a process start.")
    correct_threshold: float = Field(1.0, description="A row counts as correct (reward/accuracy) when its "
                                     "score is at least this.")
    limits: RewardLimitsConfig = Field(RewardLimitsConfig(), description="Resource limits of each reward process.")
    env: list[str] = Field(default_factory=list, description="Names of environment variables reward processes get "
                           "from the run (an API key the reward needs). Otherwise they start with PATH, HOME, "
                           "locale, Python and Hugging Face settings only, and TMPDIR set to their own directory.")
    network: bool = Field(True, description="false: each reward process runs in a user and network namespace of "
                          "its own, whose only interface is a loopback that is down: it can open no connection (not "
                          "even to the run's localhost), nor read the run's /proc/<pid>/environ. Needs user "
                          "namespaces (or root: then a network namespace only, which hides nothing in /proc); "
                          "where the system has neither, the run stops at start saying so.")
    writes: Literal["anywhere", "temp_dir"] = Field("anywhere", description="Where reward processes may create, "
                                                    "change or remove files: anywhere the run may, or only in "
                                                    "their own temporary directory (and /dev/null), enforced by "
                                                    "Landlock (Linux 5.13+; without it the run stops at start "
                                                    "saying so). Reading is never restricted.")


def _algorithm_options(value: Any) -> Any:
    """The ``algorithm`` section as its preset's options model, picked by ``name`` (default grpo): every other key
    is one of that algorithm's options (``rlvr list algorithms``), validated by its model."""
    from rlvr.algos import registry

    if isinstance(value, AlgorithmOptions):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping with a name and that algorithm's options, got {type(value).__name__}")
    data = {"name": "grpo", **value}
    name = data["name"]
    if name not in registry.names():
        raise ValueError(f"algorithm.name: {name!r} is unknown; known algorithms: {', '.join(registry.names())}")
    cls = registry.get(name).options
    try:
        return cls(**data)
    except ValidationError as error:
        allowed = ", ".join(cls.model_fields)
        problems = []
        for e in error.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"algorithm.{key}: unknown option of {name!r} (value {e['input']!r}); "
                                f"allowed keys here: {allowed}")
            else:
                problems.append(f"algorithm.{key}: {e['msg']} (got {e['input']!r})")
        raise ValueError("\n".join(problems)) from None


# The union of every preset's options model, told apart by ``name``; serialised as the model it holds.
AlgorithmSection = Annotated[SerializeAsAny[AlgorithmOptions], BeforeValidator(_algorithm_options)]


class LearnerConfig(Section):
    backend: str = Field(learners.DEFAULT, description="The learner (rlvr list learners): torch, plain torch (one "
                         "process); deepspeed, DeepSpeed ZeRO over learner.num_ranks processes (docs/deepspeed.md).")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed only. ZeRO stage: 2 partitions optimizer state and "
                                      "gradients over the ranks, 3 the parameters too (each rank holds 1/M of the "
                                      "model; OpenRLHF's and verl's choice for 7B+).")
    num_ranks: int = Field(1, ge=1, description="DeepSpeed only. Data-parallel ranks M (one Ray actor and one "
                           "device each); each optimizer step's mini-batch is split across them.")
    offload_optimizer: bool = Field(False, description="DeepSpeed only. Keep the fp32 master weights and AdamW "
                                    "state in CPU memory and step there (ZeRO-Offload): GPU memory for speed.")
    lr: float = Field(1e-6, gt=0.0, description="AdamW learning rate (DeepSeekMath / TRL: 1e-6).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (decoupled).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's (beta1, beta2).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Global gradient-norm clip.")
    mini_batch_size: int | None = Field(None, ge=1, description="Rows per optimizer step; default: the whole "
                                        "step batch (one update per rollout, as in DeepSeekMath).")
    micro_batch_size: int = Field(64, ge=1, description="Rows per forward/backward (gradient accumulation).")
    epochs: int = Field(1, ge=1, description="Passes over the step batch (PPO epochs).")
    recompute_old_logprobs: bool = Field(True, description="Recompute the behaviour log-probs with the learner "
                                         "(verl); false: use the rollout engine's. With one optimizer step per "
                                         "rollout (epochs 1, no smaller mini-batch) they come from the update's "
                                         "own forward, without a pass of their own (TRL's GRPO, one iteration).")

    @field_validator("backend")
    @classmethod
    def _known_learner(cls, value: str) -> str:
        learners.get(value)  # raises naming the known learners
        return value


class PlacementConfig(Section):
    mode: Literal["colocated", "split"] = Field("colocated", description="colocated: the rollout engines live in the "
                                                "learner's actors (hf: samples with the learner's own module; vLLM: "
                                                "one engine per learner rank on its GPU, asleep while it trains, "
                                                "weights by CUDA IPC); split: engines in actors (and on GPUs) of "
                                                "their own, weights by NCCL broadcast on GPUs or the Ray object "
                                                "store on CPUs (docs/multi-gpu.md).")
    num_threads: int | None = Field(None, ge=1, description="torch threads per actor (default: its CPUs).")
    ray_address: str | None = Field(None, description="Ray cluster address ('auto'); default "
                                    "$RLVR_RAY_ADDRESS, else a private local instance.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the private local Ray instance.")
    object_store_mb: int = Field(1024, ge=64, description="Object store size of the private local Ray instance.")
    sync_bucket_mb: float = Field(512, gt=0.0, description="GPU weight sync (NCCL broadcast, CUDA IPC): bucket size "
                                  "in MiB, vLLM's packed_buffer_size_bytes; about twice this is held beyond the model "
                                  "on each side while weights move.")


class GuardsConfig(Section):
    """When a run stops on its own (exit code 3), its last good checkpoint kept: docs/failures.md."""

    enabled: bool = Field(True, description="Stop a run that diverges or whose reward is broken (each check below); "
                          "false: only warn. A checkpoint of non-finite weights is never written either way.")
    nonfinite_steps: int = Field(3, ge=1, description="Stop after K RL steps in a row whose loss or gradient norm was "
                                 "non-finite (their optimizer steps skipped).")
    max_weight_growth: float | None = Field(1.5, gt=1.0, description="Stop when one RL step's update multiplies "
                                            "the weights' norm by more than this (runaway weights: a learning "
                                            "rate far too high); null: no check.")
    reward_error_frac: float | None = Field(0.5, gt=0.0, le=1.0, description="Stop when more than this fraction "
                                            "of a step's reward calls fail (raise, time out, crash) for "
                                            "reward_error_steps steps in a row; null: no check.")
    reward_error_steps: int = Field(3, ge=1, description="Steps in a row for reward_error_frac.")
    collapse_frac: float | None = Field(0.1, gt=0.0, lt=1.0, description="Stop when held-out accuracy, or the "
                                        "mean reward over collapse_steps steps, falls below this fraction of its "
                                        "value at the start of the run (when that was above 0); null: no check.")
    collapse_steps: int = Field(5, ge=1, description="Steps the mean reward of collapse_frac is taken over (the "
                                "start: the run's first collapse_steps steps).")


class TrainerConfig(Section):
    total_steps: int = Field(100, ge=1, description="RL steps (one rollout batch each).")
    save_every: int = Field(0, ge=0, description="Checkpoint every K steps (0: only at the end).")
    output_dir: str = Field("runs/tiny-grpo", description="The run directory.")
    seed: int = Field(0, description="Seeds data order, sampling and initialisation.")
    keep_checkpoints: int | None = Field(None, ge=1, description="Keep the last K checkpoints (default: all).")
    heldout_temperature: float = Field(1.0, ge=0.0, description="Held-out sampling temperature (one sample "
                                       "per problem) for heldout/accuracy; 0: greedy.")
    heldout_every: int = Field(0, ge=0, description="Also measure held-out accuracy every K steps, for a curve "
                               "(verl: test_freq); 0: only before the first step and after the last.")
    heldout_greedy: bool = Field(True, description="Also log greedy accuracy (heldout/accuracy_greedy).")
    heldout_max_new_tokens: int | None = Field(None, ge=1, description="Default: rollout.max_new_tokens.")
    progress: bool = Field(True, description="Show the live progress bar.")
    save_on_signal: bool = Field(True, description="On Ctrl-C (SIGINT) or SIGTERM, finish the current step, write "
                                 "its checkpoint, and say how to resume (exit code 130 / 143); a second signal "
                                 "stops at once.")
    guards: GuardsConfig = GuardsConfig()


class EvalConfig(EvalSampling):
    """Benchmarks evaluated during training (``rlvr eval``'s runner on the rollout workers): every
    ``every`` steps and after the last one, written to ``<output_dir>/eval/step_N/`` and logged as
    ``eval/<benchmark>/avg@n``, ``pass@n``, ``maj@n`` (and ``greedy``) in metrics.jsonl. Sampled and graded
    with the options ``rlvr eval`` has (rlvr.eval.settings.EvalSampling), four samples per problem by default."""

    benchmarks: list[str] = Field(default_factory=list, description="Benchmark names (math500, aime24, aime25, "
                                  "amc23, gsm8k) or .jsonl paths; empty: no evaluation.")
    every: int = Field(0, ge=0, description="Evaluate every K steps (0: only after the last step).")
    at_start: bool = Field(False, description="Also evaluate the initial policy (step 0).")
    data_dir: str | None = Field(None, description="Directory of benchmark .jsonl files (default $RLVR_DATA_DIR, "
                                 "else the Hugging Face hub).")
    limit: int | None = Field(None, ge=1, description="Only the first K problems of each benchmark.")
    n: int = Field(4, ge=1, description="Samples per problem (avg@n; pass@k and maj@k for k = 1, 2, 4, ... n).")
    max_new_tokens: int | None = Field(None, ge=1, description="Default: rollout.max_new_tokens.")
    template: str | None = Field(None, description="Prompt template (default: data.template).")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        if value:
            from rlvr.eval.benchmarks import check_names

            check_names(value)
        return value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        from rlvr.data.prompts import check_template

        return value if value is None else check_template(value)


class Recipe(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmSection = Field(default_factory=lambda: _algorithm_options({}))
    learner: LearnerConfig = LearnerConfig()
    placement: PlacementConfig = PlacementConfig()
    trainer: TrainerConfig = TrainerConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        self._check_learner()
        self._check_rollout()
        early = self.rollout.early_rejection
        if early.scorer is not None:
            from rlvr.rollout.prm import check_spec

            try:
                check_spec(early.scorer)
            except ValueError as error:
                raise ValueError(f"rollout.early_rejection.scorer: {error}") from None
            if early.tau >= self.rollout.max_new_tokens:
                raise ValueError(f"rollout.early_rejection.tau: {early.tau} must be smaller than "
                                 f"rollout.max_new_tokens ({self.rollout.max_new_tokens}); partial responses are "
                                 "scored after tau tokens")
        problems = self.algorithm.problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _check_learner(self) -> None:
        """The fields that only another learner reads keep their defaults; the learner's own checks (its package,
        an algorithm whose loss reads what it partitions) pass."""
        spec = learners.get(self.learner.backend)
        for key, owner in learners.owned_options().items():
            value, default = getattr(self.learner, key), LearnerConfig.model_fields[key].default
            if owner != spec.name and value != default:
                raise ValueError(f"learner.{key}: {value!r} applies to learner.backend {owner!r} only; the "
                                 f"{spec.name} learner does not read it (set learner.backend={owner}, or leave "
                                 f"learner.{key} at {default!r})")
        problems = spec.check(self)
        if problems:
            raise ValueError("\n".join(problems))

    def _check_rollout(self) -> None:
        """Engine counts and sizes that fit the placement. Whether the engine's package and GPUs are there is
        checked when a run starts (rlvr.workers.placement.check_environment, then the GPU count against the Ray
        cluster), so that recipes for GPU clusters still load and validate on any machine."""
        rollout, split = self.rollout, self.placement.mode == "split"
        spec = engines.get(rollout.engine)
        if rollout.max_staleness and not split:
            raise ValueError(f"rollout.max_staleness: {rollout.max_staleness} needs placement.mode split: colocated "
                             "engines sample with the learner's own weights, in its own actor, so sampling ahead "
                             "cannot overlap the update; set placement.mode=split or rollout.max_staleness=0")
        if rollout.max_staleness and rollout.early_rejection.scorer is not None:
            raise ValueError(f"rollout.max_staleness: {rollout.max_staleness} does not combine with "
                             "rollout.early_rejection (its controller samples in rounds within the step); set one of "
                             "them off")
        if rollout.num_workers > 1 and not split:
            raise ValueError(f"rollout.num_workers: {rollout.num_workers} applies to placement.mode split; colocated "
                             "engines live in the learner's actors (vLLM: one per learner rank, so learner.num_ranks "
                             "sets their number); set placement.mode=split or leave rollout.num_workers at 1")
        if rollout.tensor_parallel_size != 1:
            if not spec.tensor_parallel:
                parallel = [name for name, other in engines.ENGINES.items() if other.tensor_parallel]
                raise ValueError(f"rollout.tensor_parallel_size: {rollout.tensor_parallel_size} applies to "
                                 f"rollout.engine {' or '.join(map(repr, parallel))} only; the {spec.label} engine "
                                 "runs on one device")
            if not split:
                raise ValueError(f"rollout.tensor_parallel_size: {rollout.tensor_parallel_size} needs placement.mode "
                                 f"split; colocated {spec.label} engines are one per learner rank, on that rank's GPU "
                                 "(tensor_parallel_size 1), see docs/multi-gpu.md")
        if not spec.truncated_logprobs:
            return
        truncated = rollout.top_p < 1.0 or rollout.top_k > 0
        engine_logprobs = not self.learner.recompute_old_logprobs or self.algorithm.tis_cap is not None
        if truncated and engine_logprobs:
            why = ("algorithm.tis_cap" if self.algorithm.tis_cap is not None
                   else "learner.recompute_old_logprobs false")
            raise ValueError(f"rollout.top_p {rollout.top_p} / rollout.top_k {rollout.top_k} with {why}: the loss "
                             f"would use {spec.label}'s log-probs, which are those of the top-p/top-k truncated "
                             "distribution, not the tempered full one (docs/engines.md); sample with top_p 1 and "
                             "top_k 0, or let the learner recompute the log-probs without tis_cap")


def _format_error(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        path = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            section = _section_at(tuple(e["loc"][:-1]))
            allowed = ", ".join(section.model_fields) if section else ""
            lines.append(f"{path}: unknown key (value {value!r}); allowed keys here: {allowed}")
            continue
        message = e["msg"].removeprefix("Value error, ")
        if message.startswith(f"{path}."):  # already names its own field path (the algorithm section)
            lines.append(message)
            continue
        where = path or "recipe"
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{where}: {message}{shown}")
    return "\n".join(lines)


def _section_at(loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] = Recipe
    for key in loc:
        field = cls.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        cls = annotation
    return cls


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"learner.lr=2e-6"`` -> (["learner", "lr"], 2e-06); values are YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r} is not of the form section.key=value (e.g. learner.lr=2e-6)")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def build_recipe(data: dict[str, Any], overrides: list[str] = ()) -> Recipe:
    data = dict(data or {})
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part!r} is a value, not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[path[-1]] = value
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError("invalid recipe:\n" + _format_error(error)) from None


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a mapping of sections, got {type(data).__name__}")
    return build_recipe(data, overrides)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# What a resumed run may change without --allow-recipe-change: how long it goes on, what it measures and records,
# where it runs. Anything else changes what is trained (docs/failures.md).
RESUME_SAFE = ("trainer.total_steps", "trainer.save_every", "trainer.keep_checkpoints", "trainer.output_dir",
               "trainer.progress", "trainer.save_on_signal", "trainer.guards.*", "trainer.heldout_*", "data.heldout*",
               "eval.*", "reward.num_workers", "placement.ray_address", "placement.num_cpus",
               "placement.object_store_mb", "placement.num_threads")


def recipe_changes(old: Recipe, new: Recipe) -> dict[str, tuple[Any, Any]]:
    """Every field whose value differs between two recipes, as ``{"rollout.n": (old, new)}``."""
    before, after = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    missing = object()
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key, missing) != after.get(key, missing)}


def resume_safe(key: str) -> bool:
    """Whether a resumed run may change the field ``key`` (:data:`RESUME_SAFE`) without ``--allow-recipe-change``."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_SAFE)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
