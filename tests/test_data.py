"""Data formats: loading from every file type, row-level errors, and loss masking token by token."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stagewise.config import DatasetConfig
from stagewise.data import encode_dataset, load_dataset_config
from stagewise.data.tokenize import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT, IGNORE_INDEX
from stagewise.errors import DataError
from stagewise.models import byte_tokenizer

TOK = byte_tokenizer()
BOS, EOS = TOK.bos_token_id, TOK.eos_token_id


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def masked(text: str) -> list[int]:
    return [IGNORE_INDEX] * len(ids(text))


def test_byte_tokenizer_is_one_token_per_byte():
    assert len(ids("hello")) == 5 and TOK.decode(ids("héllo")) == "héllo"


def test_text_format_trains_on_every_token():
    [example] = encode_dataset([{"text": "abc"}], "text", TOK)
    assert example["input_ids"] == [BOS] + ids("abc") + [EOS]
    assert example["labels"] == [IGNORE_INDEX] + ids("abc") + [EOS]


def test_prompt_completion_masks_the_prompt():
    [example] = encode_dataset([{"prompt": "Q: 2+2? A:", "completion": " 4"}], "prompt_completion", TOK)
    assert example["input_ids"] == [BOS] + ids("Q: 2+2? A:") + ids(" 4") + [EOS]
    assert example["labels"] == [IGNORE_INDEX] + masked("Q: 2+2? A:") + ids(" 4") + [EOS]


def test_alpaca_instruction_masks_prompt_unless_train_on_prompt():
    row = {"instruction": "count", "input": "to three", "output": "1 2 3"}
    prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction="count", input="to three")
    [example] = encode_dataset([row], "instruction", TOK, template="alpaca")
    assert example["input_ids"] == [BOS] + ids(prompt) + ids("1 2 3") + [EOS]
    assert example["labels"] == [IGNORE_INDEX] + masked(prompt) + ids("1 2 3") + [EOS]
    [unmasked] = encode_dataset([row], "instruction", TOK, template="alpaca", train_on_prompt=True)
    assert unmasked["labels"] == [IGNORE_INDEX] + ids(prompt) + ids("1 2 3") + [EOS]
    [plain] = encode_dataset([{"instruction": "hi", "output": "yo"}], "instruction", TOK, template="alpaca")
    assert plain["input_ids"][1:-3] == ids(ALPACA_PROMPT.format(instruction="hi"))


def test_chat_format_trains_only_on_assistant_turns():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    [example] = encode_dataset([{"messages": messages}], "chat", TOK)
    context1 = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    answer1 = "hello<|im_end|>\n"
    context2 = "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
    answer2 = "ciao<|im_end|>\n"
    assert TOK.decode(example["input_ids"]) == context1 + answer1 + context2 + answer2
    expected = masked(context1) + ids(answer1) + masked(context2) + ids(answer2)
    assert example["labels"] == expected


def test_instruction_uses_chat_template_when_available():
    [example] = encode_dataset([{"instruction": "hi", "output": "yo"}], "instruction", TOK)
    context = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert example["labels"] == masked(context) + ids("yo<|im_end|>\n")


def test_classification_maps_labels_to_ids():
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    encoded = encode_dataset(rows, "classification", TOK, labels=["neg", "pos"])
    assert [e["labels"] for e in encoded] == [1, 0]
    assert encoded[0]["input_ids"] == [BOS] + ids("good")


def test_truncation_drops_rows_without_trainable_tokens():
    rows = [{"prompt": "x" * 50, "completion": "y"}, {"prompt": "a", "completion": "b"}]
    encoded = encode_dataset(rows, "prompt_completion", TOK, max_length=20)
    assert len(encoded) == 1 and len(encoded[0]["input_ids"]) == 4


# ------------------------------------------------------------------ files
ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]


def test_jsonl_csv_parquet_load_the_same_rows(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("instruction,output\n" + "".join(f"{r['instruction']},{r['output']}\n" for r in ROWS))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    for path in (jsonl, csv_path, parquet):
        loaded = load_dataset_config("d", DatasetConfig(format="instruction", path=str(path)))
        assert loaded.rows == ROWS, path


def test_split_slices_and_column_renames(tmp_path):
    cfg = DatasetConfig(format="instruction", rows=ROWS, split="train[:30%]")
    assert load_dataset_config("d", cfg).rows == ROWS[:3]
    cfg = DatasetConfig(format="instruction", rows=ROWS, split="train[-2:]")
    assert load_dataset_config("d", cfg).rows == ROWS[-2:]
    renamed = [{"question": "q", "answer": "a"}]
    cfg = DatasetConfig(format="instruction", rows=renamed, columns={"question": "instruction", "answer": "output"})
    assert load_dataset_config("d", cfg).rows == [{"instruction": "q", "output": "a"}]


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    first = load_dataset_config("d", DatasetConfig(format="instruction", path=str(path))).fingerprint
    path.write_text(json.dumps(ROWS[1]) + "\n")
    assert load_dataset_config("d", DatasetConfig(format="instruction", path=str(path))).fingerprint != first


@pytest.mark.parametrize(
    "content, fmt, expected",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "instruction",
         "d.jsonl line 2: field 'output' missing (format 'instruction' needs instruction, output)"),
        ('{"text": "a"}\n{"text": \n', "text", "d.jsonl line 2: invalid JSON"),
        ('', "text", "d.jsonl: dataset 'd' is empty"),
        ('["a"]\n', "text", "d.jsonl line 1: expected an object with fields, got list"),
        ('{"text": 3}\n', "text", "d.jsonl line 1: field 'text' must be text, got int"),
        ('{"messages": [{"role": "bot", "content": "x"}]}\n', "chat", "d.jsonl line 1: messages[0].role must be one of"),
        ('{"messages": [{"role": "user", "content": "x"}]}\n', "chat", "d.jsonl line 1: messages has no assistant turn"),
        ('{"text": "a", "label": [1]}\n', "classification", "d.jsonl line 1: field 'label' must be a string or integer"),
        ('{"prompt": "p", "chosen": "c"}\n', "preference", "d.jsonl line 1: field 'rejected' missing"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, content, fmt, expected):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_dataset_config("d", DatasetConfig(format=fmt, path=str(path)))
    assert str(info.value).startswith(f"{path.parent}/{expected}"), str(info.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="datasets.d.path: file .* not found"):
        load_dataset_config("d", DatasetConfig(format="text", path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="must end in one of .jsonl, .json, .csv, .parquet"):
        load_dataset_config("d", DatasetConfig(format="text", path=str(tmp_path / "d.txt")))
    (tmp_path / "bad.csv").write_text("text\na,b\n")
    with pytest.raises(DataError, match="bad.csv line 2: more values than header columns"):
        load_dataset_config("d", DatasetConfig(format="text", path=str(tmp_path / "bad.csv")))
