"""Partial-response scorers: the arithmetic oracle's rules, the user contract, and both Hugging Face PRMs
computing exactly the manual softmax at the right token on tiny random models saved and loaded from disk."""

from __future__ import annotations

import pytest
import torch

from rlvr.data.prompts import QWEN_BOXED_SYSTEM
from rlvr.models.tiny import build_tokenizer
from rlvr.rollout.prm import (
    ArithmeticProgressScorer,
    FunctionScorer,
    MathShepherdPRM,
    QwenPRM,
    load_scorer,
)


def length_score(prompt: str, partial_response: str) -> float:
    """A user scorer (loaded by spec in a test below): longer partial responses are better."""
    return float(len(partial_response))


def not_a_number(prompt: str, partial_response: str):
    return "high"


@pytest.mark.parametrize("prompt, partial, score", [
    ("47+38=", "", 0.75),
    ("47+38=", "8", 0.75),
    ("47+38=", "85", 1.0),
    ("47+38=", " 85", 1.0),  # leading whitespace is ignored
    ("47+38=", "85 3*1", 0.5),  # the answer, then rambling
    ("47+38=", "85 ", 0.5),
    ("47+38=", "850", 0.5),
    ("47+38=", "84", 0.25),  # one of two characters right
    ("47+38=", "9", 0.0),
    ("10-62=", "-5", 0.75),
    ("10-62=", "-53", 0.5 * 2 / 3),
    ("7*89=", "623", 1.0),
    ("Q: 7*89=", "62", 0.75),  # the last expression of a longer prompt
])
def test_arithmetic_progress_scores(prompt, partial, score):
    assert ArithmeticProgressScorer()([prompt], [partial]) == [pytest.approx(score)]


def test_arithmetic_scorer_ranks_a_right_answer_above_rambling_above_a_wrong_one():
    scores = ArithmeticProgressScorer()(["12+13="] * 4, ["25", "2", "25 7", "24"])
    assert scores[0] > scores[1] > scores[2] > scores[3]
    with pytest.raises(ValueError, match="no arithmetic expression"):
        ArithmeticProgressScorer()(["What is two plus two?"], ["4"])


def test_load_scorer_specs_and_errors():
    assert isinstance(load_scorer("arithmetic"), ArithmeticProgressScorer)
    user = load_scorer("tests.unit.test_prm:length_score")
    assert isinstance(user, FunctionScorer) and user(["a", "b"], ["xy", "xyz"]) == [2.0, 3.0]
    with pytest.raises(TypeError, match="must return a number"):
        load_scorer("tests.unit.test_prm:not_a_number")(["p"], ["x"])
    with pytest.raises(ValueError, match=r"'best-prm' is unknown.*arithmetic.*qwen-prm:PATH"):
        load_scorer("best-prm")
    with pytest.raises(ValueError, match="names no checkpoint"):
        load_scorer("math-shepherd:")
    with pytest.raises(ValueError, match="has no attribute 'missing'.*scorer specs"):
        load_scorer("tests.unit.test_prm:missing")
    with pytest.raises(ValueError, match="takes no options"):
        load_scorer("arithmetic", batch_size=4)


def _llama_config(vocab_size: int, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0,
                       bos_token_id=None, eos_token_id=1, **extra)


PAIRS = [("1+1=", "2"), ("3*4=", "first 12\n\nthen 12\n\n"), ("9-2=", "step one\n\nstep two\n\nseven")]


def test_math_shepherd_prm_is_the_softmax_of_plus_minus_at_the_last_step_tag(tmp_path):
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["ки"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(len(tokenizer))).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    prm = MathShepherdPRM.from_pretrained(str(tmp_path), batch_size=2)  # 3 pairs: a padded batch and a single
    scores = prm([p for p, _ in PAIRS], [r for _, r in PAIRS])
    # The Math-Shepherd input: "{prompt} {step} ки\n{step} ки", the last step's tag read.
    expected_texts = ["1+1= 2 ки", "3*4= first 12 ки\nthen 12 ки", "9-2= step one ки\nstep two ки\nseven ки"]
    assert [prm.text(p, r) for p, r in PAIRS] == expected_texts
    plus, minus = tokenizer.convert_tokens_to_ids(["+", "-"])
    tag = tokenizer.convert_tokens_to_ids("ки")
    for text, score in zip(expected_texts, scores):
        ids = tokenizer(text).input_ids
        position = len(ids) - 1  # every expected text ends with its last tag
        assert ids[position] == tag
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, position]
        manual = torch.softmax(logits[[plus, minus]], -1)[0].item()
        assert score == pytest.approx(manual, abs=1e-6)
    assert len(set(scores)) == 3  # different inputs, different scores: the test can tell positions apart


def test_qwen_prm_is_class_one_at_the_last_separator(tmp_path):
    from transformers import LlamaForTokenClassification

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(0)
    model = LlamaForTokenClassification(_llama_config(len(tokenizer), num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    prm = QwenPRM.from_pretrained(str(tmp_path), batch_size=2)
    scores = prm([p for p, _ in PAIRS], [r for _, r in PAIRS])
    # The tiny chat template concatenates the messages: system, user, then the steps each closed by <extra_0>.
    expected_texts = [QWEN_BOXED_SYSTEM + "1+1=" + "2<extra_0>",
                      QWEN_BOXED_SYSTEM + "3*4=" + "first 12<extra_0>then 12<extra_0>",
                      QWEN_BOXED_SYSTEM + "9-2=" + "step one<extra_0>step two<extra_0>seven<extra_0>"]
    assert [prm.text(p, r) for p, r in PAIRS] == expected_texts
    separator = tokenizer.convert_tokens_to_ids("<extra_0>")
    for text, score in zip(expected_texts, scores):
        ids = tokenizer.encode(text)
        assert ids[-1] == separator and ids.count(separator) == text.count("<extra_0>")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]))[0][0, -1]
        assert score == pytest.approx(torch.softmax(logits, -1)[1].item(), abs=1e-6)
    assert len(set(scores)) == 3


def test_qwen_prm_refuses_remote_code_it_was_not_allowed_to_run(tmp_path):
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    LlamaForCausalLM(_llama_config(len(tokenizer))).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        QwenPRM.from_pretrained(str(tmp_path))
