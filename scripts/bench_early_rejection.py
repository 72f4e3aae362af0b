"""PRM early rejection against full generation on the tiny arithmetic task: tokens generated and accuracy.

Both methods sample ``N`` candidates per held-out problem with the same seed, and with every request in
one engine batch (``--engine-batch 0``) the sampling is paired: early rejection's partials are exactly the
first ``tau`` tokens of full generation's candidates. Each answers with the candidate the scorer ranks
best. Full generation (best-of-N: ``beam_search`` with one step) generates every candidate to the end;
early rejection (``partial_beam_search``) scores them at ``tau`` tokens, keeps ``N/M`` and finishes only
those. The scorer is :class:`ArithmeticProgressScorer`, an exact oracle, so "accuracy" is that of the
chosen answer under an ideal verifier: what the bench measures is how many tokens early rejection saves
and whether rejecting at ``tau`` loses right answers. Tokens generated count every token the engine
returned (EOS included), rejected partials included.
Prints a Markdown table and writes JSON.

    python scripts/bench_early_rejection.py                          # 512 problems, N=16, M=8, tau=4
    python scripts/bench_early_rejection.py --problems 256 --tau 3 --json /tmp/er.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=512, help="held-out problems (the split has 512)")
    parser.add_argument("--n", type=int, default=16, help="N: candidates per problem (the paper's default)")
    parser.add_argument("--m", type=int, default=8,
                        help="M: expansions per kept beam, keep N/M (the paper keeps 1/4; see docs/early-rejection.md)")
    parser.add_argument("--tau", type=int, default=4,
                        help="tokens before the partial score: one more than the longest tiny answer (3 chars)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="response budget (recipes/tiny: 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (recipes/tiny: 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--engine-batch", type=int, default=0,
                        help="HF engine batch size; 0: every request of a call in one batch (paired sampling)")
    parser.add_argument("--json", default="bench_early_rejection.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from rlvr.data.tasks import arithmetic
    from rlvr.models.loading import load_model, load_tokenizer
    from rlvr.models.tiny import ensure_tiny_model
    from rlvr.rewards.grading import grade
    from rlvr.rollout.early_rejection import beam_search, partial_beam_search
    from rlvr.rollout.engine import SamplingParams
    from rlvr.rollout.hf import HFEngine
    from rlvr.rollout.prm import ArithmeticProgressScorer

    torch.set_num_threads(args.threads)
    model_dir = str(ensure_tiny_model())
    tokenizer = load_tokenizer(model_dir)
    engine = HFEngine(load_model(model_dir), tokenizer, batch_size=args.engine_batch or args.n * args.problems)
    problems = arithmetic.problems("heldout", args.problems)
    prompt_tokens = [tokenizer(p.problem, add_special_tokens=False).input_ids for p in problems]
    texts = [p.problem for p in problems]
    sampling = SamplingParams(args.max_new_tokens, args.temperature, seed=args.seed)
    common = {"scorer": ArithmeticProgressScorer(), "decode": tokenizer, "sampling": sampling,
              "num_candidates": args.n, "expansions": args.m}

    started = time.perf_counter()
    full = beam_search(engine, prompt_tokens, texts, **common)
    wall_full = time.perf_counter() - started
    started = time.perf_counter()
    early = partial_beam_search(engine, prompt_tokens, texts, tau=args.tau, **common)
    wall_early = time.perf_counter() - started

    def accuracy(results) -> float:
        return statistics.mean(grade(r.response, p.answer) for r, p in zip(results, problems))

    tokens_full = sum(r.tokens_generated for r in full)
    tokens_early = sum(r.tokens_generated for r in early)
    rejected = [c for r in early for c in r.candidates if not c.kept]
    result = {
        "settings": {"model": model_dir, "problems": len(problems), "n": args.n, "m": args.m, "tau": args.tau,
                     "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed,
                     "engine_batch": engine.batch_size,
                     "scorer": "arithmetic (ArithmeticProgressScorer, exact oracle)"},
        "tokens_full": tokens_full,
        "tokens_early": tokens_early,
        "tokens_ratio": tokens_full / tokens_early,
        "accuracy_full": accuracy(full),
        "accuracy_early": accuracy(early),
        # One sample's accuracy (mean over all N full candidates): how hard the task is for the model.
        "accuracy_single_sample": statistics.mean(
            grade(c.text, p.answer) for r, p in zip(full, problems) for c in r.candidates),
        "mean_response_tokens_full": tokens_full / (len(problems) * args.n),
        "rejected_candidates": len(rejected),
        "rejected_partial_tokens": sum(c.generated_tokens for c in rejected),
        "continued_tokens": sum(c.continued_tokens for r in early for c in r.candidates),
        "wall_s_full": wall_full,
        "wall_s_early": wall_early,
    }
    result["accuracy_drop_points"] = 100 * (result["accuracy_full"] - result["accuracy_early"])
    result["targets_met"] = result["tokens_ratio"] >= 1.4 and result["accuracy_drop_points"] <= 2.0

    print(f"\n{len(problems)} held-out problems, N={args.n}, M={args.m} (keep {args.n // args.m}), tau={args.tau}, "
          f"max_new_tokens={args.max_new_tokens}, T={args.temperature}, seed={args.seed}\n")
    print("| method | tokens generated | tokens / problem | accuracy of the chosen answer | wall (s) |")
    print("|---|---|---|---|---|")
    for name, tokens, acc, wall in (("full generation (best of N)", tokens_full, result["accuracy_full"], wall_full),
                                    (f"early rejection (tau={args.tau})", tokens_early, result["accuracy_early"],
                                     wall_early)):
        print(f"| {name} | {tokens} | {tokens / len(problems):.2f} | {acc:.1%} | {wall:.1f} |")
    print(f"\ntokens ratio {result['tokens_ratio']:.2f}x, accuracy drop {result['accuracy_drop_points']:.1f} points, "
          f"one-sample accuracy {result['accuracy_single_sample']:.1%}, "
          f"targets (>= 1.4x, <= 2 points) {'met' if result['targets_met'] else 'NOT met'}")
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
