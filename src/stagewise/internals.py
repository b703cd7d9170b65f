"""The library internals stagewise leans on, listed in one place, and the versions installed.

stagewise overrides private ``Trainer`` methods (sharded and adapter checkpoints, the replay
sampler), reads attributes the Trainer sets but does not document, and patches one TRL module
function (the KL reference of GRPO/RLOO). None of these is a public API: an upgrade may change or
remove it. Every such use is declared here with the parameters stagewise relies on, and
``tests/test_internals.py`` checks each against the installed libraries, so an upgrade that breaks
one fails in one test, naming it, rather than deep inside a run. ``pyproject.toml`` caps these
libraries at the highest versions the suite passed with; ``constraints.txt`` pins the exact ones.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    """One private name: ``owner`` (``module`` or ``module:Class``), its attribute ``name``, the
    leading parameters stagewise passes or overrides (None: not called, only replaced or read), and
    where stagewise uses it."""

    owner: str
    name: str
    parameters: tuple[str, ...] | None
    used_by: str


TRAINER = "transformers:Trainer"
INTERNALS = (
    Internal(TRAINER, "_get_train_sampler", ("self", "train_dataset"), "trainers: a stage's own sampler (mixtures)"),
    Internal(TRAINER, "_save_optimizer_and_scheduler", ("self", "output_dir"), "trainers: sharded checkpoints"),
    Internal(TRAINER, "_load_optimizer_and_scheduler", ("self", "checkpoint"), "trainers: sharded resume"),
    Internal(TRAINER, "_load_best_model", ("self",), "trainers: sharded best-model reload"),
    Internal(TRAINER, "_save", ("self", "output_dir", "state_dict"), "trainers: adapter and sharded saves"),
    Internal(TRAINER, "_load_from_checkpoint", ("self", "resume_from_checkpoint", "model"), "trainers: resume"),
    Internal(TRAINER, "_defer_fsdp_gradient_reduction", ("self",), "trainers: gradient accumulation on shards"),
    Internal(TRAINER, "training_step", ("self", "model", "inputs", "num_items_in_batch"), "trainers: penalties"),
    Internal(TRAINER, "current_gradient_accumulation_steps", None, "trainers: a penalty's share per micro-batch"),
    Internal("trl.trainer.grpo_trainer", "create_model_from_path", None, "strategies/rlhf: GRPO's KL reference"),
    Internal("trl.trainer.rloo_trainer", "create_model_from_path", None, "strategies/rlhf: RLOO's KL reference"),
)

# whose versions decide what a run computes: recorded in every run manifest and study report
RECORDED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets")


def _owner(path: str) -> object:
    module_name, _, class_name = path.partition(":")
    owner: object = importlib.import_module(module_name)
    return getattr(owner, class_name) if class_name else owner


def _set_in_init(cls: type, name: str) -> bool:
    """An instance attribute the class's ``__init__`` (or a method it calls) assigns: read from source."""
    return any(f"self.{name} =" in inspect.getsource(klass) for klass in cls.__mro__ if klass.__module__ != "builtins")


def internal_problem(internal: Internal) -> str | None:
    """Why the installed libraries do not offer ``internal`` as stagewise uses it, else None."""
    where = f"{internal.owner}.{internal.name} (used by {internal.used_by})"
    try:
        owner = _owner(internal.owner)
    except (ImportError, AttributeError) as err:
        return f"{where}: {internal.owner} cannot be imported ({err})"
    if not hasattr(owner, internal.name):
        if isinstance(owner, type) and internal.parameters is None and _set_in_init(owner, internal.name):
            return None
        return f"{where}: no longer exists"
    if internal.parameters is None:
        return None
    found = tuple(inspect.signature(getattr(owner, internal.name)).parameters)
    if found[: len(internal.parameters)] != internal.parameters:
        return f"{where}: parameters are now {found}, stagewise expects {internal.parameters} first"
    return None


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package in :data:`RECORDED_PACKAGES` (None: not installed)."""
    versions: dict[str, str | None] = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
