"""The training loop (DESIGN.md section 2): generate, score, advantages, update, sync; log and save.

:func:`train` is the whole loop; :class:`Trainer` holds the parts it calls (Ray workers, the reward pool,
the prompt stream, the algorithm, the run directory). Feature flags live in the components they change,
not here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from rlvr import algos, checkpoint
from rlvr.algos.algorithm import RolloutSource
from rlvr.batch import RolloutBatch, concat_batches
from rlvr.config import Recipe, RecipeError, dump_recipe, load_recipe, recipe_changes, resume_safe
from rlvr.data.prompts import Prompt, PromptStream, load_prompts
from rlvr.eval.benchmarks import load_benchmarks
from rlvr.eval.runner import evaluate
from rlvr.eval.settings import EvalSampling, EvalSettings
from rlvr.guards import Diverged, Guards, Interrupted, Signals, unsafe_weights
from rlvr.metrics import MetricsLog, PhaseTimer, ProgressBar
from rlvr.models.loading import check_model_path, load_tokenizer, resolve_model_path
from rlvr.rewards.grading import grade
from rlvr.rewards.pool import RewardPool
from rlvr.rewards.registry import resolve
from rlvr.rollout.controllers import plain
from rlvr.rollout.early_rejection import EarlyRejection, EarlyRejectionRollout, step_metrics
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.prm import load_scorer
from rlvr.rollout.sampler import Sampler
from rlvr.runlock import RunLock
from rlvr.workers.placement import StagedBatch, Workers, check_environment, start_ray

log = logging.getLogger("rlvr")

NO_SIGNAL_WARN_AFTER = 3  # steps in a row without signal before the (one) warning


def train(recipe: Recipe, resume: bool = False, allow_recipe_change: bool = False) -> dict[str, Any]:
    """Run ``recipe`` to ``trainer.total_steps``; with ``resume``, continue from the latest checkpoint (with the
    recipe it was trained with, unless ``allow_recipe_change``). Raises :class:`~rlvr.guards.Diverged` when a guard
    stops the run and :class:`~rlvr.guards.Interrupted` after a SIGINT / SIGTERM, the checkpoint written."""
    cfg = recipe.trainer
    with Trainer(recipe, resume, allow_recipe_change=allow_recipe_change) as run, Signals() as signals:
        if run.step == 0:
            run.log({"step": 0, **run.heldout(), **run.evaluate(0)})
        for step in range(run.step + 1, cfg.total_steps + 1):
            if signals.received:  # during the step-0 measurements or setup: nothing new to save
                raise run.interrupted(signals.received, saved=None)
            row = run.train_step(step)
            if step == cfg.total_steps or (cfg.heldout_every and step % cfg.heldout_every == 0):
                row.update(run.heldout())
            row.update(run.evaluate(step))
            stop = run.guards.check(row)
            if stop:
                run.log(row)
                raise Diverged(f"{stop}. {run.last_checkpoint_text()}")
            due = step == cfg.total_steps or (cfg.save_every and step % cfg.save_every == 0)
            saved = run.save(step, row) if due or (signals.received and cfg.save_on_signal) else None
            run.log(row)  # after its checkpoint: a failed save leaves no row of a step the resume will redo
            if signals.received and step < cfg.total_steps:
                raise run.interrupted(signals.received, saved)
        return run.summary()


class Trainer:
    """The parts of a run. ``training=False`` gives the sampling parts only (workers with the initial
    policy, prompts, reward pool) for offline stages such as ``rlvr prepare astar``: no run directory."""

    def __init__(self, recipe: Recipe, resume: bool = False, training: bool = True, allow_recipe_change: bool = False):
        self.recipe, self.resume, self.training = recipe, resume, training
        self.allow_recipe_change = allow_recipe_change
        self.run_dir = Path(recipe.trainer.output_dir)
        self.step = self.weights_step = 0  # weights_step: the step whose update the learner's weights are after
        # Sampling ahead (rollout.max_staleness): the steps whose batches are sampled or being sampled, in order; a
        # background thread gathers and scores them while the learner trains.
        self.ahead: deque[tuple[int, Future[_Source]]] = deque()
        self.executor: ThreadPoolExecutor | None = None
        self.no_signal_streak, self.warned_no_signal = 0, False  # steps skipped in a row for want of signal

    # -- setup and teardown ------------------------------------------------------------------------
    def __enter__(self) -> Trainer:
        check_environment(self.recipe)  # a vLLM run on a machine without vLLM or GPUs stops here, before any work
        self.lock = RunLock(self.run_dir) if self.training else None
        if self.lock is not None:
            self.lock.acquire()  # a second run into a live run's directory stops here
        try:
            return self._enter()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _enter(self) -> Trainer:
        recipe, cfg = self.recipe, self.recipe.trainer
        existing = checkpoint.latest(self.run_dir) if self.training else None
        if self.training:
            self.metrics = MetricsLog(self.run_dir)
            logged = bool(self.metrics.rows())
            if not self.resume and (existing or logged):
                raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it, or set "
                                      "trainer.output_dir to a new directory")
            if self.resume and not (existing or logged or checkpoint.recipe_files(self.run_dir)):
                raise NothingToResume(f"--resume: {self.run_dir} holds no run (no checkpoint, metrics.jsonl or "
                                      "config.yaml); leave out --resume to start a new run there")
            changes = self._recipe_changes(existing) if self.resume and existing else {}
        # Fail on bad data, side tables or reward specs before anything expensive starts.
        data = recipe.data
        self.prompts = load_prompts(data.train, data.problem_key, data.answer_key, data.train_size, seed=cfg.seed,
                                    answer_format=data.answer_format, on_bad_rows=data.on_bad_rows)
        self.heldout_prompts = (
            load_prompts(data.heldout, data.problem_key, data.answer_key, data.heldout_size,
                         answer_format=data.answer_format, on_bad_rows=data.on_bad_rows)
            if data.heldout and self.training else []
        )
        self.eval_benchmarks = (load_benchmarks(recipe.eval.benchmarks, recipe.eval.data_dir, recipe.eval.limit)
                                if recipe.eval.benchmarks and self.training else {})
        self.eval_pool: RewardPool | None = None
        self.algorithm = algos.from_recipe(recipe)
        check_model_path(recipe.model.path)  # a missing local path stops here, naming it (cheap: builds nothing)
        if self.training:
            self.prompts = self.algorithm.prepare_prompts(self.prompts, recipe)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resumed_at = checkpoint.read_state(existing)["step"] if self.resume and existing else None
            checkpoint.record_recipe(self.run_dir, dump_recipe(recipe), resumed_at, changed=changes != {})
        self.stream = PromptStream(self.prompts, recipe.data.batch_size, cfg.seed, recipe.data.shuffle)
        early = recipe.rollout.early_rejection
        scorer = load_scorer(early.scorer, **early.scorer_options) if early.scorer and self.training else None
        self.pool = RewardPool.from_config(recipe.reward)
        self.pool.start()  # the workers' interpreters start while Ray and the actors do
        self.model_dir = resolve_model_path(recipe.model.path)
        self.tokenizer = load_tokenizer(self.model_dir)
        start_ray(recipe)
        self.workers = Workers.create(recipe, self.model_dir)
        controller = plain if scorer is None else EarlyRejection(scorer, self.tokenizer, early.oversample, early.tau)
        self.sampler = Sampler(self.workers.generate, self.tokenizer, recipe.data.template, self.pool,
                               recipe.reward.correct_threshold, controller)
        if self.resume and existing:
            self._restore(existing)
        elif self.resume:  # killed before its first checkpoint: start over rather than append to it
            self.metrics.keep_until(-1)
        self.workers.sync_weights()
        if self.training:
            self.guards = Guards(cfg.guards, self.metrics.rows())  # a resumed run goes on with the same streaks
        self.bar = ProgressBar(cfg.total_steps, self.step, cfg.progress and self.training)
        return self

    def __exit__(self, *exc: object) -> None:
        if hasattr(self, "bar"):
            self.bar.close()
        if self.executor is not None:  # a batch still being sampled is dropped (a resume samples it again)
            self.executor.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "workers"):
            self.workers.shutdown()
        if hasattr(self, "pool"):
            self.pool.close()
        if getattr(self, "eval_pool", None) is not None:
            self.eval_pool.close()
        if getattr(self, "lock", None) is not None:
            self.lock.release()

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        timer, algo, workers = PhaseTimer(), self.algorithm, self.workers
        source = self.rollout(step, timer)
        batch, filter_metrics = algo.post_rollout(source.batch, source)
        # Rollout metrics cover everything sampled this step, including groups dynamic sampling dropped.
        row = {"step": step, **rollout_metrics(concat_batches(source.batches), source.errors),
               "rollout/num_rows": len(batch), **source.metrics, **filter_metrics}
        if self.recipe.rollout.max_staleness:
            row.update({"rollout/staleness": batch.staleness.float().mean().item(),
                        "rollout/staleness_max": int(batch.staleness.max())})
        if len(batch) == 0:  # dynamic sampling found no informative group within its budget
            log.warning("step %d: no group with varying rewards after %d generation rounds; no update",
                        step, algo.options.max_gen_batches)
            return self.count_signal({**row, **timer.metrics()}, trained=False)
        staged = workers.stage(batch)  # once: every learner call of the step gets it by reference
        if algo.options.kl_in_reward:  # the KL in the reward reads both log-probs before the advantages
            self.learner_logprobs(staged, timer)
        # Always: the estimator's state (DCPO's statistics) moves with it.
        batch.advantages, advantage_estimates = algo.advantages(batch)
        trained = algo.update_would_move(batch)
        learner_metrics = self.learn(staged, timer) if trained else {}  # else no gradient: no learner work at all
        row.update({**advantage_metrics(batch, algo.effective_advantages(batch)), **advantage_estimates,
                    **learner_metrics, **timer.metrics()})
        if source.early_rejection:
            row.update(step_metrics(source.early_rejection))
        row["tokens/generated"] = source.tokens
        row["tokens/trained"] = batch.num_response_tokens * self.recipe.learner.epochs if trained else 0
        row["throughput/tokens_per_s"] = source.tokens / row["time/step"]
        row["sync/bytes"] = workers.last_sync_bytes if trained else 0
        row["memory/peak_bytes"] = workers.peak_memory()
        self.weights_step = step
        return self.count_signal(row, trained)

    def rollout(self, step: int, timer: PhaseTimer) -> _Source:
        """Step ``step``'s sampling, its batch scored: sampled now with the weights it trains (on-policy), or, with
        ``rollout.max_staleness`` k, the one sampled ahead, whose requests went to the engines k steps earlier
        (before the weight syncs since, which queue behind them: the same weights on every run and resume)."""
        ahead = self.recipe.rollout.max_staleness
        if not ahead and not self.ahead:
            source = _Source(self, timer, step)
            source.batch = source.sample(self.stream.next_batch())
            return source
        last = min(step + ahead, self.recipe.trainer.total_steps)
        upcoming = self.ahead[-1][0] + 1 if self.ahead else step
        for later in range(upcoming, last + 1):
            pending = _Source(self, PhaseTimer(), later)
            finish = pending.submit(self.stream.next_batch())
            if self.executor is None:
                self.executor = ThreadPoolExecutor(1, thread_name_prefix="rlvr-rollout")
            self.ahead.append((later, self.executor.submit(_finished, pending, finish)))
        sampled_for, future = self.ahead.popleft()
        assert sampled_for == step, f"the batch sampled ahead is step {sampled_for}'s, not step {step}'s"
        waited = time.perf_counter()
        source = future.result()
        taken = time.perf_counter()
        source.trainer, source.timer = self, timer
        timer.add({phase: source.own_timer.seconds.get(phase, 0.0) for phase in ("generate", "reward")})
        timer.add({"wait_rollout": taken - waited, "wait_learner": max(0.0, waited - source.ready_at)})
        return source

    def learner_logprobs(self, staged: StagedBatch, timer: PhaseTimer) -> None:
        """The behaviour log-probs (recomputed, or the engine's) and the reference's, into the batch, when the
        driver needs them before the update (the KL in the reward): one learner call for both."""
        batch, recompute = staged.batch, self.recipe.learner.recompute_old_logprobs
        if not recompute:
            batch.old_logprobs = batch.rollout_logprobs
        if recompute or self.algorithm.needs_reference:
            out = self.workers.logprobs(staged, old=recompute, reference=self.algorithm.needs_reference)
            batch.old_logprobs = out.old if recompute else batch.old_logprobs
            batch.ref_logprobs = out.ref
            timer.add(out.seconds)

    def learn(self, staged: StagedBatch, timer: PhaseTimer) -> dict[str, float]:
        """The learner's part of a step with signal, in one learner call: the log-probs the driver did not need
        first (:func:`rlvr.learner.base.old_logprob_source`), truncated importance weights (when the algorithm asks
        for them), the update; then the weight sync. The passes' seconds are ``time/old_logprob`` and
        ``time/ref``, the rest of the call ``time/update``."""
        with timer("update"):
            metrics, seconds = self.workers.update(staged)
        timer.add(seconds, out_of="update")
        with timer("sync"):
            self.workers.sync_weights()
        return metrics

    def count_signal(self, row: dict[str, Any], trained: bool) -> dict[str, Any]:
        """``row`` with ``train/skipped_no_signal``; after ``NO_SIGNAL_WARN_AFTER`` skipped steps in a row, once
        per run, a warning with what to try."""
        row["train/skipped_no_signal"] = int(not trained)
        self.no_signal_streak = 0 if trained else self.no_signal_streak + 1
        if self.no_signal_streak == NO_SIGNAL_WARN_AFTER and not self.warned_no_signal:
            self.warned_no_signal = True
            log.warning(no_signal_advice(row, self.no_signal_streak, self.recipe))
        return row

    def heldout(self) -> dict[str, float]:
        """Accuracy on the held-out prompts, graded by :func:`rlvr.rewards.grading.grade`: one sample per
        problem at ``trainer.heldout_temperature`` (``heldout/accuracy``), and greedy when asked."""
        if not self.heldout_prompts:
            return {}
        cfg = self.recipe.trainer
        out = {"heldout/num_problems": len(self.heldout_prompts)}
        temperatures = {"heldout/accuracy": cfg.heldout_temperature}
        if cfg.heldout_greedy and cfg.heldout_temperature != 0:
            temperatures["heldout/accuracy_greedy"] = 0.0
        for key, temperature in temperatures.items():
            sampling = SamplingParams(cfg.heldout_max_new_tokens or self.recipe.rollout.max_new_tokens, temperature,
                                      self.recipe.rollout.top_p, self.recipe.rollout.top_k, seed=step_seed(cfg.seed, -1),
                                      logprobs=False)
            batch, _ = self.sampler.generate(self.heldout_prompts, [1] * len(self.heldout_prompts), sampling,
                                             controller=plain)
            correct = [grade(text, answer) for text, answer in zip(batch.response_text, batch.answer)]
            out[key] = sum(correct) / len(correct)
        self.bar_write(f"held-out accuracy: {out['heldout/accuracy']:.1%} on {len(self.heldout_prompts)} problems "
                       f"(one sample at temperature {cfg.heldout_temperature:g})"
                       + (f", greedy {out['heldout/accuracy_greedy']:.1%}" if "heldout/accuracy_greedy" in out else ""))
        return out

    def evaluate(self, step: int) -> dict[str, float]:
        """The recipe's benchmarks (``eval:``) when due at ``step``: every ``eval.every`` steps, after the last
        step, and at step 0 with ``eval.at_start``. Writes ``eval/step_N/`` and returns ``eval/...`` metrics."""
        cfg, total = self.recipe.eval, self.recipe.trainer.total_steps
        due = step == total or (step == 0 and cfg.at_start) or (step > 0 and cfg.every and step % cfg.every == 0)
        if not self.eval_benchmarks or not due:
            return {}
        settings = self.eval_settings()
        if self.eval_pool is None:
            self.eval_pool = RewardPool(settings.reward, settings.grader_workers, settings.grader_timeout_s, 0.0)
        results = evaluate(self.workers.generate, self.tokenizer, self.eval_benchmarks, settings,
                           self.run_dir / "eval" / f"step_{step}", progress=False, pool=self.eval_pool,
                           metadata={"model": self.recipe.model.path, "step": step})
        metrics = eval_metrics(results)
        self.bar_write(f"eval at step {step}: " + ", ".join(
            f"{key.removeprefix('eval/')} {value:.1%}" for key, value in metrics.items() if "/avg@" in key))
        return metrics

    def eval_settings(self) -> EvalSettings:
        """The recipe's ``eval`` section as the runner's settings: its sampling and grading options as they are,
        the rest from the run (its length limit and template unless the section sets them, seed, batch size,
        correct threshold)."""
        cfg, recipe = self.recipe.eval, self.recipe
        shared = cfg.model_dump(include=set(EvalSampling.model_fields))
        return EvalSettings(**{**shared, "reward": resolve(cfg.reward)},
                            max_new_tokens=cfg.max_new_tokens or recipe.rollout.max_new_tokens,
                            template=cfg.template or recipe.data.template, seed=recipe.trainer.seed,
                            chunk_size=recipe.rollout.batch_size, correct_threshold=recipe.reward.correct_threshold)

    # -- records -----------------------------------------------------------------------------------
    def log(self, row: dict[str, Any]) -> None:
        self.metrics.append(row)
        if row["step"] > 0:
            self.bar.update(row)

    def bar_write(self, message: str) -> None:
        if hasattr(self, "bar"):
            self.bar.write(message)
        else:
            log.info(message)

    def save(self, step: int, row: dict[str, Any]) -> Path | None:
        """Checkpoint ``step`` (whose metrics are ``row``), unless its weights are not fit to keep
        (:func:`rlvr.guards.unsafe_weights`). A failed write (disk full, read-only) removes the partial checkpoint
        and raises :class:`~rlvr.checkpoint.CheckpointError`, which names the path and the free space."""
        unsafe = unsafe_weights(row, self.recipe.trainer.guards)
        if unsafe:
            log.warning("step %d: no checkpoint written, since %s. %s", step, unsafe, self.last_checkpoint_text())
            return None
        staging = checkpoint.staging_path(self.run_dir, step)
        try:
            checkpoint.staging_dir(self.run_dir, step)
            learner_side = self.workers.save(str(staging))
            self.tokenizer.save_pretrained(staging)
            # The algorithm's state, both halves in one file: its driver-side parts' and its learner-side parts'.
            torch.save({"driver": self.algorithm.state_dict(), "learner": learner_side},
                       staging / "algorithm_state.pt")
            if self.ahead:  # sampled with earlier weights than these: kept, so that a resume trains the same rows
                torch.save([(later, future.result()) for later, future in self.ahead], staging / AHEAD_FILE)
            state = {"step": step, "data": self.stream.state_dict(), "seed": self.recipe.trainer.seed}
            return checkpoint.commit(self.run_dir, step, staging, state, self.recipe.trainer.keep_checkpoints)
        except Exception as error:
            raise checkpoint.write_error(self.run_dir, step, staging, error) from error

    def last_checkpoint_text(self) -> str:
        last = checkpoint.latest(self.run_dir)
        if last is None:
            return "No checkpoint was written before it"
        return f"The last good checkpoint is {last} (step {checkpoint.read_state(last)['step']})"

    def interrupted(self, signum: int, saved: Path | None) -> Interrupted:
        """The stop after a SIGINT / SIGTERM, saying what was kept and how to go on."""
        name = Signals.NAMES.get(signum, f"signal {signum}")
        rows = self.metrics.rows()
        done = rows[-1]["step"] if rows else 0
        kept = f"checkpoint written: {saved}" if saved else self.last_checkpoint_text()
        return Interrupted(f"stopped by {name} after step {done} of {self.recipe.trainer.total_steps}; {kept}. "
                           "Continue with the same command and --resume", signum)

    def _recipe_changes(self, existing: Path) -> dict[str, tuple[Any, Any]] | None:
        """How this run's recipe differs from the one that trained up to ``existing`` (None: that one is unknown);
        raises :class:`RecipeChanged` when a change alters what is trained and ``allow_recipe_change`` is off."""
        step = checkpoint.read_state(existing)["step"]
        path = checkpoint.recipe_in_effect(self.run_dir, step)
        if path is None:
            log.warning("%s has no config.yaml: the recipe of steps 1-%d is unknown, so the resumed recipe cannot be "
                        "compared with it", self.run_dir, step)
            return None
        try:
            saved = load_recipe(path)
        except RecipeError as error:
            log.warning("%s no longer reads as a recipe (%s); the resumed recipe is not compared with it", path,
                        str(error).splitlines()[-1])
            return None
        changes = recipe_changes(saved, self.recipe)
        refused = {key: values for key, values in changes.items() if not resume_safe(key)}
        listed = "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in (refused or changes).items())
        if refused and not self.allow_recipe_change:
            raise RecipeChanged(
                f"--resume: the recipe differs from {path} (the one that trained steps 1-{step}) in fields that "
                f"change what is trained:\n{listed}\nResume with that recipe, or pass --allow-recipe-change to go on "
                f"with the new values (both recipes are kept: the new one as config.step_{step}.yaml)")
        if changes:
            log.warning("resuming at step %d with a changed recipe (kept as config.step_%d.yaml):\n%s", step, step,
                        listed)
        return changes

    def _restore(self, path: Path) -> None:
        state = checkpoint.read_state(path)
        algorithm_state = torch.load(path / "algorithm_state.pt", weights_only=False)
        self.workers.load(str(path), algorithm_state["learner"])
        self.algorithm.load_state_dict(algorithm_state["driver"])
        self.stream.load_state_dict(state["data"])
        self.step = self.weights_step = int(state["step"])
        if (path / AHEAD_FILE).exists():
            for later, source in torch.load(path / AHEAD_FILE, weights_only=False):
                source.ready_at = time.perf_counter()  # the saving process's clock means nothing here
                done: Future[_Source] = Future()
                done.set_result(source)
                self.ahead.append((later, done))
        self.metrics.keep_until(self.step)
        log.info("resumed from %s (step %d)", path, self.step)

    def summary(self) -> dict[str, Any]:
        rows = self.metrics.rows()
        heldout = [row["heldout/accuracy"] for row in rows if "heldout/accuracy" in row]
        out = {"run_dir": str(self.run_dir), "steps": rows[-1]["step"] if rows else 0}
        if len(heldout) >= 2:
            out["heldout_before"], out["heldout_after"] = heldout[0], heldout[-1]
            self.bar_write(f"held-out accuracy: {heldout[0]:.1%} before -> {heldout[-1]:.1%} after "
                           f"({out['steps']} steps); run directory {self.run_dir}")
        return out


AHEAD_FILE = "rollouts_ahead.pt"  # a checkpoint's batches sampled ahead (rollout.max_staleness)


def _finished(source: _Source, finish) -> _Source:
    """The background half of sampling ahead: gather ``source``'s completions and score them (``finish``)."""
    source.batch = finish()
    source.ready_at = time.perf_counter()
    return source


class RecipeChanged(ValueError):
    """``--resume`` with a recipe that changes what is trained."""


class NothingToResume(ValueError):
    """``--resume`` into a directory that holds no run."""


class _Source(RolloutSource):
    """Sampling for one step: the first batch and any an algorithm asks for (DAPO dynamic sampling)."""

    def __init__(self, trainer: Trainer, timer: PhaseTimer, step: int):
        self.trainer, self.timer, self.step = trainer, timer, step
        self.own_timer = timer  # the timer of the sampling itself (a batch sampled ahead keeps it apart)
        self.rounds = self.errors = self.tokens = 0
        self.batch: RolloutBatch | None = None  # the step's first batch, scored
        self.ready_at = 0.0  # when it was (perf_counter)
        self.batches: list[RolloutBatch] = []
        self.metrics: dict[str, float] = {}  # reward shaping's, of the latest sampled batch
        self.prompts: dict[str, Prompt] = {}
        self.early_rejection: list[EarlyRejectionRollout] = []  # this step's controlled sampling calls

    def __getstate__(self) -> dict[str, Any]:  # a batch sampled ahead, kept in a checkpoint
        return {key: value for key, value in self.__dict__.items() if key not in ("trainer", "timer", "own_timer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.timer = self.own_timer = PhaseTimer()

    def next_prompts(self) -> list[Prompt]:
        return self.trainer.stream.next_batch()

    def prompt(self, prompt_id: str) -> Prompt:
        return self.prompts[prompt_id]

    def sample(self, prompts: list[Prompt], plan: list[int] | None = None, record: bool = True) -> RolloutBatch:
        return self.submit(prompts, plan, record)()

    def submit(self, prompts: list[Prompt], plan: list[int] | None = None, record: bool = True
               ) -> Callable[[], RolloutBatch]:
        """:meth:`sample` in two halves: the requests go to the engines now, with the weights they hold now; the
        returned function gathers, scores and shapes the batch (a background thread's work when sampling ahead)."""
        t, r = self.trainer, self.trainer.recipe.rollout
        self.prompts.update((p.id, p) for p in prompts if record)
        # Each round of a step gets its own seed, a pure function of (trainer.seed, step, round).
        seed = step_seed(t.recipe.trainer.seed, self.step) + 104729 * self.rounds
        self.rounds += 1
        engine_logprobs = not t.recipe.learner.recompute_old_logprobs or t.algorithm.needs_rollout_logprobs
        sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, seed=seed % (2**31),
                                  logprobs=engine_logprobs)
        plan = plan or t.algorithm.rollout_plan(len(prompts), r.n)
        staleness = self.step - 1 - t.weights_step  # steps between the weights sampling now and those trained
        with self.own_timer("generate"):
            if t.sampler.controller is plain:
                gather = t.sampler.submit(prompts, plan, sampling, t.workers.submit)
            else:  # a controller samples in rounds (early rejection): all of it now
                sampled = t.sampler.generate(prompts, plan, sampling)
                gather = lambda: sampled  # noqa: E731

        def finish() -> RolloutBatch:
            with self.own_timer("generate"):
                batch, out = gather()
            self.tokens += out.tokens_generated  # with early rejection, the rejected candidates' partials too
            if isinstance(out.details, EarlyRejectionRollout):
                self.early_rejection.append(out.details)
            with self.own_timer("reward"):
                self.errors += t.sampler.score(batch)
            self.metrics.update(t.algorithm.shape_rewards(batch))
            batch.staleness = torch.full((len(batch),), staleness, dtype=torch.long)
            if record:
                self.batches.append(batch)
            return batch

        return finish


def eval_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``eval/<benchmark>/avg@n``, ``pass@n``, ``maj@n`` and ``greedy`` from :func:`rlvr.eval.runner.evaluate`."""
    out = {}
    for name, b in results["benchmarks"].items():
        n = b["n"]
        for key in (f"avg@{n}", f"pass@{n}", f"maj@{n}", "greedy"):
            if key in b:
                out[f"eval/{name}/{key}"] = b[key]
    return out


def no_signal_advice(row: dict[str, Any], steps: int, recipe: Recipe) -> str:
    """The warning after ``steps`` steps in a row without signal, with the last step's reward and truncation."""
    seen = []
    if "reward/mean" in row:
        seen.append(f"mean reward {row['reward/mean']:.3g}")
    if "response/truncated_frac" in row:
        seen.append(f"{row['response/truncated_frac']:.0%} of responses hit rollout.max_new_tokens "
                    f"({recipe.rollout.max_new_tokens})")
    seen_text = f" ({', '.join(seen)})" if seen else ""
    return (f"step {row['step']}: {steps} steps in a row without training signal (train/skipped_no_signal: every "
            "advantage zero, e.g. equal rewards within every group, and no other term in the loss), so no update ran "
            f"and the weights are unchanged{seen_text}. Try: the prompt template "
            f"(data.template is {recipe.data.template!r}; e.g. qwen-boxed when the reward reads a \\boxed{{}} "
            f"answer), the reward function ({recipe.reward.function!r}: does it score this model's responses?), "
            "a larger rollout.max_new_tokens if responses are cut off, and `rlvr eval` on the model first to see "
            "whether it solves any of these problems")


def advantage_metrics(batch: RolloutBatch, adv: torch.Tensor) -> dict[str, float]:
    """Share of rows (and of response tokens) with a non-zero advantage ``adv``: the rows that carry signal."""
    row_nonzero = (adv != 0) if adv.dim() == 1 else ((adv != 0) & batch.response_mask.bool()).any(1)
    per_token = row_nonzero[:, None] & batch.response_mask.bool()
    return {
        "adv/nonzero_frac": row_nonzero.float().mean().item(),
        "adv/nonzero_token_frac": (per_token.sum() / batch.response_mask.sum().clamp(min=1)).item(),
        "adv/mean": (adv.float().mean()).item(),
        "adv/abs_mean": (adv.float().abs().mean()).item(),
    }


def rollout_metrics(batch: RolloutBatch, errors: int) -> dict[str, float]:
    lengths = batch.response_mask.sum(1)
    return {
        "reward/mean": batch.rewards.mean().item(),
        "reward/std": batch.rewards.std().item() if len(batch) > 1 else 0.0,
        "reward/accuracy": batch.correct.float().mean().item(),
        "reward/errors": errors,
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/truncated_frac": (~batch.finished).float().mean().item(),
        "rollout/num_sampled": len(batch),
    }


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step: a pure function of (trainer.seed, step), so resumes replay exactly."""
    return (seed * 1_000_003 + step * 7919 + 12345) % (2**31)
