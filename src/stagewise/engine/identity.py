"""What a run's stages are, as hashes: the starting model's identity and each stage's hash over
its settings (defaults left out), its data content and the previous stage's hash. A finished stage
is reused only while its hash is today's (and a study counts a run as done the same way)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..config import Recipe, StageConfig, config_hash, plugin_configs
from ..data import LoadedDataset
from ..io import file_sha256
from ..precision import resolve_precision


def stage_inputs(stage: StageConfig) -> list[str]:
    """The datasets a stage reads: its training data, its held-out data, and any its entries name
    (e.g. the data a regularizer estimates its weights on)."""
    named = [name for _, config in plugin_configs(stage) for name in config.datasets_named()]
    named += stage.merge.select.data if stage.merge and stage.merge.select else []
    return list(dict.fromkeys(stage.data + (stage.eval.data if stage.eval else []) + named))


def head_seed(recipe: Recipe) -> int:
    """The seed of weights the starting checkpoint lacks (a classification head): the run's first
    stage seed, so a study's seeds vary the head as they vary training."""
    return recipe.stages[0].seed


def seed_model_key(recipe: Recipe) -> str:
    """Identity of the run's starting model and how it computes: its recipe entry (keys at their
    defaults left out, so a new key with a default changes no hash), for a local folder its weights,
    for a classifier the seed of its new head, and the precision it trains in."""
    head = [head_seed(recipe)] if recipe.model.task == "sequence_classification" else []
    return config_hash(
        settings_of(recipe.model),
        model_fingerprint(recipe.model.model_name_or_path),
        resolve_precision(recipe.performance.precision),
        *head,
    )


def settings_of(config: Any) -> Any:
    """A config as a hash sees it: its values that differ from their defaults (HASH_SCHEME marks the rule)."""
    return [HASH_SCHEME, config.model_dump(mode="json", exclude_defaults=True)]


HASH_SCHEME = 2  # 2: settings without their defaults (1, before: whole dumps, so every new key retrained all runs)


def stage_hashes(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> list[str]:
    """Per-stage hash over the starting model, the stage config, its data content, and the previous hash."""
    hashes: list[str] = []
    parent = seed_model_key(recipe)
    for stage in recipe.stages:
        parent = config_hash(parent, settings_of(stage), {n: datasets[n].fingerprint for n in stage_inputs(stage)})
        hashes.append(parent)
    return hashes


def model_fingerprint(name: str) -> Any:
    """A local folder's weights can change under the same path: include their content hashes."""
    folder = Path(name)
    if not folder.is_dir():
        return name
    files = sorted(folder.glob("*.safetensors"))
    return [
        name,
        _weights_sha256(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in files)),
    ]


@functools.lru_cache(maxsize=8)
def _weights_sha256(files: tuple[tuple[str, int, int, int], ...]) -> list[tuple[str, str]]:
    """Hashed once per process for the same files (a run asks for the seed identity several times)."""
    return [(Path(path).name, file_sha256(path)) for path, *_ in files]
