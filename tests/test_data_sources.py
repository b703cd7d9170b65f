"""Dataset sources beyond single files: Hugging Face datasets by name (through ``datasets.load_dataset``
and its cache, tested offline with its file builders), a glob of files, and a ``save_to_disk`` folder;
a source that cannot be read is one line naming the dataset."""
from __future__ import annotations

import json

import pytest
from conftest import make_recipe

from stagewise.config import DatasetConfig
from stagewise.data import load_dataset_config
from stagewise.errors import DataError, RecipeError

ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_hub_entry_loads_through_datasets_with_split_slice_and_data_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    cfg = DatasetConfig(format="instruction", hub="json", data_files=str(tmp_path / "train.jsonl"), split="train[:4]")
    loaded = load_dataset_config("d", cfg)
    assert [row["instruction"] for row in loaded.rows] == ["q0", "q1", "q2", "q3"]
    again = load_dataset_config("d", cfg)
    assert again.fingerprint == loaded.fingerprint  # stable across loads (the stage hash covers it)
    write_jsonl(tmp_path / "train.jsonl", ROWS[::-1])
    assert load_dataset_config("d", cfg).fingerprint != loaded.fingerprint  # new content, new fingerprint


def test_unreachable_hub_dataset_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = DatasetConfig(format="instruction", hub="nobody-here/no-such-dataset-xyz")
    with pytest.raises(DataError, match=r"^datasets\.d\.hub: could not fetch 'nobody-here/no-such-dataset-xyz'") as err:
        load_dataset_config("d", cfg)
    assert "\n" not in str(err.value)


def test_path_glob_reads_every_matching_file_in_order(tmp_path):
    write_jsonl(tmp_path / "part-1.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "part-2.jsonl", ROWS[2:3])
    (tmp_path / "part-3.csv").write_text("instruction,output\nq9,a9\n")
    loaded = load_dataset_config("d", DatasetConfig(format="instruction", path=str(tmp_path / "part-*")))
    assert [row["instruction"] for row in loaded.rows] == ["q0", "q1", "q2", "q9"]
    write_jsonl(tmp_path / "part-2.jsonl", [{"instruction": "q2"}])
    with pytest.raises(DataError, match=r"part-2\.jsonl line 1: field 'output' missing"):
        load_dataset_config("d", DatasetConfig(format="instruction", path=str(tmp_path / "part-*")))


def test_glob_matching_nothing_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"datasets\.d\.path: .*nothing-\*\.jsonl' matches no file"):
        load_dataset_config("d", DatasetConfig(format="instruction", path=str(tmp_path / "nothing-*.jsonl")))


def test_save_to_disk_folders_load_a_dataset_or_a_split_of_a_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": Dataset.from_list(ROWS[:2]), "test": Dataset.from_list(ROWS[2:])}).save_to_disk(
        str(tmp_path / "dict"))
    one = load_dataset_config("d", DatasetConfig(format="instruction", path=str(tmp_path / "one"), split="train[1:3]"))
    assert [row["instruction"] for row in one.rows] == ["q1", "q2"]
    test = load_dataset_config("d", DatasetConfig(format="instruction", path=str(tmp_path / "dict"), split="test"))
    assert [row["output"] for row in test.rows] == ["a2", "a3", "a4", "a5"]
    with pytest.raises(DataError, match="has splits train, test, not 'dev'"):
        load_dataset_config("d", DatasetConfig(format="instruction", path=str(tmp_path / "dict"), split="dev"))


def test_hub_only_keys_without_hub_are_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"datasets\.sft\.subset: 'subset' applies to a 'hub' dataset only"):
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}],
                    datasets={"sft": {"format": "instruction", "rows": ROWS, "subset": "x"}})


def test_hub_data_files_matching_nothing_is_one_line(tmp_path):
    cfg = DatasetConfig(format="instruction", hub="json", data_files=str(tmp_path / "none-*.jsonl"))
    with pytest.raises(DataError, match=r"^datasets\.d\.hub: could not fetch 'json'") as err:
        load_dataset_config("d", cfg)
    assert "\n" not in str(err.value)
