"""Memory of a training run, per step and per process, and where the learner's goes. Prints tables, writes JSON.

    python scripts/bench_memory.py                 # SmolLM2-135M-Instruct, 4 prompts x 4 samples x 128 tokens, 20 steps
    python scripts/bench_memory.py --steps 6 --set learner.micro_batch_size=64 model.gradient_checkpointing=false
    python scripts/bench_memory.py --model tiny --data tiny:train --template plain --tokens 8 --steps 5

The recipe is recipes/tiny/grpo.yaml pointed at ``--model`` and ``--data`` (GSM8K from the project's shared data
by default), with the ``by_length`` test reward, which gives every step a gradient (a math reward gives SmolLM2
all-zero rewards, and rlvr skips such steps without an update, which would hide the update's memory).

Per step and per process of the run (the driver, the learner and rollout actors, the reward workers, Ray's own
processes: psutil over the driver's process tree) it records the resident set at the end of the step and its peak
during the step, read from the kernel's high-water mark (``VmHWM``, reset at the start of the step and of each
phase), and for the learner the peak of each phase (generate, log-probs the driver needs first, update with the
learner's own log-prob passes, weight sync).
After the last step it asks the learner where its memory goes (:meth:`rlvr.learner.torch.TorchLearner.memory_report`):
parameters, gradients, optimizer state, reference model, a log-prob pass and one forward and backward of the
largest micro-batch of the largest step batch. docs/memory.md has the figures and what they mean.

The resets at each phase start also reset what rlvr's own ``memory/peak_bytes`` reads, so under this script that
metric covers only the end of each step; ``rlvr train`` alone reports each step's whole peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test reward (tests.rewards_for_tests) is imported by name
PHASES = ("generate", "logprobs", "update", "sync")
MiB = 2**20


def role(proc: psutil.Process, driver: int) -> str:
    """What a process of the run is: driver, learner, rollout, reward, or ray:<its name>."""
    if proc.pid == driver:
        return "driver"
    try:
        cmdline = proc.cmdline()
        name = proc.name()
        parent = proc.ppid()
    except psutil.Error:
        return "gone"
    title = cmdline[0] if cmdline and cmdline[0].startswith("ray::") else name
    if title.startswith("ray::"):
        actor = title.removeprefix("ray::").split(".")[0].split()[0]
        if actor == "LearnerActor":
            return "learner"
        if actor == "RolloutActor":
            return "rollout"
        return f"ray:{actor}"
    if parent == driver and any("multiprocessing" in part for part in cmdline):
        return "reward"
    if parent == driver and cmdline == psutil.Process(driver).cmdline():
        return "driver-fork"  # a helper forked from the driver (its peak starts as the driver's)
    program = next((Path(part).name for part in cmdline if part.endswith((".py", "gcs_server", "raylet"))), name)
    return f"ray:{program}"


def status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes; empty once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    """Restarts a process's high-water mark from its resident set now (``/proc/PID/clear_refs``, proc(5))."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class Tracker:
    """The driver's process tree, sampled every ``interval`` seconds: each process's resident set and high-water
    mark, and the largest sum of resident sets over the tree (what the machine held at once)."""

    def __init__(self, interval: float):
        self.driver = os.getpid()
        self.interval = interval
        self.lock = threading.Lock()
        self.roles: dict[int, str] = {}
        self.step_peak: dict[int, int] = defaultdict(int)  # pid -> highest VmHWM seen this step
        self.total_peak = 0  # highest sum of resident sets this step
        self.phase_peak: dict[str, dict[int, int]] = {}  # phase -> pid -> its peak (actors only)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def processes(self) -> list[int]:
        procs = [psutil.Process(self.driver), *psutil.Process(self.driver).children(recursive=True)]
        for proc in procs:  # a worker takes its actor's name only once the actor is created
            if self.roles.get(proc.pid) not in ("learner", "rollout"):
                self.roles[proc.pid] = role(proc, self.driver)
        return [proc.pid for proc in procs]

    def actors(self) -> list[int]:
        return [pid for pid, name in self.roles.items() if name in ("learner", "rollout")]

    def _sample(self) -> None:
        total = 0
        with self.lock:
            for pid in self.processes():
                stat = status(pid)
                if stat:
                    total += stat["VmRSS"]
                    self.step_peak[pid] = max(self.step_peak[pid], stat["VmHWM"])
            self.total_peak = max(self.total_peak, total)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self._sample()
            except psutil.Error:
                pass  # a process ended while it was read

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def begin_step(self) -> None:
        with self.lock:
            for pid in self.processes():
                reset_peak(pid)
            self.step_peak.clear()
            self.total_peak = 0
            self.phase_peak = {}

    def end_step(self) -> dict[str, dict]:
        """Per process of this step: role, resident set now, peak during the step."""
        self._sample()
        with self.lock:
            out = {}
            for pid in self.processes():
                stat = status(pid)
                if stat:
                    out[str(pid)] = {"role": self.roles[pid], "rss": stat["VmRSS"],
                                     "peak": max(self.step_peak[pid], stat["VmHWM"])}
            return out

    def phase(self, name: str, call, workers):
        """``call()`` with the actors' high-water marks reset before it and read after it: the phase's own peak. The
        actors also read and reset their own mark at the end of each call (the peak their answer carries, which
        ``workers`` keeps), so that figure counts too."""
        with self.lock:
            for pid in self.actors():
                self.step_peak[pid] = max(self.step_peak[pid], status(pid).get("VmHWM", 0))
                reset_peak(pid)
        before, workers.peaks = workers.peaks, {}
        try:
            return call()
        finally:
            answered = max(workers.peaks.values(), default=0)
            for key, peak in before.items():
                workers.peaks[key] = max(workers.peaks.get(key, 0), peak)
            with self.lock:
                peaks = self.phase_peak.setdefault(name, {})
                peaks["answered"] = max(peaks.get("answered", 0), answered)
                for pid in self.actors():
                    hwm = status(pid).get("VmHWM", 0)
                    peaks[pid] = max(peaks.get(pid, 0), hwm)
                    self.step_peak[pid] = max(self.step_peak[pid], hwm)


def instrument(workers, tracker: Tracker, batches: list) -> None:
    """Wraps the driver's calls into the actors so that each phase's peak is measured; keeps the step batches.
    ``update`` includes the log-prob passes the learner runs itself before it (all of them, unless the driver needs
    the log-probs first: the KL in the reward, measured as ``logprobs``)."""
    calls = {name: getattr(workers, name) for name in ("generate", "logprobs", "update", "sync_weights")}
    workers.generate = lambda *a, **k: tracker.phase("generate", lambda: calls["generate"](*a, **k), workers)
    workers.sync_weights = lambda *a, **k: tracker.phase("sync", lambda: calls["sync_weights"](*a, **k), workers)
    workers.logprobs = lambda *a, **k: tracker.phase("logprobs", lambda: calls["logprobs"](*a, **k), workers)

    def update(staged):
        batches.append(staged.batch)
        return tracker.phase("update", lambda: calls["update"](staged), workers)

    workers.update = update


def overrides(args: argparse.Namespace, output_dir: Path) -> list[str]:
    return [
        f"model.path={args.model}", f"data.train={args.data}", "data.heldout=null", f"data.template={args.template}",
        f"data.batch_size={args.prompts}", f"rollout.n={args.samples}", f"rollout.max_new_tokens={args.tokens}",
        f"reward.function={args.reward}", "learner.lr=1e-6", "learner.warmup_steps=0",
        f"trainer.total_steps={args.steps}", "trainer.save_every=0", f"trainer.output_dir={output_dir}",
        "trainer.progress=false", f"placement.mode={args.placement}", *args.set,
    ]


def padded_tokens(batch) -> int:
    """Rows x (prompt + response width) of a step batch: what its forward passes hold activations for."""
    return batch.prompt_tokens.numel() + batch.response_tokens.numel()


def summarise(processes: dict[str, dict]) -> dict[str, int]:
    """Per role: the resident set now (summed over its processes) and the largest single-process peak."""
    out: dict[str, int] = defaultdict(int)
    for proc in processes.values():
        group = proc["role"] if not proc["role"].startswith("ray:") else "ray"
        out[f"{group}/rss"] += proc["rss"]
        out[f"{group}/peak"] = max(out[f"{group}/peak"], proc["peak"])
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (data.batch_size)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (rollout.n)")
    parser.add_argument("--tokens", type=int, default=128, help="rollout.max_new_tokens")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--placement", default="colocated", choices=("colocated", "split"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k_train.jsonl"))
    parser.add_argument("--template", default="qwen-boxed")
    parser.add_argument("--reward", default="tests.rewards_for_tests:by_length")
    parser.add_argument("--recipe", default=str(REPO / "recipes/tiny/grpo.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples of the process tree")
    parser.add_argument("--json", default="bench_memory.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from rlvr.config import load_recipe
    from rlvr.trainer import Trainer

    output_dir = Path(tempfile.mkdtemp(prefix="rlvr-bench-memory-")) / "run"
    recipe = load_recipe(args.recipe, overrides(args, output_dir))
    tracker = Tracker(args.interval)
    steps, batches = [], []
    started = time.perf_counter()
    with Trainer(recipe) as run:
        tracker.start()
        instrument(run.workers, tracker, batches)
        for step in range(1, args.steps + 1):
            tracker.begin_step()
            row = run.train_step(step)
            run.log(row)
            processes = tracker.end_step()
            steps.append({
                # rlvr's own figure, since this script's resets at each phase start: the peak from the sync on
                "step": step, "time_s": row["time/step"], "metric_peak_bytes": row["memory/peak_bytes"],
                "trained": not row["train/skipped_no_signal"], "rows": row["rollout/num_rows"],
                "response_length_max": row["response/length_max"], "total_rss_peak": tracker.total_peak,
                "batch_tokens": 0 if row["train/skipped_no_signal"] else padded_tokens(batches[-1]),
                "phases": {name: max(peaks.values()) for name, peaks in tracker.phase_peak.items() if peaks},
                **summarise(processes), "processes": processes,
            })
            print_step(steps[-1], header=step == 1)
        tracker.stop()
        largest = max(batches, key=padded_tokens) if batches else None
        breakdown = ray.get(run.workers.learner.memory_report.remote(largest))
    wall = time.perf_counter() - started
    print_breakdown(breakdown, steps)
    result = {"args": vars(args), "recipe": recipe.model_dump(mode="json"), "wall_s": wall, "steps": steps,
              "learner_breakdown": breakdown}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


def print_step(s: dict, header: bool) -> None:
    columns = ("step", "s", "tokens", "resp", *(f"{p} pk" for p in PHASES), "learner rss", "learner pk",
               "driver pk", "reward pk", "ray rss", "tree pk")
    if header:
        print("MiB per step; 'tokens' the update batch's rows x padded width, 'resp' its longest response; 'pk' a "
              "peak within the step, 'rss' the resident set at its end; phases are the learner's; 'tree pk' the "
              "largest sum over every process")
        print(" ".join(f"{c:>11s}" for c in columns))
    cells = [f"{s['step']:11d}", f"{s['time_s']:11.1f}", f"{s['batch_tokens']:11d}", f"{s['response_length_max']:11.0f}"]
    cells += [f"{s['phases'][p] / MiB:11.0f}" if p in s["phases"] else f"{'-':>11s}" for p in PHASES]
    for key in ("learner/rss", "learner/peak", "driver/peak", "reward/peak", "ray/rss", "total_rss_peak"):
        cells.append(f"{s[key] / MiB:11.0f}" if key in s else f"{'-':>11s}")
    print(" ".join(cells), flush=True)


def print_breakdown(report: dict, steps: list[dict]) -> None:
    """The learner's memory: what lives across steps, then what one update adds on top of it."""
    tensors = report["parameters"] + report["optimizer_state"] + report["reference"] + report["gradients"]
    lasting = [
        ("process baseline (resident set less the tensors below)", report["resident"] - tensors),
        ("parameters (and buffers)", report["parameters"]),
        ("optimizer state (AdamW moments)", report["optimizer_state"]),
        ("reference model", report["reference"]),
        ("resident set between steps", report["resident"]),
    ]
    update = [
        ("gradients", report.get("update_gradients", 0)),
        (f"activations kept by the forward ({report.get('micro_batch_rows', 0)} rows, "
         f"{report.get('micro_batch_tokens', 0)} tokens)", report.get("activations", 0)),
        ("forward and backward: peak added (gradients included)", report.get("update_peak", 0)),
        ("log-prob pass over the step batch: peak added", report.get("logprob_pass", 0)),
    ]
    print("\nlearner breakdown (MiB): between steps")
    for name, value in lasting:
        print(f"  {name:64s} {value / MiB:9.0f}")
    print("added by the largest micro-batch of the largest step batch")
    for name, value in update:
        print(f"  {name:64s} {value / MiB:9.0f}")
    print(f"  {'resident set between steps + forward and backward peak':64s} "
          f"{(report['resident'] + report.get('update_peak', 0)) / MiB:9.0f}")
    for key in ("heap_in_use", "heap_free", "mmapped"):
        if key in report:
            print(f"  {'glibc main heap: ' + key:64s} {report[key] / MiB:9.0f}")
    later = [s for s in steps[1:] or steps if "learner/peak" in s]  # step 1 has no AdamW moments yet
    if later:
        peaks, rss = [s["learner/peak"] for s in later], [s["learner/rss"] for s in later]
        print(f"learner over steps {later[0]['step']}..{later[-1]['step']}: peak {min(peaks) / MiB:.0f} .. "
              f"{max(peaks) / MiB:.0f} MiB (it follows the step batch's width); resident set between steps "
              f"{rss[0] / MiB:.0f} -> {rss[-1] / MiB:.0f} MiB")


if __name__ == "__main__":
    main()
