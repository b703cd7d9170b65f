"""One test matrix over every registered entry (in the style of PEFT's shared tests).

Cases are generated from the registries: every selector, loss, regularizer, LR rule, optimizer and trainer runs on
each tiny model (Llama, GPT-2, BERT) whose data and task it declares it serves, built from its
registered ``example`` config. A newly registered entry is tested here without a new test:
- frozen tensors are bit-identical after training, and trainable ones moved;
- the optimizer holds exactly the trainable tensors;
- the LR rule's optimizer groups are the ones every trainer trains with;
- every optimizer entry is the one every trainer steps with, over the LR rule's groups;
- a run killed after a checkpoint resumes to the uninterrupted run's weights;
- a combination an entry does not serve is one line at ``stagewise validate`` (exit 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import CLASSIFICATION_ROWS, INSTRUCTION_ROWS, CrashAfterSave, make_recipe, run
from transformers import TrainerCallback

from stagewise.protocols import LrRuleContext
from stagewise.registry import (
    LOSSES,
    LR_RULES,
    METRICS,
    OPTIMIZERS,
    REGULARIZERS,
    SELECTORS,
    TRAINERS,
    TRANSFORMS,
    load_plugins,
)

load_plugins()

PREFERENCE_ROWS = [{"prompt": f"Q{i}: pick", "chosen": " good answer", "rejected": " bad reply"} for i in range(4)]
FEEDBACK_ROWS = [{"prompt": f"Q{i}: answer", "completion": " good answer" if i % 2 else " bad reply",
                  "label": bool(i % 2)} for i in range(4)]
DATA = {  # data format -> rows
    "instruction": INSTRUCTION_ROWS, "classification": CLASSIFICATION_ROWS, "preference": PREFERENCE_ROWS,
    "feedback": FEEDBACK_ROWS, "text": [{"text": "plain prose about nothing in particular"}] * 4,
}
OBJECTIVE = {"instruction": "lm", "text": "lm", "classification": "classification", "preference": "preference",
             "feedback": "feedback"}
TRAINING_FORMATS = ("instruction", "classification", "preference", "feedback")
MODELS = {"tiny-llama": "causal_lm", "tiny-gpt2": "causal_lm", "tiny-bert": "sequence_classification"}


def setting_for(entry: Any, trainer: str | None = None) -> list[tuple[str, str]]:
    """(model, data format) pairs the entry serves, with the trainer that serves that data."""
    pairs = []
    for model, task in MODELS.items():
        for data_format in TRAINING_FORMATS:
            if entry.requires.problem(OBJECTIVE[data_format], {data_format}, task) is not None:
                continue
            serving = trainer_for(data_format, task, trainer)
            check = TRAINERS.get(serving).traits.check if serving else None
            example = TRAINERS.get(serving).config_cls.model_validate(config_of(TRAINERS.get(serving))) if check else None
            if serving is not None and (check is None or check(example, {data_format}, None) is None):
                pairs.append((model, data_format))  # (the trainer's example config serves this data too)
    return pairs


def trainer_for(data_format: str, task: str, wanted: str | None = None) -> str | None:
    """The trainer for this data on this model (None where the model cannot take the data at all)."""
    if (data_format == "classification") != (task == "sequence_classification"):
        return None
    names = [wanted] if wanted else sorted(TRAINERS.names(), key=lambda name: name != "hf")  # the default first
    return next((name for name in names if TRAINERS.get(name).requires.problem(
        OBJECTIVE[data_format], {data_format}, task) is None), None)


def config_of(entry: Any) -> dict[str, Any]:
    return {"kind": entry.name, **entry.example}


def stage_recipe(tmp_path: Path, model: str, data_format: str, **stage: Any):
    task = MODELS[model]
    stage = {"name": "s", "data": "d", "lr": 1e-2, "max_steps": 2, "batch_size": 2, "logging_steps": 1,
             "trainer": trainer_for(data_format, task), **stage}
    stage["trainer"] = config_of(TRAINERS.get(stage["trainer"]))  # with its required keys
    model_cfg = {"model_name_or_path": model, "task": task}
    return make_recipe(tmp_path, [stage], model=model_cfg, datasets={"d": {"format": data_format, "rows": DATA[data_format],
                                                                          **({"template": "alpaca"} if data_format == "instruction" else {})}})


class OptimizerWatch(TrainerCallback):
    """At the start of training: the weights entering it, which are trainable, and the optimizer."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model = model
        self.before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.trainable = {id(p) for p in model.parameters() if p.requires_grad}
        self.group_lrs = sorted(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
        self.optimizer_class = type(getattr(optimizer, "optimizer", optimizer))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """The weights at the end of training (saving may merge an add-on away afterwards)."""
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def selector_cases() -> list[Any]:
    return [pytest.param(entry.name, model, data_format, id=f"{entry.name}-{model}")
            for entry in SELECTORS.entries() for model, data_format in setting_for(entry)
            if OBJECTIVE[data_format] in ("lm", "classification")]


@pytest.mark.parametrize("name, model, data_format", selector_cases())
def test_selector_freezes_exactly_what_it_does_not_select(tmp_path, name, model, data_format):
    watch = OptimizerWatch()
    result = run(stage_recipe(tmp_path, model, data_format, trainable=config_of(SELECTORS.get(name))), [watch])
    if result.manifest["stages"][0]["trainable_params"] == 0:  # e.g. `none`: nothing trains, nothing changes
        assert not hasattr(watch, "before")
        return
    assert watch.optimized == watch.trainable and watch.trainable
    after = watch.after
    moved = 0
    for param_name, (before, trainable) in watch.before.items():
        if not trainable:
            assert torch.equal(before, after[param_name]), f"frozen {param_name} changed"
        else:
            moved += not torch.equal(before, after[param_name])
    assert moved > 0


def loss_cases() -> list[Any]:
    return [pytest.param(field, entry.name, model, data_format, id=f"{field}-{entry.name}-{model}")
            for registry, field in ((LOSSES, "loss"), (REGULARIZERS, "regularizer"))
            for entry in registry.entries() for model, data_format in setting_for(entry, "hf")]


@pytest.mark.parametrize("field, name, model, data_format", loss_cases())
def test_objective_trains_and_keeps_the_optimizer_on_trainable_tensors(tmp_path, field, name, model, data_format):
    """Every loss and regularizer (its example config names the stage's own dataset 'd')."""
    watch = OptimizerWatch()
    registry = LOSSES if field == "loss" else REGULARIZERS
    result = run(stage_recipe(tmp_path, model, data_format, trainable="head", **{field: config_of(registry.get(name))}),
                 [watch])
    assert watch.optimized == watch.trainable
    assert torch.isfinite(torch.tensor(result.manifest["stages"][0]["metrics"]["train_loss"]))
    after = watch.after
    assert all(torch.equal(before, after[n]) for n, (before, trainable) in watch.before.items() if not trainable)


def lr_rule_cases() -> list[Any]:
    return [pytest.param(rule.name, trainer.name, model, data_format, id=f"{rule.name}-{trainer.name}-{model}")
            for rule in LR_RULES.entries() for trainer in TRAINERS.entries()
            for model, data_format in setting_for(trainer, trainer.name)
            if rule.requires.problem(OBJECTIVE[data_format], {data_format}, MODELS[model]) is None]


class PlanWatch(OptimizerWatch):
    """Also plans the LR rule's groups itself on the model entering training (before any step)."""

    def __init__(self, rule: str, lr: float) -> None:
        self.entry, self.lr = LR_RULES.get(rule), lr

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        config = self.entry.config_cls.model_validate(config_of(self.entry))
        plan = self.entry.impl(config, model, LrRuleContext(base_lr=self.lr))
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.planned = ({self.lr} if plan.split_groups is None else
                        {g["lr"] for g in plan.split_groups(model, [{"params": trainable, "weight_decay": 0.0}])})


@pytest.mark.parametrize("rule, trainer, model, data_format", lr_rule_cases())
def test_every_trainer_trains_with_the_lr_rules_groups(tmp_path, rule, trainer, model, data_format):
    """The optimizer's group LRs are exactly those the LR rule plans for the selected model."""
    watch = PlanWatch(rule, lr=1e-3)
    run(stage_recipe(tmp_path, model, data_format, lr_rule=config_of(LR_RULES.get(rule)), trainer=trainer, lr=1e-3,
                     weight_decay=0.01), [watch])
    assert set(watch.group_lrs) == watch.planned
    if rule == "tempbalance":  # per-layer LRs reached this trainer's optimizer
        assert len(watch.planned) > 1


def optimizer_cases() -> list[Any]:
    return [pytest.param(optimizer.name, trainer.name, *setting_for(trainer, trainer.name)[0],
                         id=f"{optimizer.name}-{trainer.name}")
            for optimizer in OPTIMIZERS.entries() for trainer in TRAINERS.entries()]


@pytest.mark.parametrize("optimizer, trainer, model, data_format", optimizer_cases())
def test_every_trainer_steps_with_the_optimizer_entry_over_the_lr_rules_groups(tmp_path, optimizer, trainer, model,
                                                                                data_format):
    """The entry's optimizer (or the Trainer's own where it leaves it) holds exactly the trainable
    tensors in the LR rule's groups, and frozen tensors stay bit-identical."""
    from transformers import TrainingArguments

    entry = OPTIMIZERS.get(optimizer)
    watch = PlanWatch("tempbalance", lr=1e-3)
    run(stage_recipe(tmp_path, model, data_format, optimizer=config_of(entry), trainer=trainer, lr=1e-3,
                     lr_rule=config_of(LR_RULES.get("tempbalance"))), [watch])
    built = entry.impl(entry.config_cls.model_validate(config_of(entry)),
                       [{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}], TrainingArguments(str(tmp_path / "args")))
    if built is not None:
        assert watch.optimizer_class is type(built)
    assert watch.optimized == watch.trainable and set(watch.group_lrs) == watch.planned
    assert all(torch.equal(before, watch.after[n]) for n, (before, trainable) in watch.before.items() if not trainable)


def resume_cases() -> list[Any]:
    return [pytest.param(entry.name, *setting_for(entry, entry.name)[0], id=entry.name) for entry in TRAINERS.entries()]


@pytest.mark.parametrize("trainer, model, data_format", resume_cases())
def test_resume_equals_the_uninterrupted_run_for_every_trainer(tmp_path, trainer, model, data_format):
    stage = {"trainer": trainer, "max_steps": 4, "save_steps": 2, "lr_rule": "tempbalance"}  # an epoch-end checkpoint
    reference = run(stage_recipe(tmp_path / "a", model, data_format, **stage))
    with pytest.raises(KeyboardInterrupt):
        run(stage_recipe(tmp_path / "b", model, data_format, **stage), [CrashAfterSave(step=2)])
    resumed = run(stage_recipe(tmp_path / "b", model, data_format, **stage))
    assert resumed.manifest["stages"][0]["resumed_from"] == "checkpoint-2"
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def unserved_cases() -> list[Any]:
    """For every entry that declares requirements: one model/data it does not serve."""
    cases = []
    for field, registry in (("trainer", TRAINERS), ("trainable", SELECTORS), ("loss", LOSSES), ("lr_rule", LR_RULES),
                            ("regularizer", REGULARIZERS), ("optimizer", OPTIMIZERS), ("transforms", TRANSFORMS),
                            ("metric", METRICS)):
        for entry in registry.entries():
            for model, task in MODELS.items():
                unserved = [f for f in ("instruction", "text", *TRAINING_FORMATS[1:])
                            if entry.requires.problem(OBJECTIVE[f], {f}, task) is not None
                            and trainer_for(f, task) is not None  # the model can take this data at all
                            and (field != "loss" or TRAINERS.get(trainer_for(f, task)).traits.takes_loss)]
                if unserved:
                    cases.append(pytest.param(field, entry.name, model, unserved[0], id=f"{field}-{entry.name}"))
                    break
    return cases


@pytest.mark.parametrize("field, name, model, data_format", unserved_cases())
def test_an_unserved_combination_is_one_line_at_validate(tmp_path, capsys, field, name, model, data_format):
    from stagewise.cli import main

    stage: dict[str, Any] = {"name": "s", "data": "d", "trainer": config_of(TRAINERS.get(trainer_for(data_format, MODELS[model])))}
    recipe: dict[str, Any] = {"model": {"model_name_or_path": model, "task": MODELS[model]},
                              "datasets": {"d": {"format": data_format, "rows": DATA[data_format]}},
                              "stages": [stage], "output_dir": str(tmp_path / "run")}
    registry = {"trainer": TRAINERS, "trainable": SELECTORS, "loss": LOSSES, "lr_rule": LR_RULES,
                "regularizer": REGULARIZERS, "optimizer": OPTIMIZERS, "transforms": TRANSFORMS, "metric": METRICS}[field]
    config = config_of(registry.get(name))
    if field == "metric":
        recipe["evaluation"] = {"target": [{"name": "p", "data": "d", **{k: v for k, v in config.items() if k != "kind"},
                                            "metric": name}]}
        where = "evaluation.target.0.metric"
    elif field == "transforms":
        stage["transforms"] = [config]
        where = "stages.0.transforms.0"
    else:
        stage[field] = config
        where = f"stages.0.{field}"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"line " in err and where in err and repr(name) in err, err
