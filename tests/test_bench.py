"""Benchmark builders: deterministic by seed, fixed disjoint splits, real source text."""
from __future__ import annotations

import inspect

import pytest

from stagewise import bench
from stagewise.bench import facts, icl_probes
from stagewise.errors import DataError
from stagewise.registry import BENCHMARKS

SEEDED = [entry.name for entry in BENCHMARKS.entries() if "seed" in inspect.signature(entry.impl).parameters]


@pytest.mark.parametrize("name", SEEDED)
def test_builders_are_deterministic_by_seed(name):
    builder = BENCHMARKS.get(name).impl
    first, again, other = builder(seed=0), builder(seed=0), builder(seed=1)
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
    splits = BENCHMARKS.get("sentiment").impl(seed=0, imbalance=10, minority_train=20)
    train = [row["label"] for row in splits["train"]]
    assert train.count("negative") == 20 and train.count("positive") == 200
    test = [row["label"] for row in splits["test"]]
    assert test.count("negative") == test.count("positive")
    texts = {row["text"] for row in splits["train"]}
    assert not texts & {row["text"] for row in splits["test"]}


def test_sentiment_of_one_corpus_is_a_separate_dataset_and_too_few_rows_is_one_line():
    tweets = BENCHMARKS.get("sentiment").impl(seed=0, imbalance=20, minority_train=30, sources=["tweets"])
    assert {row["source"] for split in ("train", "test") for row in tweets[split]} == {"tweets"}
    assert [row["label"] for row in tweets["train"]].count("positive") == 600
    amazon = BENCHMARKS.get("sentiment").impl(seed=0, imbalance=20, minority_train=30, sources=["amazonReviewSnippets"])
    assert not {row["text"] for row in tweets["test"]} & {row["text"] for row in amazon["test"]}
    with pytest.raises(DataError, match=r"positive: 1830 of 6300 needed"):
        BENCHMARKS.get("sentiment").impl(imbalance=100, sources=["tweets"])
    with pytest.raises(DataError, match=r"sources \['news'\] - expected some of"):
        BENCHMARKS.get("sentiment").impl(sources=["news"])


def test_math_has_real_gsm8k_items_with_integer_answers():
    splits = BENCHMARKS.get("math").impl(seed=0)
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


def test_geo_knowledge_items_are_unique_real_and_never_answered_by_their_question():
    from stagewise.bench.geo_knowledge import build, candidates
    from stagewise.errors import DataError

    splits = candidates()
    ids = [row["id"] for rows in splits.values() for row in rows]
    assert len(ids) == len(set(ids))
    for rows in splits.values():
        for row in rows:
            assert row["output"].lower() not in row["instruction"].lower()
    lyon = next(row for row in splits["world_cities"] if row["instruction"].endswith("city of Lyon?"))
    assert lyon["output"] == "France"
    assert any(row["output"] == "Canberra" for row in splits["country_facts"] if row["id"] == "capital-AU")
    known = build()  # default: the items the bundled SmolLM2 answers correctly
    for name, rows in known.items():
        assert set(r["id"] for r in rows) <= set(r["id"] for r in splits[name])
    assert len(known["world_cities"]) >= 300 and len(known["us_cities"]) >= 300
    with pytest.raises(DataError, match="builtin 'geo-knowledge': no list of known items for 'nope'"):
        build(known_by="nope")


def test_element_knowledge_is_the_periodic_table_without_word_symbols():
    from stagewise.bench.element_knowledge import build, candidates

    rows = candidates()["elements"]
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows) == 118 * 4 - 8  # 8 symbols that are English words ask no symbol question
    assert by_id["symbol_name-26"] == {
        "id": "symbol_name-26",
        "type": "symbol_name",
        "instruction": "Which chemical element has the symbol Fe?",
        "output": "Iron",
        "aliases": [],
    }
    assert by_id["name_number-79"]["output"] == "79" and by_id["name_symbol-79"]["output"] == "Au"
    assert by_id["number_name-13"]["aliases"] == ["Aluminium"] and "name_symbol-2" not in by_id  # He
    known = build()["elements"]
    assert 80 <= len(known) < len(rows) and all(row["id"] in by_id for row in known)


def test_feedback_rows_are_the_preference_pairs_unpaired():
    from stagewise.bench import feedback, preference

    pairs, rows = preference.build(), feedback.build()
    for split in pairs:
        assert len(rows[split]) == 2 * len(pairs[split])
        desirable = [(r["prompt"], r["completion"]) for r in rows[split] if r["label"] is True]
        undesirable = [(r["prompt"], r["completion"]) for r in rows[split] if r["label"] is False]
        assert desirable == [(p["prompt"], p["chosen"]) for p in pairs[split]]
        assert undesirable == [(p["prompt"], p["rejected"]) for p in pairs[split]]
