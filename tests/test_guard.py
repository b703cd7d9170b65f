"""The retention guard: a stage stops at the step where the probe's drop first exceeds max_drop,
keeps the weights of the last check that passed, records why; a resumed stage ends the same way;
bad guards are one line."""
from __future__ import annotations

import pytest
import torch
from conftest import CrashAfterSave, make_recipe, run

from stagewise.errors import RecipeError

ROWS = [{"instruction": f"say {i}", "output": f"word{i}"} for i in range(8)]
DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": ROWS},
            "prose": {"format": "text", "rows": [{"text": f"the quick brown fox jumps over the lazy dog number {i}"}
                                                 for i in range(6)]}}


def recipe(tmp_path, guard=None, **stage):
    evaluation = {"target": [{"name": "t", "data": "sft", "metric": "answer_logprob"}],
                  "retention": [{"name": "ppl", "data": "prose", "metric": "perplexity"}], "kl_prompts": 0,
                  **({"guard": guard} if guard else {})}
    stage = {"name": "s", "data": "sft", "max_steps": 8, "batch_size": 2, "lr": 1e-2, "lr_scheduler_type": "constant",
             "save_steps": 2, "logging_steps": 1, **stage}
    return make_recipe(tmp_path, [stage], datasets=DATASETS, evaluation=evaluation)


GUARD = {"probe": "ppl", "max_drop": 50.0, "every_steps": 1}  # perplexity: a drop is a rise of 50


def test_the_stage_stops_where_the_drop_first_exceeds_and_keeps_the_last_passing_weights(tmp_path):
    guarded = run(recipe(tmp_path / "a", GUARD))
    record = guarded.manifest["stages"][0]["guard"]
    checks = record["checks"]
    first_bad = next(check["step"] for check in checks if check["drop"] > 50.0)
    assert all(check["drop"] <= 50.0 for check in checks if check["step"] < first_bad)
    assert record["stopped"]["step"] == first_bad == checks[-1]["step"] and record["stopped"]["kept_step"] == first_bad - 1
    assert 1 < first_bad < 8, checks  # this setting trips mid-stage (a test that could not trip would prove nothing)
    import json

    logged = json.loads((tmp_path / "a/run/0-s/trainer_state.json").read_text())["log_history"]
    assert [entry["guard/ppl"] for entry in logged if "guard/ppl" in entry] == [c["score"] for c in checks[1:]]
    plain = run(recipe(tmp_path / "b", max_steps=first_bad - 1))  # the same training, stopped at the kept step
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, guarded.model.state_dict()[name]), name


def test_a_resumed_guarded_stage_ends_as_the_uninterrupted_one(tmp_path):
    reference = run(recipe(tmp_path / "a", GUARD))
    with pytest.raises(KeyboardInterrupt):
        run(recipe(tmp_path / "b", GUARD), [CrashAfterSave(step=2)])
    resumed = run(recipe(tmp_path / "b", GUARD))
    assert resumed.manifest["stages"][0]["resumed_from"] == "checkpoint-2"
    assert resumed.manifest["stages"][0]["guard"]["stopped"] == reference.manifest["stages"][0]["guard"]["stopped"]
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.parametrize("guard, stage, message", [
    ({"probe": "nope", "max_drop": 0.1}, {}, "evaluation.guard.probe: 'nope' is not a retention probe"),
    ({"probe": "t", "max_drop": 0.1}, {}, "evaluation.guard.probe: 't' is not a retention probe"),
    ({"probe": "ppl", "max_drop": 0.1, "every_steps": 20}, {}, "evaluation.guard.every_steps: 20 is more than stage 's'"),
    ({"probe": "ppl", "max_drop": 0}, {}, "evaluation.guard.max_drop"),
])
def test_bad_guards_are_one_line(tmp_path, guard, stage, message):
    with pytest.raises(RecipeError) as err:
        recipe(tmp_path, guard, **stage)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_guard_under_fsdp_is_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"distributed\.fsdp: evaluation\.guard scores the model") as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}], datasets=DATASETS, distributed={"fsdp": True},
                    evaluation={"retention": [{"name": "ppl", "data": "prose", "metric": "perplexity"}],
                                "guard": {"probe": "ppl", "max_drop": 1.0}})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("save_steps", [2, 3])
def test_a_guarded_stage_killed_between_checks_or_after_it_stopped_resumes_the_same(tmp_path, save_steps):
    """Checks every 3 steps; it trips at step 3. Checkpoints every 2: killed at step 2, between two
    checks (the resumed stage must not check where the uninterrupted one did not, nor keep other
    weights); every 3: killed right after the checkpoint of the step where the guard stopped it."""
    sparse = {**GUARD, "every_steps": 3}
    reference = run(recipe(tmp_path / "a", sparse, save_steps=save_steps))
    expected = reference.manifest["stages"][0]["guard"]
    assert expected["stopped"]["step"] == 3 and expected["stopped"]["kept_step"] == 0, expected
    crash_step = save_steps
    with pytest.raises(KeyboardInterrupt):
        run(recipe(tmp_path / "b", sparse, save_steps=save_steps), [CrashAfterSave(step=crash_step)])
    resumed = run(recipe(tmp_path / "b", sparse, save_steps=save_steps))
    assert resumed.manifest["stages"][0]["resumed_from"] == f"checkpoint-{crash_step}"
    assert resumed.manifest["stages"][0]["guard"] == expected
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
