"""Finding the final answer in a model response: the last box, else the text after an answer phrase, else a
bare one-line reply.

Only extraction lives here; what the extracted answer is compared with, and how, is :mod:`.equivalence`'s.
"""

from __future__ import annotations

import re

# A one-line response no longer than this, with no box, no "answer is" phrase and no prose (three plain words
# in a row), is taken as a bare answer ("47", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"); grading prose
# whole would reward noise.
BARE_ANSWER_MAX_CHARS = 200

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Boxes tried from the end of a response (each unclosed one costs a scan to the end, so the search is capped).
_MAX_BOXES_TRIED = 16
_ANSWER_PHRASE = re.compile(r"final answer is|the answer is|final answer|answer:", re.IGNORECASE)


def extract_answer(response: str) -> str | None:
    """The final answer in a model response, or None when there is none.

    In order: the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (braces matched; a box cut
    off by the token limit is skipped; ``\\boxed 2`` is read too), joined with the boxes just before it when
    only "and", "or", commas or ``x =`` separate them (``x = \\boxed{1} or x = \\boxed{2}`` gives ``1, 2``);
    else the text after the last "the answer is" / "final answer (is)" / "answer:" (case-insensitive): the
    ``$...$`` span that starts it, or its first sentence up to a clause like ", since", taken after its last
    " is " when the phrase had none ("Final Answer: The volume is 120" gives ``120``); else the whole
    response when it is one line of at most ``BARE_ANSWER_MAX_CHARS`` characters without prose (its last
    ``$...$`` span if it has one). Phrase and bare answers are trimmed of ``$`` signs, markdown ``**`` and a
    trailing period. An empty last box gives None: the model's final answer is empty.
    """
    boxes = _final_boxes(response)
    if boxes:
        return ", ".join(box.strip() for box in boxes) if all(box.strip() for box in boxes) else None
    phrase = _answer_after_phrase(response)
    if phrase:
        return phrase
    return _bare_answer(response.strip())


def _bare_answer(text: str) -> str | None:
    """A one-line response as the answer: its last ``$...$`` span if it has one, else all of it unless prose."""
    if len(text) > BARE_ANSWER_MAX_CHARS or "\n" in text:
        return None
    spans = re.findall(r"(?<!\\)\$([^$]+)(?<!\\)\$", text)
    if spans:
        return _clean_inline_answer(spans[-1]) or None
    return None if _PROSE.search(text) else _clean_inline_answer(text) or None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or None.

    Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box whose closing brace
    never comes (a truncated generation) is skipped in favour of the one before it.
    """
    for _start, _end, content in _boxes_from_end(text):
        return content
    return None


def _boxes_from_end(text: str):
    """``(start, end, content)`` of each complete box, last first; at most ``_MAX_BOXES_TRIED`` are looked at."""
    end = len(text)
    for _ in range(_MAX_BOXES_TRIED):
        start = max(text.rfind(command, 0, end) for command in _BOX_COMMANDS)
        if start < 0:
            return
        command = next(command for command in _BOX_COMMANDS if text.startswith(command, start))
        braced = _braced_argument(text, start + len(command)) or _bare_argument(text, start + len(command))
        if braced is not None:
            content, close = braced
            yield start, close + 1, content
        end = start


def _braced_argument(text: str, position: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``position`` (after spaces) and its closing index."""
    while position < len(text) and text[position] == " ":
        position += 1
    if position >= len(text) or text[position] != "{":
        return None
    depth = 0
    for index in range(position, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1 : index], index
    return None


_BARE_ARGUMENT = re.compile(r" +([^\s${}]+)")


def _bare_argument(text: str, position: int) -> tuple[str, int] | None:
    """``\\boxed 2``: the token after the command and a space (up to a space or ``$``), and its last index."""
    match = _BARE_ARGUMENT.match(text, position)
    return (match.group(1), match.end() - 1) if match else None


# What may separate two boxes that together give the final answer: "\boxed{1} and x = \boxed{2}".
_BOX_GAP = re.compile(r"\s*(?:,|;|and|or|,\s*and|,\s*or)?\s*(?:[A-Za-z](?:_\d)?\s*=)?\s*")
_BOX_GAP_MAX_CHARS = 40


def _final_boxes(text: str) -> list[str]:
    """The last complete box and those joined to it by a short separator, in reading order, duplicates dropped."""
    boxes: list[str] = []
    next_start = None
    for start, end, content in _boxes_from_end(text):
        if next_start is not None:
            if next_start - end > 2 * _BOX_GAP_MAX_CHARS:
                break
            gap = re.sub(r"\\text\{([^{}]*)\}|\$|\\quad|\\[,;]", r" \1 ", text[end:next_start])
            if len(gap) > _BOX_GAP_MAX_CHARS or not _BOX_GAP.fullmatch(gap):
                break
        if not boxes or boxes[0].strip() != content.strip():
            boxes.insert(0, content)
        next_start = start
    return boxes


_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# Where an inline answer's sentence goes on after the answer: "5, since ...", "12 because ...".
_CLAUSE = re.compile(
    r",?\s+(?:since|because|as|which|so|for|from|by|when|where|given|using|but)\s|,\s+(?=[A-Za-z]{3,})"
)
# Three plain words in a row (not LaTeX commands): a sentence, not an answer.
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}[,;:]? [A-Za-z]{2,}[,;:]? [A-Za-z]{2,}")


def _answer_after_phrase(response: str) -> str | None:
    """The answer after the last answer phrase: a leading math span, else its first line up to a full stop."""
    phrases = list(_ANSWER_PHRASE.finditer(response))
    if not phrases:
        return None
    rest = response[phrases[-1].end() :].lstrip(" \t:*\n")
    span = _leading_math_span(rest)
    if span is not None:
        return span
    sentence = re.split(r"\.(?:\s|$)", rest.split("\n", 1)[0], maxsplit=1)[0]
    if not phrases[-1].group(0).lower().endswith("is") and " is " in sentence:  # "Final Answer: The sum is 12"
        sentence = sentence.rsplit(" is ", 1)[1].lstrip()
        span = _leading_math_span(sentence)
        if span is not None:
            return span
    return _clean_inline_answer(_CLAUSE.split(sentence, maxsplit=1)[0]) or None


def _leading_math_span(text: str) -> str | None:
    """The cleaned content of the ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` span that starts ``text``, or None."""
    for opening, closing in _MATH_SPANS:
        if text.startswith(opening):
            close = text.find(closing, len(opening))
            if close > 0:
                return _clean_inline_answer(text[len(opening) : close]) or None
    return None


def _clean_inline_answer(text: str) -> str:
    """Trim the decorations around an answer written inline: spaces, ``$``, ``**``, a final period."""
    text = text.strip().rstrip(".").strip().strip("*").strip()
    for opening, closing in _MATH_SPANS:
        if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
            text = text[len(opening) : len(text) - len(closing)]
    return re.sub(r"(?<!\\)\$", "", text).strip().rstrip(".").strip()
