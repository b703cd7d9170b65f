"""A stage's data, from loaded rows to batches: its transforms in order (model-in-the-loop
rewriting, selection, replay), class labels, encoding as training renders it, the collator, and a
weighted mixture's per-epoch draw."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
)

from ..config import DatasetConfig, Recipe, StageConfig, stage_objective, transform_targets
from ..data import ListDataset, LoadedDataset, encode_dataset
from ..data.mixture import MixtureSampler, mixture_counts
from ..data.tokenize import prompt_text
from ..errors import DataError
from ..protocols import TransformContext
from ..registry import TRANSFORMS
from .context import StageContext


def transform_stage_data(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, ctx: StageContext
) -> tuple[dict[str, LoadedDataset], list[dict[str, Any]]]:
    """Apply the stage's transforms in order: each to every dataset on its
    own, or, for a stage-wide transform (selection with replay ratios), once to all of them together."""
    recipe, stage, datasets, identity, log = ctx.recipe, ctx.stage, ctx.datasets, ctx.identity, ctx.log
    if not stage.transforms:
        return datasets, []
    rows = {name: datasets[name].rows for name in stage.data}
    reports: list[dict[str, Any]] = []

    def apply(transform: Any, name: str, dataset: DatasetConfig, part: list[dict[str, Any]]) -> list[dict[str, Any]]:
        log(f"[transform] {transform.kind} on {name!r} ({len(part)} rows)")
        context = TransformContext(
            model=model,
            tokenizer=tokenizer,
            dataset_name=name,
            dataset=dataset,
            model_key=identity.key,
            seed=stage.seed,
            stage_dir=ctx.stage_dir,
            log=log,
            load_seed_model=identity.load_seed,
            seed_model_key=identity.seed_key,
            rows_of=lambda other: datasets[other].rows,
            stage_folder=identity.folder_of,
        )
        out, report = TRANSFORMS.impl(transform)(part, transform, context)
        reports.append({"kind": transform.kind, "data": name, **report})
        return out

    row_format = {name: recipe.datasets[name].format for name in stage.data}  # after the transforms so far
    for transform in stage.transforms:
        traits = TRANSFORMS.get(transform.kind).traits
        targets = transform_targets(recipe, stage, transform)
        if not targets:  # e.g. a leave-one-cluster-out arm dropped every dataset it templates
            continue
        if not traits.stage_wide or len(targets) == 1:
            rows.update({name: apply(transform, name, recipe.datasets[name], rows[name]) for name in targets})
        else:
            formats = {row_format[name] for name in targets}
            if len(formats) > 1:
                raise DataError(
                    f"transform {transform.kind!r} takes all of its datasets at once; "
                    f"they must share one format (got {sorted(formats)})"
                )
            origin = {id(row): name for name in targets for row in rows[name]}
            kept = apply(
                transform,
                "+".join(targets),
                recipe.datasets[targets[0]],
                [row for name in targets for row in rows[name]],
            )
            rows.update({name: [row for row in kept if origin[id(row)] == name] for name in targets})
            reports[-1]["rows_out_per_dataset"] = {name: len(rows[name]) for name in targets}
        if traits.output_format:
            row_format.update(dict.fromkeys(targets, traits.output_format))
    if not any(rows.values()):  # one dataset may end empty, the stage may not
        kept_text = "; ".join(
            f"{r['kind']} on {r['data']}: "
            + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in r.items() if key not in ("kind", "data"))
            for r in reports
        )
        raise DataError(f"the transforms kept no training row ({kept_text})")
    changed = {
        name: dataclasses.replace(
            datasets[name],
            rows=part,
            format=None if row_format[name] == recipe.datasets[name].format else row_format[name],
        )
        for name, part in rows.items()
    }
    return {**datasets, **changed}, reports


def class_labels(recipe: Recipe, stage: StageConfig, datasets: dict[str, LoadedDataset]) -> list[str]:
    """Label names of a classification stage: declared, else sorted over its data. At least two
    classes (one would train a constant), and as many as ``model.num_labels`` when that is set."""
    labels = recipe.datasets[stage.data[0]].labels or sorted(
        {row["label"] for name in stage.data for row in datasets[name].rows}
    )
    where = f"datasets.{stage.data[0]}"
    if len(labels) < 2:
        raise DataError(f"{where}: classification needs at least 2 classes, found only {labels}")
    if recipe.model.num_labels is not None and recipe.model.num_labels != len(labels):
        raise DataError(
            f"model.num_labels is {recipe.model.num_labels} but {where} has {len(labels)} "
            f"labels {labels}; fix num_labels or the data"
        )
    return labels


def encode_stage_data(
    recipe: Recipe,
    stage: StageConfig,
    names: list[str],
    datasets: dict[str, LoadedDataset],
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str] | None,
) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for name in names:
        if not datasets[name].rows:  # emptied by a transform (a stage with no rows at all stops earlier)
            continue
        cfg = recipe.datasets[name]
        examples += encode_dataset(
            datasets[name].rows,
            datasets[name].format or cfg.format,
            tokenizer,
            template=cfg.template,
            train_on_prompt=stage.train_on_prompt,
            max_length=stage.max_length,
            labels=labels,
        )
    return examples


def train_collator(objective: str, tokenizer: PreTrainedTokenizerBase, padding_free: bool) -> Any:
    """Batches for the Trainer. Padding-free packs a batch's examples into one row whose
    position ids restart per example; transformers turns that into a block-diagonal causal
    mask (and flash-attention kernels into varlen calls), and the first label of each example
    is masked, so the loss equals the padded batch's with no compute spent on padding. (The
    Trainer turns the model's KV cache off; with a cache transformers skips packing detection.)"""
    if objective == "classification":
        return DataCollatorWithPadding(tokenizer)
    if padding_free:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


@dataclass
class StageData:
    """A stage's data after transforms: raw rows, encoded examples, class labels, dev sets."""

    objective: str
    rows: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    labels: list[str] | None
    dev: dict[str, ListDataset] | None  # scored each epoch to pick the best one (eval.select_best)
    encode: Callable[[str], list[dict[str, Any]]]  # any recipe dataset, encoded like this stage's data
    collator: Any  # batches of those examples (training and data-aware setup)
    prompts: Callable[[], list[str]]  # each row's prompt as training renders it (text)
    sampler: MixtureSampler | None = None  # `data: {name: weight}`: each epoch's draw
    mixture: dict[str, Any] | None = None  # per dataset: rows, weight, rows per epoch (manifest)


def prepare_data(
    recipe: Recipe, stage: StageConfig, datasets: dict[str, LoadedDataset], tokenizer: PreTrainedTokenizerBase
) -> StageData:
    objective = stage_objective(recipe, stage)
    labels = class_labels(recipe, stage, datasets) if objective == "classification" else None
    rows = [row for name in stage.data for row in datasets[name].rows]

    def encode(name: str) -> list[dict[str, Any]]:
        return encode_stage_data(recipe, stage, [name], datasets, tokenizer, labels)

    parts = {name: encode(name) for name in stage.data}
    examples = [example for part in parts.values() for example in part]
    dev = (
        {name: ListDataset(encode(name)) for name in stage.eval.data} if stage.eval and stage.eval.select_best else None
    )
    collator = train_collator(objective, tokenizer, recipe.performance.padding_free)

    def prompts() -> list[str]:
        return [
            prompt_text(row, recipe.datasets[name].format, tokenizer, recipe.datasets[name].template)
            for name in stage.data
            for row in datasets[name].rows
        ]

    data = StageData(objective, rows, examples, labels, dev, encode, collator, prompts)
    if stage.data_weights:
        sizes = [len(parts[name]) for name in stage.data]
        if not sizes[0]:
            raise DataError(f"data: {stage.data[0]!r} anchors each epoch of the mixture but has no rows left")
        counts = mixture_counts(sizes, [stage.data_weights[name] for name in stage.data])
        data.sampler = MixtureSampler(sizes, counts, stage.seed)
        data.mixture = {
            name: {"rows": size, "weight": stage.data_weights[name], "rows_per_epoch": count}
            for name, size, count in zip(stage.data, sizes, counts)
        }
    return data
