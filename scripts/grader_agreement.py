"""Agreement of rlvr's grader and of plain math-verify with the labelled equivalence set, per kind.

Each case of ``tests/data/equivalence_set.jsonl`` (a model response, a gold answer, a human label) is
graded twice:

* ``rlvr``: ``rlvr.rewards.grading.grade(response, gold)``, as the math reward and ``rlvr eval`` call it;
* ``math-verify``: ``verify(parse(gold), parse(response))`` with math-verify's defaults, the way its README
  shows (no ``\\boxed{}`` put around the gold, no options);
* ``mv $-wrapped``: the same, with the gold written as ``$gold$`` (the README's golds are) and a bare
  one-line response (no ``$``, no ``\\boxed``) as ``$response$``: how much of the difference is only the
  math delimiters math-verify's LaTeX extraction looks for.

A grader agrees with a case when its verdict equals the label. The table gives, per kind and overall, the
number of cases and each grader's agreement, with the wrong answers it accepted (``acc.``) and the right
answers it rejected (``rej.``). The JSON (``--output``) has the same numbers and every disagreement.

    python scripts/grader_agreement.py
    python scripts/grader_agreement.py --set tests/data/equivalence_set.jsonl --output grader_agreement.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRADERS = ("rlvr", "math-verify", "mv $-wrapped")


def load_cases(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rlvr_verdict(response: str, gold: str) -> bool:
    from rlvr.rewards.grading import grade

    return grade(response, gold)


def math_verify_verdict(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(response)))


def math_verify_wrapped_verdict(response: str, gold: str) -> bool:
    bare = "$" not in response and "\\boxed" not in response and "\n" not in response.strip()
    return math_verify_verdict(f"${response}$" if bare else response, f"${gold}$")


def run_grader(grader: Callable[[str, str], bool], cases: list[dict]) -> tuple[list[bool], float]:
    """Each case's verdict, and the seconds all of them took."""
    started = time.perf_counter()
    verdicts = [grader(case["response"], case["gold"]) for case in cases]
    return verdicts, time.perf_counter() - started


def score(cases: list[dict], verdicts: list[bool]) -> dict:
    """Agreement of ``verdicts`` with the labels: counts, the fraction, and wrong answers accepted / right rejected."""
    agree = sum(verdict == case["equal"] for case, verdict in zip(cases, verdicts, strict=True))
    accepted = sum(verdict and not case["equal"] for case, verdict in zip(cases, verdicts, strict=True))
    rejected = sum(case["equal"] and not verdict for case, verdict in zip(cases, verdicts, strict=True))
    return {"cases": len(cases), "agree": agree, "agreement": agree / len(cases),
            "accepted_wrong": accepted, "rejected_right": rejected}


def summarize(cases: list[dict], verdicts: dict[str, list[bool]]) -> dict:
    """Per kind (in first-seen order) and overall, each grader's score."""
    kinds = list(dict.fromkeys(case["kind"] for case in cases))
    by_kind = {}
    for kind in kinds:
        indices = [index for index, case in enumerate(cases) if case["kind"] == kind]
        subset = [cases[index] for index in indices]
        by_kind[kind] = {name: score(subset, [verdicts[name][index] for index in indices]) for name in verdicts}
    overall = {name: score(cases, verdicts[name]) for name in verdicts}
    return {"by_kind": by_kind, "overall": overall}


def disagreements(cases: list[dict], verdicts: list[bool]) -> list[dict]:
    return [{**case, "verdict": verdict} for case, verdict in zip(cases, verdicts, strict=True)
            if verdict != case["equal"]]


def print_table(summary: dict) -> None:
    header = f"{'kind':<18}{'cases':>6}" + "".join(f"{name:>14}{'acc.':>6}{'rej.':>6}" for name in GRADERS)
    print(header)
    print("-" * len(header))
    rows = list(summary["by_kind"].items()) + [("overall", summary["overall"])]
    for kind, scores in rows:
        if kind == "overall":
            print("-" * len(header))
        cells = "".join(f"{scores[name]['agreement']:>14.1%}{scores[name]['accepted_wrong']:>6}"
                        f"{scores[name]['rejected_right']:>6}" for name in GRADERS)
        print(f"{kind:<18}{scores[GRADERS[0]]['cases']:>6}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=REPO / "tests" / "data" / "equivalence_set.jsonl",
                        help="the labelled set (JSON Lines: response, gold, equal, kind, source)")
    parser.add_argument("--output", type=Path, default=Path("grader_agreement.json"),
                        help="where to write the results (default grader_agreement.json in the current directory)")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its per-call timeout warnings, not ours to show
    cases = load_cases(args.set)
    verdicts, seconds = {}, {}
    for name, grader in zip(GRADERS, (rlvr_verdict, math_verify_verdict, math_verify_wrapped_verdict), strict=True):
        verdicts[name], seconds[name] = run_grader(grader, cases)
    summary = summarize(cases, verdicts)
    print(f"{len(cases)} cases from {args.set} ({sum(not case['equal'] for case in cases)} labelled not equal)")
    print_table(summary)
    for name in GRADERS:
        wrong = disagreements(cases, verdicts[name])
        print(f"\n{name}: {len(wrong)} disagreements, {seconds[name]:.1f}s for all cases")
        for case in wrong:
            print(f"  [{case['kind']}] label={case['equal']} gold={case['gold']!r} response={case['response'][:70]!r}")
    out = {"set": str(args.set), "cases": len(cases), "seconds": seconds, **summary,
           "disagreements": {name: disagreements(cases, verdicts[name]) for name in GRADERS}}
    args.output.write_text(json.dumps(out, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
