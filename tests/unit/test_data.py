"""The tiny task's splits, the prompt stream's order and checkpointable position, and how dataset rows
become prompts: nested keys, GSM8K answers, chat-message prompts, bad rows, dataset specs in a recipe."""

import json
import random

import pytest

from rlvr.config import RecipeError, build_recipe, dump_recipe
from rlvr.data.prompts import Prompt, PromptStream, load_prompts, render
from rlvr.data.sources import DatasetSpec
from tests.unit.test_eval_runner import _ChatTokenizer  # 'role: content' lines, text as code points
from rlvr.data.tasks import arithmetic
from rlvr.rewards.grading import grade


def test_heldout_split_is_fixed_large_and_disjoint_from_train():
    heldout = arithmetic.problems("heldout", arithmetic.HELDOUT_SIZE)
    assert len(heldout) >= 500 and len({p.problem for p in heldout}) == len(heldout)
    assert heldout == arithmetic.problems("heldout", arithmetic.HELDOUT_SIZE, seed=99)  # seed-independent
    train = {p.problem for p in arithmetic.problems("train", 20000, seed=0)}
    assert not train & {p.problem for p in heldout}


@pytest.mark.parametrize("split, seed", [("train", 0), ("train", 7), ("heldout", 0)])
def test_table_draws_equal_the_one_by_one_draws(split, seed):
    """``problems`` reads a precomputed table with ``_randbelow``; ``_draw``'s public ``choice``/``randint``
    calls must give the same problems, so the splits (and every figure measured on them) do not move."""
    rng = random.Random(f"rlvr-arithmetic-{split}-{seed}")
    count = 3000 if split == "train" else arithmetic.HELDOUT_SIZE  # about 1,060 distinct held-out expressions exist
    expected, seen = [], set()
    while len(expected) < count:
        expression, answer = arithmetic._draw(rng)
        repeat = split == "heldout" and expression in seen  # train may repeat a problem; held-out never
        if arithmetic._is_heldout(expression) == (split == "heldout") and not repeat:
            expected.append(expression)
            seen.add(expression)
    problems = arithmetic.problems(split, count, seed=seed)
    assert [p.problem for p in problems] == expected
    assert all(eval(p.problem.rstrip("=")) == int(p.answer) for p in problems)


def test_answers_are_right_and_graded_by_the_math_grader():
    for p in arithmetic.problems("heldout", 50):
        assert eval(p.problem.rstrip("=")) == int(p.answer)
        assert grade(p.answer, p.answer)
        assert not grade(str(int(p.answer) + 1), p.answer)


def test_stream_replays_from_a_saved_position():
    prompts = load_prompts("tiny:train", limit=50)
    a = PromptStream(prompts, batch_size=8, seed=3)
    for _ in range(4):
        a.next_batch()
    state = a.state_dict()
    expected = [[p.id for p in a.next_batch()] for _ in range(6)]  # crosses an epoch boundary
    b = PromptStream(prompts, batch_size=8, seed=3)
    b.load_state_dict(state)
    assert [[p.id for p in b.next_batch()] for _ in range(6)] == expected
    epoch_ids = [p.id for _ in range(6) for p in PromptStream(prompts, 8, seed=3).next_batch()]
    assert len(set(epoch_ids[:8])) == 8


def test_jsonl_source_and_missing_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2", "level": 1}) + "\n")
    (prompt,) = load_prompts(str(path))
    assert (prompt.id, prompt.problem, prompt.answer, prompt.fields) == ("a", "1+1?", "2", {"level": 1})
    with pytest.raises(ValueError, match="has no field 'question'"):
        load_prompts(str(path), problem_key="question")
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.jsonl"))


def test_shared_math500_loads():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"the shared data sets are not beside this checkout ({SHARED_DATA})")
    prompts = load_prompts(str(SHARED_DATA / "math500.jsonl"))
    assert len(prompts) == 500 and prompts[0].id == "test/precalculus/807.json"
    assert "subject" in prompts[0].fields


def test_verl_style_rows_with_nested_answers_and_hint_columns(tmp_path):
    # The shape of Scaf-GRPO's data: raw question, gold answer inside reward_model, hint lists beside them.
    row = {"question": "What is 2+3?", "reward_model": {"ground_truth": "5", "style": "rule"},
           "knowledge_components_parts": ["addition", "counting on"], "prompt": [{"role": "user", "content": "x"}]}
    path = tmp_path / "scaf.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [prompt] = load_prompts(str(path), "question", "reward_model.ground_truth")
    assert (prompt.problem, prompt.answer) == ("What is 2+3?", "5")
    assert prompt.fields["knowledge_components_parts"] == ["addition", "counting on"]
    with pytest.raises(ValueError, match="no field 'reward_model.answer'.*dotted key"):
        load_prompts(str(path), "question", "reward_model.answer")


def test_hint_ladder_levels_reveal_more_of_the_answer():
    ladder = arithmetic.hint_ladder("-52")
    assert ladder["knowledge"] == ["???", "-??", "-5?", "-52"]  # length, then from the leading character
    assert ladder["planning"] == ["??2", "?52", "-52", "-52"]  # from the ones digit
    assert ladder["solution"] == ["-52"] * 4
    for levels in ladder.values():
        revealed = [sum(c != "?" for c in level) for level in levels]
        assert revealed == sorted(revealed)  # cumulative
    # The warm start shows every pattern of the ladder (and nothing the ladder never shows).
    rng = random.Random(0)
    shown = {arithmetic.warmup_hint("-52", rng) for _ in range(500)}
    assert shown == {h for levels in ladder.values() for h in levels}


def test_gsm8k_answers_are_extracted_from_the_worked_solutions_of_every_row():
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "gsm8k_train.jsonl"
    if not path.exists():
        pytest.skip(f"the shared data sets are not beside this checkout ({SHARED_DATA})")
    with path.open() as f:  # not splitlines(): a problem holds a U+2028
        rows = [json.loads(line) for line in f]
    prompts = load_prompts(str(path), answer_key="solution", answer_format="gsm8k")
    assert len(prompts) == len(rows) == 7473
    assert [p.answer for p in prompts] == [row["answer"] for row in rows]
    assert sum("," in p.answer for p in prompts) == 79  # thousands separators kept as written (data README)
    assert [p.problem for p in prompts] == [row["problem"] for row in rows]
    with pytest.raises(ValueError, match=r"line 1: 'answer' is not in the data.answer_format 'gsm8k': no '####"):
        load_prompts(str(path), limit=1, answer_format="gsm8k")  # 'answer' holds the bare number already


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _verl_row(problem, answer, messages=None):
    return {"data_source": "tiny", "prompt": messages or [{"role": "user", "content": problem}],
            "reward_model": {"style": "rule", "ground_truth": answer}, "extra_info": {"index": 0}}


def test_chat_message_prompts_keep_their_messages_and_the_last_user_text(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2="}]
    path = _write_jsonl(tmp_path / "verl.jsonl", [_verl_row("", "4", messages)])
    [prompt] = load_prompts(path, "prompt", "reward_model.ground_truth")
    assert (prompt.problem, prompt.answer, prompt.messages) == ("2+2=", "4", messages)
    assert prompt.fields["data_source"] == "tiny" and "prompt" not in prompt.fields
    hinted = prompt.with_problem("hint|2+2=")  # Scaf-GRPO's hinted variant rewrites the last user message
    assert hinted.problem == "hint|2+2=" and hinted.messages[-1]["content"] == "hint|2+2="
    assert prompt.messages[-1]["content"] == "2+2="  # the original is untouched


@pytest.mark.parametrize(("template", "system", "expected"), [
    ("plain", False, "user: 2+2=\nassistant: "),  # messages go through the chat template as they are
    ("chat", False, "user: 2+2=\nassistant: "),
    ("qwen-boxed", False, "system: {i}\nuser: 2+2=\nassistant: "),
    ("qwen-boxed", True, "system: Be brief.\nuser: 2+2=\nassistant: "),  # never a second system prompt
    ("r1", False, "user: 2+2=\n{i}\nassistant: "),
    ("Q: {problem}", False, "user: Q: 2+2=\nassistant: "),
])
def test_templates_shape_chat_prompts_without_doubling_them(template, system, expected):
    from rlvr.data.prompts import QWEN_BOXED_SYSTEM

    messages = [{"role": "system", "content": "Be brief."}] * system + [{"role": "user", "content": "2+2="}]
    prompt = Prompt("x", "2+2=", "4", messages=messages)
    text = "".join(chr(i) for i in render(prompt, template, _ChatTokenizer()))
    assert text == expected.replace("{i}", QWEN_BOXED_SYSTEM)
    r1 = Prompt("x", "2+2=", "4", messages=[{"role": "user", "content": f"2+2=\n{QWEN_BOXED_SYSTEM}"}])
    assert "".join(chr(i) for i in render(r1, "r1", _ChatTokenizer())).count(QWEN_BOXED_SYSTEM) == 1
    plain = _ChatTokenizer()
    plain.chat_template = None
    with pytest.raises(ValueError, match="prompt 'x' is chat messages, which need the model's chat template"):
        render(prompt, template, plain)


@pytest.mark.parametrize(("row", "keys", "message"), [
    ({"problem": "1+1=", "answer": None}, (), r"line 2: 'answer' is null \(data.answer_key\)"),
    ({"question": "1+1=", "answer": "2"}, (), r"line 2 has no field 'problem'; its fields are \['answer', 'question'\]"),
    ({"problem": "  ", "answer": "2"}, (), r"line 2: 'problem' is empty"),
    (_verl_row("", "2", [{"role": "user"}]), ("prompt", "reward_model.ground_truth"),
     r"line 2: 'prompt' is a list, so it must be chat messages: a non-empty list of \{role, content\}"),
    (_verl_row("", "2", [{"role": "system", "content": "hi"}]), ("prompt", "reward_model.ground_truth"),
     r"line 2: 'prompt' has no user message \(roles: \['system'\]\)"),
    ({"problem": {"text": "1+1="}, "answer": "2"}, (),
     r"line 2: 'problem' is a mapping, not text .* a dotted key reads a field inside it \(its keys: \['text'\]\)"),
])
def test_bad_rows_name_the_source_the_row_and_what_is_wrong(tmp_path, row, keys, message):
    good = _verl_row("1+1=", "2") | {"problem": "1+1=", "answer": "2"}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(ValueError, match=f"dataset '{path}' " + message):
        load_prompts(path, *keys)


def test_dataset_specs_in_a_recipe_are_validated_at_load_and_round_trip():
    spec = {"path": "parquet", "data_files": "train.parquet", "split": "train"}
    recipe = build_recipe({"data": {"train": spec, "heldout": "tiny:heldout"}})
    assert recipe.data.train == DatasetSpec(path="parquet", data_files="train.parquet", split="train")
    assert str(recipe.data.train) == "{path: parquet, split: train, data_files: train.parquet}"
    assert build_recipe({}, ["data.heldout={path: openai/gsm8k, name: main, split: test}"]).data.heldout.name == "main"
    import yaml

    assert build_recipe(yaml.safe_load(dump_recipe(recipe))).data == recipe.data
    for value, message in [
        ({"path": "parquet", "data_file": "x"}, "data.train: dataset spec .* unknown key 'data_file'; a spec has "
                                                "the keys path, name, split, data_files"),
        ({"split": "train"}, "data.train: dataset spec .* 'path' is missing"),
        ([1], "data.train: a source is a string"),
    ]:
        with pytest.raises(RecipeError, match=message):
            build_recipe({"data": {"train": value}})
    with pytest.raises(RecipeError, match="data.answer_format: Input should be 'raw' or 'gsm8k'"):
        build_recipe({}, ["data.answer_format=boxed"])


def test_a_missing_package_is_named_with_what_to_install(tmp_path, monkeypatch):
    import builtins

    import datasets

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "__import__", no_datasets)
        with pytest.raises(ValueError, match=r"reading dataset \{path: parquet.*needs the 'datasets' package: pip"):
            load_prompts({"path": "parquet", "data_files": "x.parquet"})

    def missing_codec(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'zstandard'", name="zstandard")

    monkeypatch.setattr(datasets, "load_dataset", missing_codec)
    with pytest.raises(ValueError, match="needs the package 'zstandard', which is not installed: pip install zsta"):
        load_prompts({"path": "json", "data_files": "x.jsonl.zst"})


def test_an_unreadable_spec_names_itself(tmp_path):
    with pytest.raises(ValueError, match=r"could not read dataset \{path: parquet, data_files: .*nope.parquet\}"):
        load_prompts({"path": "parquet", "data_files": str(tmp_path / "nope.parquet")})
    with pytest.raises(ValueError, match=r"could not read dataset \{path: rlvr-tests/no-such-dataset, split: test\}"):
        load_prompts("rlvr-tests/no-such-dataset:test")  # offline or not, on no machine's cache


def test_spec_mistakes_name_the_spec_and_the_fix(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    table = datasets.Dataset.from_list([{"problem": "1+1=", "answer": "2"}, {"problem": "", "answer": "3"}])
    table.save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(tmp_path / "two")
    table.to_json(tmp_path / "rows.jsonl")
    with pytest.raises(ValueError, match=r"dataset \{path: .*one, split: train\}: the saved dataset is one table "
                                         r"\(split None\), not a DatasetDict with a 'train' split; leave split out"):
        load_prompts({"path": str(tmp_path / "one"), "split": "train"})
    with pytest.raises(ValueError, match="was written by save_to_disk, so name and data_files do not apply"):
        load_prompts({"path": str(tmp_path / "one"), "name": "main"})
    with pytest.raises(ValueError, match=r"dataset \{path: .*two, split: dev\} has no split 'dev'; its splits are "
                                         "train, test"):
        load_prompts({"path": str(tmp_path / "two"), "split": "dev"})
    with pytest.raises(ValueError, match=r"^dataset \{path: json, data_files: .*rows.jsonl\} row 1: 'problem' is empty"):
        load_prompts({"path": "json", "data_files": str(tmp_path / "rows.jsonl")})
    assert [p.id for p in load_prompts({"path": str(tmp_path / "two"), "split": "test"}, limit=1)] == ["two-0"]


GOOD_LINE = '{"id": "a", "problem": "1+1=", "answer": "2"}\n'


def test_a_file_that_is_not_json_names_the_file_and_the_physical_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(GOOD_LINE + "\n" + '{"id": "b", "problem": "2+2=",, "answer": "4"}\n')  # a blank line 2
    with pytest.raises(ValueError, match=f"^dataset file '{path}' line 3 column 31 is not JSON: Expecting property"):
        load_prompts(str(path))
    path.write_text(GOOD_LINE + '["b", "2+2=", "4"]\n')
    with pytest.raises(ValueError, match=r"line 2 is not a JSON object: each record is one .* \(got \[\"b\""):
        load_prompts(str(path))
    array = tmp_path / "d.json"
    array.write_text('[\n  {"id": "a", "problem": "1+1=", "answer": "2"},\n  {"id": "b",}\n]\n')
    with pytest.raises(ValueError, match=f"^dataset file '{array}' line 3 column 14 is not JSON"):
        load_prompts(str(array))
    array.write_text('[{"id": "a", "problem": "1+1=", "answer": "2"}, {"id": "b", "problem": " ", "answer": "4"}]')
    with pytest.raises(ValueError, match=f"^dataset '{array}' record 1: 'problem' is empty"):
        load_prompts(str(array))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_byte_order_mark_is_read_as_utf8_and_latin1_bytes_are_named_with_line_and_offset(tmp_path, suffix):
    rows = [{"id": "a", "problem": "1+1=", "answer": "2"}, {"id": "b", "problem": "café: 2+2=", "answer": "4"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if suffix == ".json":
        text = "[" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "]"
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # "UTF-8 with BOM", as Windows editors save it
    assert [p.problem for p in load_prompts(str(path))] == ["1+1=", "café: 2+2="]
    latin1 = text.encode("latin-1")
    path.write_bytes(latin1)
    offset = latin1.index(b"\xe9")
    with pytest.raises(ValueError, match=f"^dataset file '{path}' line 2 \\(byte offset {offset}\\) is not UTF-8: "
                                         "byte 0xe9 .* The file must be UTF-8; .* iconv -f latin1 -t utf-8"):
        load_prompts(str(path))


def test_a_null_field_is_not_called_missing(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "1+1=", "answer": "2"},
                                                {"id": "b", "problem": "2+2=", "answer": None}])
    with pytest.raises(ValueError, match=f"^dataset '{path}' line 2: 'answer' is null \\(data.answer_key\\)"):
        load_prompts(path)
    with pytest.raises(ValueError, match=r"line 1 has no field 'solution'; its fields are \['answer', 'id', 'problem'\]"):
        load_prompts(path, answer_key="solution")
    # A null record on the way to a nested field: null, not missing (verl rows whose reward_model is null).
    verl = _write_jsonl(tmp_path / "verl.jsonl", [_verl_row("1+1=", "2"), _verl_row("2+2=", "4") | {"reward_model": None}])
    with pytest.raises(ValueError, match=r"line 2: 'reward_model.ground_truth' is null"):
        load_prompts(verl, "prompt", "reward_model.ground_truth")
    with pytest.raises(ValueError, match=r"line 1 has no field 'reward_model.answer'; .* 'reward_model' has "
                                         r"\['ground_truth', 'style'\]"):
        load_prompts(verl, "prompt", "reward_model.answer")


def test_empty_problems_and_repeated_ids_stop_the_load_or_are_left_out_and_counted(tmp_path, caplog):
    rows = [{"id": "a", "problem": "1+1=", "answer": "2"}, {"id": "b", "problem": " \n", "answer": "0"},
            {"id": "c", "problem": "2+2=", "answer": "4"}, {"id": "a", "problem": "3+3=", "answer": "6"},
            {"id": "d", "problem": "4+4=", "answer": "8"}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=r"line 2: 'problem' is empty; set data.on_bad_rows: skip"):
        load_prompts(path)
    del rows[1]
    unique_but_repeated = _write_jsonl(tmp_path / "r.jsonl", rows)
    with pytest.raises(ValueError, match=r"line 3: id 'a' is the id of line 1 too; ids must be unique"):
        load_prompts(unique_but_repeated)
    with caplog.at_level("WARNING", logger="rlvr"):
        kept = load_prompts(path, on_bad_rows="skip")
    assert [p.id for p in kept] == ["a", "c", "d"] and kept[0].problem == "1+1="  # the first of a repeated id
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "left out 2 bad rows" in warning.message and "kept 3 prompts" in warning.message
    assert "line 2: 'problem' is empty" in warning.message and "line 4: id 'a'" in warning.message
    assert [p.id for p in load_prompts(path, limit=2, on_bad_rows="skip")] == ["a", "c"]  # limit counts kept prompts
    with pytest.raises(ValueError, match="on_bad_rows 'ignore' is unknown; use one of error, skip"):
        load_prompts(path, on_bad_rows="ignore")
    blank = _write_jsonl(tmp_path / "blank.jsonl", [{"id": "a", "problem": "", "answer": "1"}])
    with pytest.raises(ValueError, match=r"every row of dataset .* is bad \(1 rows\); the first: line 1"):
        load_prompts(blank, on_bad_rows="skip")


def test_parquet_rows_are_named_by_their_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "problem": "1+1=", "answer": "2"},
                                         {"id": "b", "problem": "2+2=", "answer": None}]), path)
    with pytest.raises(ValueError, match=f"^dataset '{path}' row 1: 'answer' is null"):
        load_prompts(str(path))
    path.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=f"could not read the parquet file '{path}'"):
        load_prompts(str(path))
