"""Answer extraction and equivalence: the cases the math benchmarks and the tiny task actually contain."""

from __future__ import annotations

import threading

import pytest

from rlvr.rewards.grading import extract_answer, grade, is_equivalent, normalize


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
        ("0.333333", r"\frac{1}{3}"),  # math-verify compares decimals at 6 places
        ("90", r"90^\circ"),
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
    ],
)
def test_wrong_answers_are_not_equivalent(answer: str, gold: str) -> None:
    assert not is_equivalent(answer, gold)
    assert not grade(rf"The result is \boxed{{{answer}}}.", gold)


def test_grade_without_an_answer_is_wrong() -> None:
    assert not grade("I could not solve this problem, although I tried several approaches at length.", "5")


def test_grade_in_a_thread_uses_math_verify_without_signals() -> None:
    # Outside the main thread math-verify's signal.alarm timeouts raise; grade must switch them off.
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
    thread.join(timeout=60)
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
