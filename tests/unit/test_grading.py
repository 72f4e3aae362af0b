"""Answer extraction and equivalence: the cases the math benchmarks and the tiny task actually contain."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import threading
import time

import pytest

from rlvr.rewards.grading import bounded, extract_answer, grade, is_equivalent, normalize
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"First \boxed{3}, but on reflection the answer is \boxed{5}.", "5"),
        (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"The area is \fbox{ 12 } square units.", "12"),
        (r"We get \boxed{7} and then, cut off by the token limit, \boxed{\frac{8", "7"),
        ("Adding the two, the answer is $42$.", "42"),
        ("Thus the final answer is: **-3/4**.\nI hope it is correct.", "-3/4"),
        ("Some work.\nAnswer: 2,125", "2,125"),
        ("The Answer Is 9. Then answer: 10.", "10"),
        ("47", "47"),
        ("  -3/4  ", "-3/4"),
        ("$\\frac{1}{2}$", r"\frac{1}{2}"),
        (r"So $x = \boxed{1}$ or $x = \boxed{-2}$.", "1, -2"),  # one box per answer
        (r"\boxed{5} \boxed{5}", "5"),  # a repeated box is one answer
        ("Final Answer: The volume of $ABCD$ is 120. I hope it is correct.", "120"),
        ("the answer is 5 since it is odd.", "5"),
        ("Here is a zero matrix: $0$", "0"),  # a one-line reply: its last math span
        (r"\$32,348", r"\$32,348"),  # an escaped dollar is currency, not a math delimiter
        (r"so our answer is $\boxed 2$.", "2"),  # an unbraced box
    ],
)
def test_extract_answer_finds_the_final_answer(response: str, expected: str) -> None:
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        "",
        "   ",
        "I am not sure how to approach this problem, so let me think about it more carefully.",
        r"The final box is empty: \boxed{}",
    ],
)
def test_extract_answer_gives_none_without_an_answer(response: str) -> None:
    assert extract_answer(response) is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("$025$", "25"),
        ("2,125", "2125"),
        ("2{,}125", "2125"),
        ("1, 125", "1,125"),  # a list, not a thousands separator
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac{3}{4}.", r"\frac{3}{4}"),
        (r"10\text{ cm}", "10"),
        (r"\text{(C)}", "(C)"),
        (r"1\!000", "1000"),
        (r"x \rightarrow y", r"x\rightarrowy"),
        ("-0", "0"),
        (r"\$32,\!348", "32348"),
        (r"864 \mbox{ inches}^2", "864"),
        ("18 dollars", "18"),
        ("2 ab", "2ab"),  # two letters that are not a unit are variables
        (r"30^{\circ}", "30"),
        ("50 percent", r"50\%"),
        (r"\frac 59", r"\frac{5}{9}"),
        (r"2 \le x < 5", "[2,5)"),
        (r"x < 2 \text{ or } x > 3", r"(-\infty,2)\cup(3,\infty)"),
        (r"1 \text{ and } -2", "1,-2"),
    ],
)
def test_normalize(answer: str, expected: str) -> None:
    assert normalize(answer) == expected


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("204", "204"),
        ("25", "025"),  # AIME golds are zero-padded
        ("2125", "2,125"),  # GSM8K golds carry thousands separators
        ("-7", "-7"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\frac12", "0.5"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        ("(3,\\pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\sqrt{18}", r"3\sqrt{2}"),
        ("1+x^2", "x^2+1"),
        ("0.333333", r"\frac{1}{3}"),  # a decimal matches a non-terminating fraction at 6 places
        ("90", r"90^\circ"),
        ("50", r"50\%"),  # MATH convention
        ("0.5", r"50\%"),  # a percentage is also its value
        ("1.5e3", "1500"),
        (r"1.5 \times 10^{3}", "1500"),
        ("1.8", r"1\frac{4}{5}"),  # a mixed number
        ("52", "52_8"),  # the base may be left out of the answer
        ("C", r"\text{(C)}"),
        (r"\textbf{(C)}", "C"),
        ("C, A", r"\text{A,C}"),  # several letters, in any order
        ("5", "x=5"),
        ("y = 3 + 2x", "y = 2x + 3"),
        ("Evelyn", r"\text{Evelyn}"),
        ("2 < x \\le 4", "(2,4]"),
        ("-2, 1", "1,-2"),  # several answers, in any order
        (r"\{2,1\}", r"\{1,2\}"),
        (r"\begin{bmatrix} 1 \\\\ 2 \end{bmatrix}", r"\begin{pmatrix} 1 \\\\ 2 \end{pmatrix}"),
    ],
)
def test_equivalent_answers(answer: str, gold: str) -> None:
    assert is_equivalent(answer, gold)
    assert grade(rf"The result is \boxed{{{answer}}}.", gold)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("24", "25"),
        ("25", "0025.5"),
        ("2125", "2,126"),
        ("-1/2", r"\frac{1}{2}"),
        ("0.3", r"\frac{1}{3}"),
        ("(3,\\pi)", r"\left( 3, \frac{\pi}{2} \right)"),
        ("x^2", "x^3"),
        ("", "5"),
        ("0.33", r"\frac{1}{3}"),
        ("0.5", "50"),  # no percent sign on either side
        ("250", "025"),
        ("(2,1)", "(1,2)"),  # tuples are ordered
        ("[2,5]", "[2,5)"),
        ("42", "52_8"),  # the value in base 10 is not the base-8 answer
        ("52_{10}", "52_8"),
        ("D", r"\text{(C)}"),
        ("12", r"\text{(C)}"),
        ("A", r"\text{A,C}"),
        ("y = 5", "x=5"),  # another variable
        ("west", r"\text{east}"),
        (r"\frac{\pi}{2}", r"90^\circ"),  # units are dropped, never converted
        ("1", "1,-2"),
        ("2 ab", "2"),
        # Unevaluated arithmetic is not the value asked for (a policy learns to restate the question).
        ("38+41", "79"),
        ("52 - 36", "16"),
        (r"5 \cdot 47", "235"),
        ("(38+41)", "79"),
        ("2^{10}", "1024"),
        (r"\frac{1}{2}+1", "1.5"),
    ],
)
def test_wrong_answers_are_not_equivalent(answer: str, gold: str) -> None:
    assert not is_equivalent(answer, gold)
    assert not grade(rf"The result is \boxed{{{answer}}}.", gold)


def test_grade_without_an_answer_is_wrong() -> None:
    assert not grade("I could not solve this problem, although I tried several approaches at length.", "5")


def test_grade_in_a_thread_uses_the_helper_process() -> None:
    # Outside the main thread math-verify's signal.alarm timeouts cannot work; the helper process grades.
    verdicts: list[bool] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            verdicts.append(grade(r"\boxed{(3,\pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"))
            verdicts.append(grade(r"\boxed{x^2+1}", "x^3"))
        except BaseException as error:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not errors
    assert verdicts == [True, False]


def test_integer_answers_never_reach_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny task grades thousands of bare integers a minute: the fast path must decide them all,
    # right or wrong, without sympy.
    import math_verify

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(math_verify, "parse", lambda *args, **kwargs: calls.append(args) or [])
    monkeypatch.setattr(math_verify, "verify", lambda *args, **kwargs: calls.append(args) or False)
    verdicts = [grade(str(value), f"{value + value % 2:03d}") for value in range(-50, 1000)]
    assert sum(verdicts) == 525  # the even values
    assert grade("The answer is 1,000.", "1000")
    assert calls == []
    # The interception works: a comparison the fast path cannot decide does reach it.
    grade(r"\boxed{\sqrt{2}}", r"\sqrt{2}+0")
    assert calls


def test_long_answers_are_compared_as_strings_only() -> None:
    long_answer = "x+" * 400 + "1"
    assert is_equivalent(long_answer, long_answer)
    assert not is_equivalent(long_answer, "1+" + "x+" * 399 + "x")


# --- time bounds --------------------------------------------------------------------------------------

# sympy computes this power tower as an exact integer: it did not finish in 40 s when measured. In a set, so that
# math-verify gets it (against a plain number the cheap checks reject unevaluated arithmetic at once).
SLOW_ANSWER, SLOW_GOLD = r"\{2^{2^{2^{2^{2^{10}}}}}\}", r"\{3\}"
BOUND_MARGIN_S = 3.0  # killing and joining the helper on a loaded 2-core machine; unbounded takes > 40 s


def _timed(call, *args, **kwargs) -> tuple[object, float]:
    started = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - started


def _in_thread(call, *args, **kwargs) -> tuple[object, float]:
    outcome: list[tuple[object, float]] = []
    thread = threading.Thread(target=lambda: outcome.append(_timed(call, *args, **kwargs)))
    thread.start()
    thread.join(timeout=180)
    assert outcome, "the call did not return"
    return outcome[0]


def test_the_slow_answer_is_slow_without_a_tight_bound() -> None:
    # The bound, not the input, is what makes the tests below fast.
    verdict, seconds = _timed(is_equivalent, SLOW_ANSWER, SLOW_GOLD, timeout_s=2.0)
    assert verdict is False
    assert seconds >= 1.9


def test_the_main_thread_is_bounded_by_a_signal_and_puts_back_the_previous_alarm() -> None:
    fired: list[int] = []

    def handler(signum, frame) -> None:
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        verdict, seconds = _timed(is_equivalent, SLOW_ANSWER, SLOW_GOLD, timeout_s=0.5)
        assert verdict is False
        assert seconds < 0.5 + BOUND_MARGIN_S
        assert is_equivalent(r"\sqrt{18}", r"3\sqrt{2}")  # a normal comparison still works afterwards
        assert signal.getsignal(signal.SIGALRM) is handler
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90.0 < remaining <= 100.0
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_another_thread_is_bounded_by_the_helper_which_is_replaced() -> None:
    assert _in_thread(is_equivalent, r"\sqrt{18}", r"3\sqrt{2}")[0] is True  # starts the helper
    helper = bounded._HELPER._process
    verdict, seconds = _in_thread(is_equivalent, SLOW_ANSWER, SLOW_GOLD, timeout_s=0.5)
    assert verdict is False
    assert seconds < 0.5 + BOUND_MARGIN_S
    assert not helper.is_alive()
    assert _in_thread(is_equivalent, r"\sqrt{18}", r"3\sqrt{2}")[0] is True  # a fresh helper
    assert _in_thread(is_equivalent, "x^2+1", "x^3")[0] is False


def test_a_dead_helper_costs_one_answer_and_is_replaced() -> None:
    assert _in_thread(is_equivalent, r"\sqrt{8}", r"2\sqrt{2}")[0] is True
    bounded._HELPER._process.kill()
    bounded._HELPER._process.join()
    assert _in_thread(is_equivalent, r"\sqrt{8}", r"2\sqrt{2}")[0] is False
    assert _in_thread(is_equivalent, r"\sqrt{8}", r"2\sqrt{2}")[0] is True


def test_threads_grading_at_once_get_the_right_answers() -> None:
    cases = [
        (r"\boxed{\sqrt{18}}", r"3\sqrt{2}", True),
        (r"\boxed{x^2+1}", "x^3", False),
        ("The answer is 2,125.", "2,125", True),
        (r"\boxed{(1,2)}", "(2,1)", False),
        (r"\boxed{\frac{\pi}{2}}", r"\frac{1}{2}\pi", True),
        (r"\boxed{1 - \sqrt{19}, 1 + \sqrt{19}}", r"1 \pm \sqrt{19}", True),
    ]
    results: dict[tuple[int, int], bool] = {}

    def run(worker: int) -> None:
        for index, (response, gold, _) in enumerate(cases):
            results[worker, index] = grade(response, gold)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert results == {(worker, index): case[2] for worker in range(4) for index, case in enumerate(cases)}


def _grade_in_a_thread_of_a_child(queue) -> None:
    queue.put(_in_thread(grade, r"\boxed{\sqrt{18}}", r"3\sqrt{2}")[0])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_starts_its_own_helper() -> None:
    assert _in_thread(is_equivalent, r"\sqrt{8}", r"2\sqrt{2}")[0] is True  # the parent's helper is running
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_grade_in_a_thread_of_a_child, args=(queue,))
    child.start()
    verdict = queue.get(timeout=180)
    child.join(timeout=30)
    assert verdict is True
    assert child.exitcode == 0


def test_importing_the_grader_imports_neither_torch_nor_sympy() -> None:
    """Reward processes and the grader's helper process import only this: no torch (through the recipe
    schema) and no sympy until a symbolic comparison needs it."""
    code = ("import sys, rlvr.rewards.grading, reward_fns.math_answer as m; "
            "assert m.reward('so \\\\boxed{025}', '25')['score'] == 1.0; "
            "assert 'torch' not in sys.modules and 'sympy' not in sys.modules, "
            "[k for k in ('torch', 'sympy') if k in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=REPO)
