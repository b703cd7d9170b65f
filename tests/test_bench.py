"""Benchmark builders: deterministic by seed, fixed disjoint splits, real source text."""
from __future__ import annotations

import pytest

from stagewise import bench
from stagewise.bench import facts, icl_probes


@pytest.mark.parametrize("name", list(bench.BUILDERS))
def test_builders_are_deterministic_by_seed(name):
    first, again, other = bench.BUILDERS[name](seed=0), bench.BUILDERS[name](seed=0), bench.BUILDERS[name](seed=1)
    assert first == again
    assert first != other
    assert all(rows for rows in first.values())


def test_facts_phrasings_share_answers_and_known_splits_are_disjoint():
    splits = facts.build(seed=0, people=10)
    assert len(splits["train"]) == len(splits["test"]) == 30
    for train, test in zip(splits["train"], splits["test"]):
        assert train["output"] == test["output"] and train["entity"] == test["entity"]
        assert train["instruction"] != test["instruction"]
    dev = {row["instruction"] for row in splits["known_dev"]}
    assert not dev & {row["instruction"] for row in splits["known_test"]}


def test_sentiment_is_imbalanced_in_train_and_balanced_in_test():
    splits = bench.BUILDERS["sentiment"](seed=0, imbalance=10, minority_train=20)
    train = [row["label"] for row in splits["train"]]
    assert train.count("negative") == 20 and train.count("positive") == 200
    test = [row["label"] for row in splits["test"]]
    assert test.count("negative") == test.count("positive")
    texts = {row["text"] for row in splits["train"]}
    assert not texts & {row["text"] for row in splits["test"]}


def test_math_has_real_gsm8k_items_with_integer_answers():
    splits = bench.BUILDERS["math"](seed=0)
    gsm = [row for row in splits["train"] if row["type"] == "gsm8k"]
    assert len(gsm) == 60 and len(splits["gsm8k_test"]) == 30
    for row in splits["train"] + splits["test"]:
        assert row["output"].rstrip().endswith(f"#### {row['answer']}")
        int(row["answer"])


def test_number_words():
    assert [icl_probes.number_word(n) for n in (7, 13, 20, 42, 99)] == ["seven", "thirteen", "twenty", "forty-two", "ninety-nine"]


def test_builtin_file_errors_are_one_line():
    from stagewise.errors import DataError

    with pytest.raises(DataError, match="unknown built-in benchmark 'nope'"):
        bench.builtin_file("nope:train")
    with pytest.raises(DataError, match="expected 'facts:<split>' with split one of: dev, known_dev"):
        bench.builtin_file("facts:nosuch")
