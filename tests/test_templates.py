"""Instruction data from labelled datasets: golden strings, a classification set trained as
instructions on a causal LM, seeded phrasings, and one-line errors naming row and field."""
from __future__ import annotations

import json

import pytest
from conftest import CLASSIFICATION_ROWS, INSTRUCTION_ROWS, make_recipe, run

from stagewise.errors import DataError, RecipeError
from stagewise.strategies.templates import InstructionTemplate, TemplateConfig, fill, option_list

SENTIMENT = [{"text": "good movie", "label": 1}, {"text": "bad movie", "label": 0}]


def test_golden_strings_with_verbalizer_and_options():
    config = TemplateConfig(kind="template", templates="builtin:sentiment", verbalizer={0: "negative", 1: "positive"},
                            options=True)
    options = option_list(config, SENTIMENT)
    assert options == "OPTIONS:\n- negative\n- positive"
    row = fill(InstructionTemplate(instruction="Review: {text}\nSentiment?"), SENTIMENT[0], config, options, "r")
    assert row == {"instruction": "Review: good movie\nSentiment?\n\nOPTIONS:\n- negative\n- positive",
                   "output": "positive"}
    placed = fill(InstructionTemplate(instruction="{options}\n\n{text}", output="It is {label}."), SENTIMENT[1],
                  config, options, "r")
    assert placed == {"instruction": "OPTIONS:\n- negative\n- positive\n\nbad movie", "output": "It is negative."}


def stage(**transform):
    return {"name": "s", "data": "reviews", "max_steps": 2, "batch_size": 2,
            "transforms": [{"kind": "template", "templates": "builtin:sentiment", **transform}]}


DATASETS = {"reviews": {"format": "classification", "rows": CLASSIFICATION_ROWS}}


def test_a_classification_set_trains_as_instructions_on_a_causal_lm(tmp_path):
    with pytest.raises(RecipeError, match="classification data needs model.task: sequence_classification"):
        make_recipe(tmp_path, [{"name": "s", "data": "reviews"}], datasets=DATASETS)
    result = run(make_recipe(tmp_path, [stage(verbalizer={"pos": "positive", "neg": "negative"})], datasets=DATASETS))
    rows = [json.loads(line) for line in (tmp_path / "run/0-s/templated-reviews.jsonl").read_text().splitlines()]
    assert [row["output"] for row in rows] == ["positive", "negative", "positive", "negative"]
    assert all(CLASSIFICATION_ROWS[i]["text"] in row["instruction"] for i, row in enumerate(rows))
    assert len({row["instruction"].replace(CLASSIFICATION_ROWS[i]["text"], "") for i, row in enumerate(rows)}) > 1
    entry = result.manifest["stages"][0]
    assert entry["transforms"][0] == {"kind": "template", "data": "reviews", "rows": 4, "templates": 4}
    assert entry["train_rows"] == 4 and entry["metrics"]["train_loss"] > 0
    again = run(make_recipe(tmp_path / "again", [stage(verbalizer={"pos": "positive", "neg": "negative"})],
                            datasets=DATASETS))
    assert (tmp_path / "again/run/0-s/templated-reviews.jsonl").read_text() == \
        (tmp_path / "run/0-s/templated-reviews.jsonl").read_text()  # the phrasing per row is seeded
    assert again.manifest["stages"][0]["train_rows"] == 4


def test_a_field_the_rows_lack_is_one_line_with_row_and_field(tmp_path):
    with pytest.raises(DataError) as error:
        run(make_recipe(tmp_path, [stage(templates=[{"instruction": "{review}"}])], datasets=DATASETS))
    message = str(error.value)
    assert "row 1 (template 1): the template names field 'review', which the row lacks (fields: label, text)" in message
    assert "\n" not in message


@pytest.mark.parametrize("templates, message", [
    ("builtin:poetry", "unknown built-in template set 'poetry'"),
    ([], "give at least one template"),
    ([{"instruction": "{text:100000000}"}], "only plain {field} slots are allowed"),  # would pad for ever
    ([{"instruction": "{}"}], "only plain {field} slots"),
    ([{"instruction": "{text!z}"}], "only plain {field} slots"),
    ([{"instruction": "{text.__class__}"}], "only plain {field} slots"),
    ([{"instruction": "{text"}], "expected '}' before end of string"),
    ([{"instruction": "text}"}], "Single '}' encountered"),
    ([{"instruction": "{text}", "output": "{label:>9}"}], "only plain {field} slots"),
])
def test_bad_template_source_is_one_line(tmp_path, templates, message):
    with pytest.raises(RecipeError, match=message):
        make_recipe(tmp_path, [stage(templates=templates)], datasets=DATASETS)


def test_templates_from_a_file(tmp_path):
    (tmp_path / "t.yaml").write_text("- {instruction: 'Classify: {text}', output: '{label}'}\n")
    run(make_recipe(tmp_path, [stage(templates=str(tmp_path / "t.yaml"))], datasets=DATASETS))
    first = json.loads((tmp_path / "run/0-s/templated-reviews.jsonl").read_text().splitlines()[0])
    assert first == {"instruction": "Classify: good movie", "output": "pos"}
    with pytest.raises(RecipeError, match="stages.0.transforms.0.templates: .*templates file .* not found"):
        make_recipe(tmp_path / "b", [stage(templates=str(tmp_path / "missing.yaml"))], datasets=DATASETS)
    (tmp_path / "bad.yaml").write_text("instruction: not a list\n")
    with pytest.raises(RecipeError, match="expected a list of"):
        make_recipe(tmp_path / "c", [stage(templates=str(tmp_path / "bad.yaml"))], datasets=DATASETS)
    recipe = make_recipe(tmp_path / "d", [stage(templates=str(tmp_path / "t.yaml"))], datasets=DATASETS)
    assert recipe.stages[0].transforms[0].templates[0].instruction == "Classify: {text}"  # inline: in the hash


def test_a_transform_limited_to_one_dataset_leaves_the_others_as_they_are(tmp_path):
    """A labelled set templated into instructions trains beside a ready-made instruction set."""
    datasets = {**DATASETS, "qa": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS}}
    mixed = {"name": "s", "data": ["reviews", "qa"], "max_steps": 2, "batch_size": 2}
    with pytest.raises(RecipeError, match=r"stages.0.data: cannot mix dataset formats \['classification', 'instruction'\]"
                                          r" in one stage \(template the labelled ones into instructions first\)"):
        make_recipe(tmp_path, [mixed], datasets=datasets)
    with pytest.raises(RecipeError, match=r"stages.0.transforms.0.datasets: 'sft' is not one of this stage's datasets "
                                          r"\(reviews, qa\)"):
        make_recipe(tmp_path, [{**mixed, "transforms": [{"kind": "template", "templates": "builtin:sentiment",
                                                          "datasets": ["sft"]}]}], datasets=datasets)
    recipe = make_recipe(tmp_path, [{**mixed, "transforms": [{"kind": "template", "templates": "builtin:sentiment",
                                                              "datasets": ["reviews"]}]}], datasets=datasets)
    result = run(recipe)
    stage_dir = tmp_path / "run/0-s"
    assert (stage_dir / "templated-reviews.jsonl").exists() and not (stage_dir / "templated-qa.jsonl").exists()
    entry = result.manifest["stages"][0]
    assert entry["transforms"] == [{"kind": "template", "data": "reviews", "rows": 4, "templates": 4}]
    assert entry["train_rows"] == len(CLASSIFICATION_ROWS) + len(INSTRUCTION_ROWS)


@pytest.mark.parametrize("prompt_format, message", [
    ("Q: {input:100000000}", "only plain {field} slots"),
    ("Q: {input!r}", "only plain {field} slots"),
    ("Q: {input} {other}", "exactly one {input} slot"),
    ("Q: no slot", "exactly one {input} slot"),
    ("Q: {input", "expected '}' before end of string"),
])
def test_a_fewshot_prompt_format_is_a_plain_template(tmp_path, prompt_format, message):
    from stagewise.data.formats import check_fewshot

    with pytest.raises(DataError, match="row 3: field 'prompt_format'") as error:
        check_fewshot({"task": "t", "input": "a", "output": "b", "prompt_format": prompt_format}, "row 3")
    assert message in str(error.value) and "\n" not in str(error.value)
    check_fewshot({"task": "t", "input": "a", "output": "b", "prompt_format": "Q: {input} -> {{x}}"}, "row 3")


@pytest.mark.parametrize("chat_template, message", [
    ("{{ raise_exception('system turns are not supported') }}", "system turns are not supported"),
    ("{% if %}", "chat template failed"),  # a syntax error
    ("{{ ''.__class__.__mro__ }}", "chat template failed"),  # the sandbox refuses it
])
def test_a_chat_template_that_fails_is_one_line(chat_template, message):
    from stagewise.data.tokenize import chat_segments
    from stagewise.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    tokenizer.chat_template = chat_template
    with pytest.raises(DataError, match="the tokenizer's chat template failed") as error:
        chat_segments(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert message in str(error.value) and "\n" not in str(error.value)
