"""Weight interpolation and merging as a stage step (a stage with ``trainable: none`` trains
nothing and only merges).

- ``linear`` — WiSE-FT (Wortsman et al., CVPR 2022, eq. 1): θ = (1 − α)·θ_with + α·θ, where θ is
  the model entering the merge (fine-tuned) and θ_with the base model or an earlier stage.
- ``task_arithmetic`` — Ilharco et al., ICLR 2023: θ = θ_with + λ·Σ_t (θ_t − θ_with) over the
  entering model and the stages named in ``add`` (models fine-tuned from the same θ_with).
- ``ties`` (Yadav et al., NeurIPS 2023: trim each task vector to its ``density`` largest entries,
  elect a sign, average the agreeing ones), ``dare_ties`` / ``dare_linear`` (Yu et al., ICML 2024:
  drop entries at random, rescale the rest by 1/density) — through mergekit (``pip install
  'stagewise[merge]'``), with ``alpha`` as each task vector's weight. DARE's draw is seeded by
  the stage seed.

With several α (or λ) values, each merged model is scored on a dev dataset with a registered
metric and the best is kept (the first in list order on ties); every value's dev score and the
choice go in the manifest. An adapter-carrying model is merged into its base first (LoRA's
WiSE-FT is then the interpolation of the merged weights), so the output is a plain
``save_pretrained`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, cast

import torch
from pydantic import AliasChoices, Field, field_validator, model_validator

from .addons import base_model_of, merges_into_weights
from .errors import DataError, RecipeError
from .registry import MERGE_METHODS, MergeTraits
from .schema import StrictModel

BASE = "base"  # ``with: base``: the run's starting model


class MergeSelect(StrictModel):
    """How the merge coefficient is chosen: the best mean score of ``metric`` over the ``data`` dev
    sets (e.g. a target dev set and a retention dev set, to balance gain against forgetting)."""

    data: list[str] = Field(min_length=1)
    metric: str
    max_new_tokens: int = Field(default=24, ge=1)  # generation metrics: answer length

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class MergeConfig(StrictModel):
    method: str = "linear"  # a registered merge method (MERGE_METHODS)
    density: float = Field(default=0.5, gt=0, le=1)  # ties/dare: the share of each task vector's entries kept
    with_model: str = Field(default=BASE, validation_alias=AliasChoices("with", "with_model"))  # base or a stage
    alpha: list[float] = Field(min_length=1)  # WiSE-FT's α (linear, in [0, 1]) or task arithmetic's λ
    add: list[str] = Field(default_factory=list)  # task_arithmetic: more fine-tuned stages' task vectors
    select: MergeSelect | None = None  # required when alpha lists several values

    @field_validator("alpha", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @property
    def traits(self) -> MergeTraits:
        return MERGE_METHODS.get(self.method).traits

    @model_validator(mode="after")
    def _check(self) -> "MergeConfig":
        try:
            traits = self.traits
        except RecipeError as err:
            raise ValueError(f"method: {err}") from None
        if traits.interpolates and any(not 0 <= a <= 1 for a in self.alpha):
            raise ValueError(f"alpha: {self.method} interpolates, so every alpha must lie in [0, 1] (got {self.alpha})")
        if not traits.interpolates and any(a < 0 for a in self.alpha):
            raise ValueError(f"alpha: task-vector scales must be >= 0 (got {self.alpha})")
        if self.add and traits.interpolates:
            raise ValueError(
                f"add: {self.method} interpolates two models; several task vectors need task_arithmetic, ties or dare"
            )
        if traits.package is not None:
            import importlib.util

            if importlib.util.find_spec(traits.package) is None:
                raise ValueError(
                    f"method {self.method!r} runs through {traits.package}: pip install 'stagewise[merge]'"
                )
        if len(self.alpha) > 1 and self.select is None:
            raise ValueError("select: several alpha values need a dev set to choose on ({data, metric})")
        return self


class WeightSource(Protocol):
    """Tensors by name, read on demand (a safetensors folder) or held (a loaded model's)."""

    def keys(self) -> Iterable[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def __getitem__(self, name: str) -> torch.Tensor: ...


class HeldWeights:
    """A state dict in memory as a :class:`WeightSource`."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class SafetensorsWeights:
    """Safetensors files (a ``save_pretrained`` folder's), one tensor read at a time."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self.handles = {}
        for file in files:
            handle = safe_open(str(file), framework="pt")
            self.handles.update(dict.fromkeys(handle.keys(), handle))

    def keys(self) -> Iterable[str]:
        return self.handles.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[name].get_slice(name).get_shape())

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.handles[name].get_tensor(name)


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model with any adapter merged in (no copy of its weights); a soft prompt is not weights."""
    return model.merge_and_unload() if merges_into_weights(model) else base_model_of(model)


def plain_weights(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model with any adapter merged in, and a copy of its weights."""
    model = plain_model(model)
    return model, {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def merged_names(model: torch.nn.Module, source: WeightSource, what: str) -> list[str]:
    """The model's floating tensors to merge, one name per storage (tied weights are one tensor),
    preferring a name the other model's source holds; one line for a different architecture."""
    held = set(source.keys())
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            groups.setdefault(tensor.data_ptr(), []).append(name)
    names = [next((n for n in group if n in held), group[0]) for group in groups.values()]
    state = model.state_dict()
    for name in names:
        if name not in held:
            raise DataError(f"merge: {what} has a different architecture (parameter {name!r} is in one model only)")
        if tuple(state[name].shape) != source.shape(name):
            raise DataError(
                f"merge: {what} has parameter {name!r} of shape {source.shape(name)}, "
                f"this model {tuple(state[name].shape)}"
            )
    return names


def check_same_shapes(mine: dict[str, torch.Tensor], other: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(mine) ^ set(other))
    if missing:
        raise DataError(f"merge: {what} has a different architecture (parameter {missing[0]!r} is in one model only)")
    for name, tensor in mine.items():
        if tensor.shape != other[name].shape:
            raise DataError(
                f"merge: {what} has parameter {name!r} of shape {tuple(other[name].shape)}, "
                f"this model {tuple(tensor.shape)}"
            )


@MERGE_METHODS.register("linear", traits=MergeTraits(interpolates=True))
def wise_ft(alpha: float, tuned: list[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
    """WiSE-FT (Wortsman et al., CVPR 2022, eq. 1): (1 − α)·θ_with + α·θ."""
    return (1 - alpha) * anchor + alpha * tuned[0]


@MERGE_METHODS.register("task_arithmetic")
def task_arithmetic(alpha: float, tuned: list[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., ICLR 2023): θ_with + λ·Σ_t (θ_t − θ_with)."""
    return anchor + alpha * sum(weights - anchor for weights in tuned)


def merge_tensor(config: MergeConfig, alpha: float, tuned: list[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
    """One tensor merged by the config's (tensor-by-tensor) method."""
    return MERGE_METHODS.get(config.method).impl(alpha, tuned, anchor)


def merged_weights(
    config: MergeConfig, alpha: float, tuned: list[dict[str, torch.Tensor]], anchor: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """:func:`merge_tensor` over whole state dicts; floating tensors only (integer buffers are
    copied from the first tuned model)."""
    return {
        name: merge_tensor(config, alpha, [weights[name] for weights in tuned], anchor[name])
        if first.is_floating_point()
        else first
        for name, first in tuned[0].items()
    }


MERGEKIT = MergeTraits(whole_checkpoints=True, package="mergekit")


@MERGE_METHODS.register("dare_linear", traits=MERGEKIT)
@MERGE_METHODS.register("dare_ties", traits=MERGEKIT)
@MERGE_METHODS.register("ties", traits=MERGEKIT)
def mergekit_weights(
    config: MergeConfig,
    alpha: float,
    model: torch.nn.Module,
    tuned: list[dict[str, torch.Tensor]],
    anchor: dict[str, torch.Tensor],
    seed: int,
) -> dict[str, torch.Tensor]:
    """TIES / DARE through mergekit: the models are written to a scratch folder (mergekit merges
    checkpoints on disk) and the merged weights read back."""
    import tempfile
    from pathlib import Path

    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    from safetensors.torch import load_file
    from transformers import PreTrainedModel

    with tempfile.TemporaryDirectory(prefix="stagewise-merge-") as scratch:
        folders = []
        for index, weights in enumerate([anchor, *tuned]):
            folder = Path(scratch) / f"model-{index}"
            cast(PreTrainedModel, model).save_pretrained(
                folder, state_dict=dict(weights)
            )  # save_pretrained empties the dict it is given
            folders.append(str(folder))
        merge = MergeConfiguration.model_validate(
            {
                "merge_method": config.method,
                "base_model": folders[0],
                "dtype": "float32",
                "models": [
                    {"model": folder, "parameters": {"weight": alpha, "density": config.density}}
                    for folder in folders[1:]
                ],
            }
        )
        torch.manual_seed(seed)
        run_merge(merge, str(Path(scratch) / "out"), options=MergeOptions(copy_tokenizer=False, quiet=True))
        merged: dict[str, torch.Tensor] = {}
        for file in sorted((Path(scratch) / "out").glob("*.safetensors")):
            merged.update(load_file(str(file)))
    # tied weights (an LM head sharing the embedding) are one tensor on disk: take the merged copy
    storage = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
    by_storage = {storage[name]: tensor for name, tensor in merged.items() if name in storage}
    missing = [name for name in tuned[0] if name not in merged and storage.get(name) not in by_storage]
    if missing:
        raise DataError(f"merge: mergekit returned no weights for {missing[0]!r}")
    return {name: merged[name] if name in merged else by_storage[storage[name]] for name in tuned[0]}


def merge_model(
    model: torch.nn.Module,
    config: MergeConfig,
    weights_of: Callable[[str], WeightSource],
    score: Callable[[torch.nn.Module], float] | None,
    log: Callable[[str], None],
    scratch: Path,
    seed: int = 0,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Merge ``model`` as ``config`` says, in place and tensor by tensor: ``weights_of(name)`` gives
    ``base``'s or an earlier stage's weights (streamed from its safetensors where it has them),
    ``score(model)`` the dev score (higher is better) when several values compete. Trying several
    values keeps the tuned weights in ``scratch`` (a file in the stage folder, removed afterwards)
    instead of a second copy in memory."""
    model = plain_model(model)
    anchor = weights_of(config.with_model)
    names = merged_names(model, anchor, f"with {config.with_model!r}")
    extras = [weights_of(name) for name in config.add]
    for name, extra in zip(config.add, extras):
        merged_names(model, extra, f"add {name!r}")
    tuned: WeightSource = HeldWeights({name: tensor for name, tensor in model.state_dict().items()})
    if len(config.alpha) > 1 or config.traits.whole_checkpoints:
        tuned = keep_on_disk(model, names, scratch)
    dev_scores: dict[str, float] = {}
    try:
        for alpha in config.alpha:
            apply_merge(model, config, alpha, names, tuned, extras, anchor, seed)
            if score is not None and len(config.alpha) > 1:
                dev_scores[f"{alpha:g}"] = score(model)
                log(f"[merge] {config.method} alpha={alpha:g}: dev {dev_scores[f'{alpha:g}']:.4f}")
        chosen = (
            config.alpha[0]
            if not dev_scores
            else config.alpha[max(range(len(config.alpha)), key=lambda i: (dev_scores[f"{config.alpha[i]:g}"], -i))]
        )
        if chosen != config.alpha[-1]:
            apply_merge(model, config, chosen, names, tuned, extras, anchor, seed)
    finally:
        scratch.unlink(missing_ok=True)
    log(f"[merge] {config.method} with {config.with_model!r}: alpha {chosen:g}")
    return model, {
        "method": config.method,
        "with": config.with_model,
        "add": config.add,
        "alpha": chosen,
        "dev_scores": dev_scores,
    }


def keep_on_disk(model: torch.nn.Module, names: list[str], scratch: Path) -> WeightSource:
    """The tuned tensors written once to ``scratch`` and read back one at a time."""
    from safetensors.torch import save_file

    state = model.state_dict()
    save_file({name: state[name].detach().contiguous() for name in names}, str(scratch))
    return SafetensorsWeights([scratch])


@torch.no_grad()
def apply_merge(
    model: torch.nn.Module,
    config: MergeConfig,
    alpha: float,
    names: list[str],
    tuned: WeightSource,
    extras: list[WeightSource],
    anchor: WeightSource,
    seed: int,
) -> None:
    """Write the merge at ``alpha`` into the model's tensors, one tensor at a time (TIES/DARE:
    mergekit merges whole checkpoints)."""
    state = model.state_dict()
    entry = MERGE_METHODS.get(config.method)
    if entry.traits.whole_checkpoints:
        held = [{name: source[name] for name in names} for source in (tuned, *extras)]
        merged = entry.impl(config, alpha, model, held, {name: anchor[name] for name in names}, seed)
        for name in names:
            state[name].copy_(merged[name])
        return
    for name in names:
        target = state[name]
        parts = [tuned[name].to(target.device), *(extra[name].to(target.device) for extra in extras)]
        target.copy_(merge_tensor(config, alpha, parts, anchor[name].to(target.device)))
