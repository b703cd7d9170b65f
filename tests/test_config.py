"""Recipe schema: defaults, overrides, and one-line errors that name key and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from stagewise.config import load_recipe, recipe_from_dict
from stagewise.errors import RecipeError

GOOD = """\
model: tiny-llama
datasets:
  sft:
    format: instruction
    rows: [{instruction: a, output: b}]
stages:
  - name: sft
    data: sft
    lr: 1e-4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_filled_and_shorthands(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    stage = recipe.stages[0]
    assert recipe.model.model_name_or_path == "tiny-llama"
    assert stage.data == ["sft"] and stage.lr == 1e-4 and stage.batch_size == 8
    assert stage.trainable.kind == "full" and stage.loss.kind == "ce" and stage.lr_rule.kind == "uniform"
    assert recipe.report_to == ["none"] and recipe.model.trust_remote_code is False


def test_overrides_with_dotted_paths(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), ["stages.0.lr=3e-5", "stages.0.trainable.kind=layers",
                                                  "stages.0.trainable.indices=[-1]", "output_dir=/tmp/x"])
    assert recipe.stages[0].lr == 3e-5
    assert recipe.stages[0].trainable.kind == "layers" and recipe.stages[0].trainable.indices == [-1]
    assert recipe.output_dir == "/tmp/x"


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("    lr: 1e-4", "    learnin_rate: 1e-4"),
         "recipe.yaml line 9: stages.0.learnin_rate: unknown key (expected one of:"),
        (GOOD.replace("lr: 1e-4", "lr: fast"), "recipe.yaml line 9: stages.0.lr: Input should be a valid number"),
        (GOOD.replace("    data: sft\n", "    data: nope\n"),
         "recipe.yaml line 8: stages.0.data: unknown dataset 'nope' (datasets defined: sft)"),
        (GOOD.replace("format: instruction", "format: alpaca"), "recipe.yaml line 4: datasets.sft.format: unknown data format 'alpaca'; expected one of: chat,"),
        (GOOD + "    trainable: hft2\n", "recipe.yaml line 10: stages.0.trainable: unknown trainable selector 'hft2'"),
        (GOOD + "    trainable: {kind: layers, indices: [0], depth: 2}\n",
         "recipe.yaml line 10: stages.0.trainable.depth: unknown key"),
        (GOOD.replace("model: tiny-llama\n", ""), "recipe.yaml: model: required key is missing"),
        (GOOD + "  - name: sft\n    data: sft\n", "recipe.yaml line 10: stages.1.name: duplicate stage name 'sft'"),
        (GOOD + "bogus: [\n", "recipe.yaml line 11: invalid YAML"),
        (GOOD.replace("name: sft", "name: a/b"), "recipe.yaml line 7: stages.0.name: expected letters"),
    ],
)
def test_bad_recipes_give_one_line_errors(tmp_path, text, expected):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}/{expected}"), message


def test_unknown_key_suggests_close_match(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'lr'"):
        load_recipe(write(tmp_path, GOOD.replace("    lr: 1e-4", "    lrr: 1e-4")))


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe(write(tmp_path, GOOD), ["stages.0.lr"])
    with pytest.raises(RecipeError, match="stages.5 is not a valid index"):
        load_recipe(write(tmp_path, GOOD), ["stages.5.lr=1"])
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_dataset_needs_exactly_one_source():
    with pytest.raises(RecipeError, match="expected exactly one of 'path', 'rows', 'builtin' or 'hub'"):
        recipe_from_dict({"model": "tiny-llama", "datasets": {"d": {"format": "text"}},
                          "stages": [{"name": "s", "data": "d"}]})


def test_yaml_tags_are_not_executed(tmp_path):
    evil = GOOD + "description: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(write(tmp_path, evil))


def test_every_strategy_folder_registers_without_a_list(tmp_path, monkeypatch):
    """A new folder under strategies/ is found by load_plugins: adding a strategy edits no list."""
    import importlib
    import sys

    import stagewise.strategies as strategies
    from stagewise.registry import LOSSES, load_plugins

    folder = tmp_path / "probe_strategy_for_test"
    folder.mkdir()
    (folder / "__init__.py").write_text(
        "from stagewise.registry import LOSSES\n"
        "LOSSES.register('probe_loss_for_test')(lambda config, context: None)\n")
    monkeypatch.setattr(strategies, "__path__", [*strategies.__path__, str(tmp_path)])
    monkeypatch.delitem(LOSSES._entries, "probe_loss_for_test", raising=False)
    try:
        load_plugins()
        assert "probe_loss_for_test" in LOSSES.names()
    finally:
        LOSSES._entries.pop("probe_loss_for_test", None)
        sys.modules.pop("stagewise.strategies.probe_strategy_for_test", None)
        importlib.invalidate_caches()


def test_model_validate_alone_gives_typed_entries_and_loading_changes_nothing_it_validated(tmp_path):
    """No post-validation swapping: Recipe.model_validate turns every registered section into its
    entry's config class; relative paths are resolved into a copy, not into the validated recipe."""
    from stagewise.config import Recipe, recipe_from_dict
    from stagewise.registry import LOSSES, SELECTORS, TRANSFORMS, load_plugins

    load_plugins()
    replay = {"kind": "self_replay", **TRANSFORMS.get("self_replay").example}
    data = {"model": "tiny-llama", "datasets": {"d": {"format": "instruction", "path": "d.jsonl"}},
            "stages": [{"name": "s", "data": "d", "trainable": "hft", "loss": {"kind": "eaft", "top_k": 5},
                        "transforms": [replay]}]}
    stage = Recipe.model_validate(data).stages[0]
    assert type(stage.trainable) is SELECTORS.get("hft").config_cls
    assert type(stage.loss) is LOSSES.get("eaft").config_cls and stage.loss.top_k == 5
    assert [type(t) for t in stage.transforms] == [TRANSFORMS.get("self_replay").config_cls]
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    recipe = recipe_from_dict(data, base_dir=tmp_path)
    assert recipe.datasets["d"].path == str(tmp_path / "d.jsonl")
    assert Recipe.model_validate(data).datasets["d"].path == "d.jsonl"
