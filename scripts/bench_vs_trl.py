"""rlvr's GRPO beside TRL's ``GRPOTrainer`` on the same work: throughput, start-up, peak memory, held-out accuracy.

    pip install -e ".[bench]"                                 # TRL 1.16 (the `bench` extra)
    python scripts/bench_vs_trl.py                            # 4 pairs of 30 steps on the tiny model
    python scripts/bench_vs_trl.py --pairs 1 --steps 6        # a quick look
    python scripts/bench_vs_trl.py --width 512                # a random-weights 13.7M-parameter Llama instead
    python scripts/bench_vs_trl.py --rlvr-override placement.mode=split       # rlvr's overrides (repeatable)

Each run is a child process of its own (``--worker rlvr|trl``, which writes a JSON result), so that the two
frameworks' memory and threads never mix; the pairs alternate the order (rlvr first, then TRL first, ...). Prints a
table and, last, one JSON line (also written to ``--json``). A number per framework is the median over the pairs.

Measured alike for both:

* throughput: completion tokens (EOS included) per second of each RL step's wall time, rlvr's measured around
  ``Trainer.train_step``, TRL's from a callback's ``on_step_begin`` to its ``on_step_end``; the median over steps
  4..N (the first three warm up), and the median step time as s/step. The rlvr/TRL ratio is taken per pair.
* start-up: from the worker process's launch (Python, imports, model, and for rlvr Ray and its reward processes)
  to the first step's start.
* peak memory: this process sums PSS and RSS over the worker and all its descendants (Ray's gcs, raylet and actors,
  rlvr's reward processes) every 0.2 s (``--memory-every``), and keeps the peaks and the number of processes at the
  PSS peak. A sample reads each process's smaps_rollup, ~4 ms of CPU apiece: for rlvr's 9 processes ~17 % of one core
  at 0.2 s, for TRL's one ~2 %; a longer period shows what that costs the throughput.
* held-out accuracy: each run's final model (rlvr: ``checkpoints/step_N``; TRL: ``save_model``) measured here as
  rlvr's trainer measures ``heldout/accuracy`` (``Trainer.heldout``: rlvr's HF engine, ``data.heldout`` rendered by
  ``data.template``, one sample per problem at ``trainer.heldout_temperature`` with rlvr's held-out seed, and
  greedy, graded by ``rlvr.rewards.grading.grade``), and the initial model's once.

Matched (the recipe ``recipes/tiny/grpo.yaml`` with the ``--rlvr-override`` values, read by both workers):

* the model (float32), and the prompts of ``data.train`` in the order rlvr's ``PromptStream`` yields them with
  ``trainer.seed``, given to TRL as a ``datasets.Dataset`` in that order with ``shuffle_dataset=False``; their text
  is what ``data.template`` 'plain' renders (the problem, no chat template), and the TRL worker checks that TRL's
  token ids equal rlvr's ``render()``.
* G = ``rollout.n`` 8 (``num_generations``), ``data.batch_size`` 32 prompts (256 completions) a step,
  ``max_completion_length`` = ``rollout.max_new_tokens`` 8, temperature 1, top-p 1, top-k off.
* one optimizer step per RL step: TRL's ``per_device_train_batch_size`` is ``learner.micro_batch_size`` 64 and
  ``gradient_accumulation_steps`` 4, so ``steps_per_generation`` 4 generates the step's 256 completions at once;
  ``num_iterations`` 1 (``learner.epochs``).
* the loss: rlvr grpo's ``token-mean`` over the step's batch is TRL's ``loss_type="dapo"`` (over the tokens of the
  whole accumulated batch); the PPO clip 0.2 (with one iteration the ratio is 1, so neither it nor rlvr's dual clip
  acts); beta 0, no reference model.
* the advantages: ``(R - mean_g R) / (std_g R + eps)``, unbiased std per group (``adv_norm`` group, TRL
  ``scale_rewards="group"``).
* the optimizer: the same torch AdamW (fused; ``learner.lr`` 1e-4, betas, eps 1e-8, weight decay) and rlvr's own
  linear warm-up (``learner.warmup_steps`` 10) handed to TRL, and the clip ``max_grad_norm`` 1. TRL's own
  ``constant_with_warmup`` would start at lr 0, one step behind.
* no gradient checkpointing (on by default in TRL, and in rlvr for any model but the tiny one:
  ``model.gradient_checkpointing=false``), no bf16 autocast (TRL's default, turned off).
* the reward: ``grade(completion, answer)``, 1.0 or 0.0 (rlvr's ``math_answer`` reward is the same grader).
* rlvr runs no held-out pass of its own (``data.heldout=null``, which would add to its start-up), and checkpoints only
  its last step (``trainer.save_every=0``), after the timed step.

Not matched:

* the advantage epsilon: TRL's is 1e-4, fixed; rlvr's 1e-6 (``algorithm.adv_eps``). With 0/1 rewards a group's std
  is 0 or at least 0.35, so advantages differ by less than 0.03 %.
* a step whose advantages are all zero: rlvr skips its learner (``train/skipped_no_signal``, counted here as
  ``skipped_steps``); TRL runs its zero-gradient update, whose AdamW momentum still moves the weights. The
  random-weights model of ``--width`` almost never answers right, so nearly every step would be such a step: there rlvr
  gets ``algorithm.entropy_coef=1e-12``, a negligible term that makes it run the update as TRL does.
* the architecture, which is what is compared: rlvr grades in sandboxed reward processes and trains in a Ray actor;
  TRL does everything in one process (torch threads: the machine's CPUs, as rlvr's Ray actors get them).
* the sampling: each framework draws with its own seeds, so the completions and the trained models differ.
* the held-out measurement runs outside the workers, so its time and memory count for neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny/grpo.yaml"
FRAMEWORKS = ("rlvr", "trl")
WARMUP_STEPS = 3  # steps left out of the medians
RATIO_ROWS = ("s_per_step", "startup_s", "peak_pss_mb", "peak_rss_mb")  # rows with a rlvr/TRL ratio of the medians
# rlvr's algorithm.loss_agg -> TRL's loss_type of the same aggregation, both over the whole step batch.
LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="RL steps per run (the medians take steps 4..N)")
    parser.add_argument("--pairs", type=int, default=4, help="runs of each framework, in alternating order")
    parser.add_argument("--width", type=int, default=None, help="a random-weights Llama of this hidden size (and "
                        "3x its MLP) on the tiny model's tokenizer instead of the tiny model; 512: 13.7M parameters")
    parser.add_argument("--rlvr-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override (repeatable), after the benchmark's own; both workers read the "
                        "recipe with it: TRL's mirrors what the docstring lists and stops on what it cannot mirror")
    parser.add_argument("--memory-every", type=float, default=0.2, metavar="S", help="memory sampling period in "
                        "seconds; each sample reads every process's smaps_rollup, ~4 ms of CPU per process")
    parser.add_argument("--json", default="bench_vs_trl.json", help="where the JSON summary goes")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)  # time.time() when the parent started it
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps {args.steps}: the medians leave out the first {WARMUP_STEPS} steps; take at least "
                     f"{WARMUP_STEPS + 1}")
    if args.worker:
        result = {"rlvr": rlvr_worker, "trl": trl_worker}[args.worker](args)
        Path(args.out).write_text(json.dumps(result))
    else:
        benchmark(args)


def rlvr_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe overrides of rlvr's run besides its output directory (see the module docstring), the user's last."""
    own = [f"trainer.total_steps={args.steps}", "trainer.progress=false", "trainer.save_every=0", "data.heldout=null",
           "model.gradient_checkpointing=false"]
    if args.width:
        own += [f"model.path={args.model}", "algorithm.entropy_coef=1e-12"]
    return own + args.rlvr_override


# -- the parent ------------------------------------------------------------------------------------------------------
def benchmark(args: argparse.Namespace) -> None:
    from rlvr.config import load_recipe
    from rlvr.models.loading import load_model

    with tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as tmp:
        work = Path(tmp)
        args.model = str(initial_model(args.width, work))
        load_recipe(RECIPE, rlvr_overrides(args))  # a bad override stops here, before any run
        # Held-out settings: the recipe's, with the user's overrides (rlvr's own run skips its held-out pass).
        recipe = load_recipe(RECIPE, args.rlvr_override)
        runs = []
        for pair in range(args.pairs):
            order = FRAMEWORKS if pair % 2 == 0 else FRAMEWORKS[::-1]
            runs.append({name: run_worker(name, args, work / f"pair{pair}") for name in order})
            for name, run in runs[-1].items():
                run.update(heldout_accuracy(run.pop("model_dir"), args.model, recipe))
                print(f"pair {pair + 1}/{args.pairs} {name}: {run['tokens_per_s']:.0f} tok/s, "
                      f"{run['s_per_step']:.3f} s/step, start-up {run['startup_s']:.1f} s, "
                      f"peak PSS {run['peak_pss_mb']:.0f} MB", flush=True)
        parameters = sum(p.numel() for p in load_model(args.model).parameters())
        initial = {"parameters": parameters, **heldout_accuracy(args.model, args.model, recipe)}
        summary = summarize(runs, initial, args, recipe)
    print_table(summary)
    line = json.dumps(summary)
    Path(args.json).write_text(line + "\n")
    print(line)


def initial_model(width: int | None, work: Path) -> Path:
    """The tiny model's directory, or a random-weights Llama of hidden size ``width`` on its tokenizer, saved in
    ``work`` (without the tiny model's marker file: rlvr treats it as any other model)."""
    from rlvr.models.tiny import TinySpec, build_model, build_tokenizer, ensure_tiny_model

    if width is None:
        return ensure_tiny_model()
    tokenizer = build_tokenizer()
    model = build_model(dataclasses.replace(TinySpec(), hidden_size=width, intermediate_size=3 * width),
                        len(tokenizer))
    path = work / f"llama-{width}"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_worker(name: str, args: argparse.Namespace, work: Path) -> dict:
    """One framework's run in a child process, the memory of its process tree sampled meanwhile: its step
    statistics, start-up, peak memory and final model directory."""
    work.mkdir(parents=True, exist_ok=True)
    out, log = work / f"{name}.json", work / f"{name}.log"
    command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--model", args.model,
               "--work", str(work), "--out", str(out), "--launched", str(time.time()),
               *(["--width", str(args.width)] if args.width else []),
               *(f"--rlvr-override={override}" for override in args.rlvr_override)]
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
        memory = PeakMemory(child.pid, args.memory_every)
        memory.start()
        code = child.wait()
        peaks = memory.stop()
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"the {name} worker failed (exit code {code}); the end of its output:\n{tail}")
    result = json.loads(out.read_text())
    steps = result.pop("steps")
    timed = steps[WARMUP_STEPS:]
    return {"tokens_per_s": statistics.median(s["tokens"] / s["seconds"] for s in timed),
            "s_per_step": statistics.median(s["seconds"] for s in timed),
            "skipped_steps": sum(s["skipped"] for s in steps), **result, **peaks}


class PeakMemory(threading.Thread):
    """Every ``period`` seconds, the PSS and RSS of a process and all its descendants, summed; keeps the peaks and
    the number of processes at the PSS peak."""

    def __init__(self, pid: int, period: float):
        super().__init__(daemon=True)
        self.root, self.period, self.done = psutil.Process(pid), period, threading.Event()
        self.peaks = {"peak_pss_mb": 0.0, "peak_rss_mb": 0.0, "processes_at_peak": 0}

    def run(self) -> None:
        while not self.done.wait(self.period):
            self.sample()

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        pss = rss = count = 0
        for process in tree:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone since the listing
                continue
            pss, rss, count = pss + info.pss, rss + info.rss, count + 1
        if pss / 1e6 > self.peaks["peak_pss_mb"]:
            self.peaks.update(peak_pss_mb=pss / 1e6, processes_at_peak=count)
        self.peaks["peak_rss_mb"] = max(self.peaks["peak_rss_mb"], rss / 1e6)

    def stop(self) -> dict:
        self.done.set()
        self.join()
        return self.peaks


def heldout_accuracy(model_dir: str, tokenizer_dir: str, recipe) -> dict[str, float]:
    """The accuracy of the model at ``model_dir`` on the recipe's held-out problems as rlvr's ``Trainer.heldout``
    measures it (see the module docstring), with the initial model's tokenizer, which neither framework changes."""
    from rlvr.data.prompts import load_prompts, render
    from rlvr.models.loading import load_model, load_tokenizer
    from rlvr.rewards.grading import grade
    from rlvr.rollout.engine import SamplingParams
    from rlvr.rollout.hf import HFEngine
    from rlvr.trainer import step_seed

    d, t, r = recipe.data, recipe.trainer, recipe.rollout
    prompts = load_prompts(d.heldout, d.problem_key, d.answer_key, d.heldout_size, answer_format=d.answer_format,
                           on_bad_rows=d.on_bad_rows)
    tokenizer = load_tokenizer(tokenizer_dir)
    engine = HFEngine(load_model(model_dir), tokenizer, r.batch_size)
    requests = [render(p, d.template, tokenizer) for p in prompts]
    out = {}
    for key, temperature in (("heldout_accuracy", t.heldout_temperature), ("heldout_accuracy_greedy", 0.0)):
        sampling = SamplingParams(t.heldout_max_new_tokens or r.max_new_tokens, temperature, r.top_p, r.top_k,
                                  seed=step_seed(t.seed, -1), logprobs=False)
        completions = engine.generate(requests, sampling)
        out[key] = sum(grade(c.text, p.answer) for c, p in zip(completions, prompts)) / len(prompts)
    return out


def summarize(runs: list[dict[str, dict]], initial: dict[str, float], args: argparse.Namespace, recipe) -> dict:
    """The JSON summary: the per-pair throughput ratios, each framework's medians over the pairs, the settings."""
    ratios = [pair["rlvr"]["tokens_per_s"] / pair["trl"]["tokens_per_s"] for pair in runs]
    medians = {name: {key: statistics.median(pair[name][key] for pair in runs) for key in runs[0][name]}
               for name in FRAMEWORKS}
    r, learner = recipe.rollout, recipe.learner
    settings = {
        "model": f"llama hidden {args.width}, random weights" if args.width else "tiny", "steps": args.steps,
        "pairs": args.pairs, "median_over_steps": [WARMUP_STEPS + 1, args.steps],
        "prompts_per_step": recipe.data.batch_size, "num_generations": r.n, "max_completion_length": r.max_new_tokens,
        "temperature": r.temperature, "lr": learner.lr, "warmup_steps": learner.warmup_steps,
        "micro_batch_size": learner.micro_batch_size, "loss": f"{recipe.algorithm.loss_agg} / TRL "
        f"{LOSS_TYPES.get(recipe.algorithm.loss_agg)}", "advantage_norm": recipe.algorithm.adv_norm,
        "trl_torch_threads": os.cpu_count(), "memory_every_s": args.memory_every,
    }
    return {"throughput_ratio": statistics.median(ratios), "throughput_ratio_range": [min(ratios), max(ratios)],
            "throughput_ratios": ratios, **medians, "initial_model": initial, "settings": settings,
            "rlvr_overrides": rlvr_overrides(args), "pair_results": runs}


def print_table(summary: dict) -> None:
    rows = [("completion tokens/s", "tokens_per_s", "{:.0f}"), ("s/step", "s_per_step", "{:.3f}"),
            ("start-up s", "startup_s", "{:.1f}"), ("peak PSS MB", "peak_pss_mb", "{:.0f}"),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}"), ("processes at peak", "processes_at_peak", "{:.0f}"),
            ("held-out accuracy T=1", "heldout_accuracy", "{:.1%}"),
            ("held-out accuracy greedy", "heldout_accuracy_greedy", "{:.1%}")]
    rlvr, trl, (low, high) = summary["rlvr"], summary["trl"], summary["throughput_ratio_range"]
    print(f"{'':26s} {'rlvr':>9s} {'TRL':>9s} {'rlvr/TRL':>9s}")
    for label, key, fmt in rows:
        line = f"{label:26s} {fmt.format(rlvr[key]):>9s} {fmt.format(trl[key]):>9s}"
        if key == "tokens_per_s":  # the median of the per-pair ratios
            line += f" {summary['throughput_ratio']:9.2f}  (pairs {low:.2f}-{high:.2f})"
        elif key in RATIO_ROWS:
            line += f" {rlvr[key] / trl[key]:9.2f}"
        print(line)
    initial = summary["initial_model"]
    print(f"the initial model ({initial['parameters'] / 1e6:.2f}M parameters): held-out accuracy "
          f"{initial['heldout_accuracy']:.1%} T=1, {initial['heldout_accuracy_greedy']:.1%} greedy; steps rlvr "
          f"skipped for want of signal: {rlvr['skipped_steps']:.0f}")


# -- the workers -----------------------------------------------------------------------------------------------------
class StepClock:
    """Each RL step's wall time and completion tokens, and the start-up: from ``launched`` (the parent's clock just
    before it started this process) to the first step's start."""

    def __init__(self, launched: float):
        self.launched = launched
        self.startup_s: float | None = None
        self.steps: list[dict] = []
        self.started = 0.0
        self.tokens = 0  # the current step's, where a framework reports them before the step ends

    def begin(self) -> None:
        if self.startup_s is None:
            self.startup_s = time.time() - self.launched
        self.started = time.perf_counter()

    def end(self, tokens: int, skipped: bool = False) -> None:
        self.steps.append({"seconds": time.perf_counter() - self.started, "tokens": tokens, "skipped": skipped})

    def result(self) -> dict:
        return {"startup_s": self.startup_s, "steps": self.steps}


def rlvr_worker(args: argparse.Namespace) -> dict:
    import rlvr
    from rlvr.trainer import Trainer

    clock, train_step = StepClock(args.launched), Trainer.train_step

    def timed_step(self, step: int) -> dict:
        clock.begin()
        row = train_step(self, step)
        clock.end(row["tokens/generated"], bool(row["train/skipped_no_signal"]))
        return row

    Trainer.train_step = timed_step
    run_dir = Path(args.work) / "rlvr"
    rlvr.train(RECIPE, [*rlvr_overrides(args), f"trainer.output_dir={run_dir}"])
    return {**clock.result(), "model_dir": str(run_dir / "checkpoints" / f"step_{args.steps}")}


def trl_worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.config import load_recipe
    from rlvr.data.prompts import render
    from rlvr.learner.torch import linear_warmup
    from rlvr.models.loading import load_tokenizer
    from rlvr.rewards.grading import grade

    recipe = load_recipe(RECIPE, rlvr_overrides(args))
    data, rollout, learner, algo = recipe.data, recipe.rollout, recipe.learner, recipe.algorithm
    rows = data.batch_size * rollout.n
    unmatched = [what for what, bad in (
        (f"algorithm.name {algo.name} (grpo only)", algo.name != "grpo"),
        (f"algorithm.loss_agg {algo.loss_agg} (TRL has {', '.join(LOSS_TYPES)})", algo.loss_agg not in LOSS_TYPES),
        (f"algorithm.loss_agg_scope {algo.loss_agg_scope} (mini-batch only)", algo.loss_agg_scope != "mini-batch"),
        (f"algorithm.loss_scale {algo.loss_scale} (TRL's is max_completion_length)",
         algo.loss_scale not in (None, rollout.max_new_tokens)),
        (f"algorithm.kl_coef {algo.kl_coef} (beta 0 only)", algo.kl_coef != 0),
        (f"learner.epochs {learner.epochs} (1 only)", learner.epochs != 1),
        (f"learner.mini_batch_size {learner.mini_batch_size} (the whole step only)",
         learner.mini_batch_size not in (None, rows)),
        (f"learner.micro_batch_size {learner.micro_batch_size} (must divide the step's {rows} rows)",
         rows % learner.micro_batch_size != 0),
        (f"data.template {data.template!r} ('plain' or a {{problem}} format string only)",
         data.template != "plain" and "{problem}" not in data.template),
    ) if bad]
    if unmatched:
        raise SystemExit("the TRL side cannot mirror " + "; ".join(unmatched))

    tokenizer = load_tokenizer(args.model)
    prompts = training_prompts(recipe, args.steps)
    texts = [p.problem if data.template == "plain" else data.template.format(problem=p.problem) for p in prompts]
    if tokenizer(texts)["input_ids"] != [render(p, data.template, tokenizer) for p in prompts]:
        raise SystemExit("TRL would tokenize the prompts differently from rlvr's render(); compare "
                         f"{tokenizer(texts[:1])['input_ids']} with {render(prompts[0], data.template, tokenizer)}")
    clock = StepClock(args.launched)

    def correct(completions: list[str], answer: list[str], completion_ids: list[list[int]], **_) -> list[float]:
        """rlvr's grader: 1.0 when the completion's final answer equals the gold answer, else 0.0."""
        clock.tokens = sum(map(len, completion_ids))  # the step's completion tokens, EOS included, as rlvr counts
        return [float(grade(text, gold)) for text, gold in zip(completions, answer)]

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.begin()

        def on_step_end(self, *_, **__):
            clock.end(clock.tokens)

    config = GRPOConfig(
        output_dir=str(Path(args.work) / "trl"), max_steps=args.steps, seed=recipe.trainer.seed,
        per_device_train_batch_size=learner.micro_batch_size,
        gradient_accumulation_steps=rows // learner.micro_batch_size,
        num_generations=rollout.n, max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature,
        top_p=rollout.top_p, top_k=rollout.top_k, num_iterations=learner.epochs, beta=0.0,
        loss_type=LOSS_TYPES[algo.loss_agg], scale_rewards=algo.adv_norm, epsilon=algo.clip_eps_low,
        epsilon_high=algo.clip_eps_high, learning_rate=learner.lr, max_grad_norm=learner.max_grad_norm,
        shuffle_dataset=False, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        logging_strategy="no", save_strategy="no", disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learner.lr, betas=learner.betas,
                                  weight_decay=learner.weight_decay, fused=True)
    dataset = Dataset.from_dict({"prompt": texts, "answer": [p.answer for p in prompts]})
    trainer = GRPOTrainer(model=model, reward_funcs=correct, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()],
                          optimizers=(optimizer, linear_warmup(optimizer, learner.warmup_steps)))
    trainer.train()
    final = Path(args.work) / "trl" / "final"
    trainer.save_model(str(final))
    return {**clock.result(), "model_dir": str(final)}


def training_prompts(recipe, steps: int) -> list:
    """The prompts of rlvr's first ``steps`` steps, in its order: ``data.train`` loaded and prepared as
    ``Trainer`` does, read by a ``PromptStream`` seeded by ``trainer.seed``."""
    from rlvr import algos
    from rlvr.data.prompts import PromptStream, load_prompts

    d, seed = recipe.data, recipe.trainer.seed
    prompts = load_prompts(d.train, d.problem_key, d.answer_key, d.train_size, seed=seed,
                           answer_format=d.answer_format, on_bad_rows=d.on_bad_rows)
    stream = PromptStream(algos.from_recipe(recipe).prepare_prompts(prompts, recipe), d.batch_size, seed, d.shuffle)
    return [prompt for _ in range(steps) for prompt in stream.next_batch()]


if __name__ == "__main__":
    main()
