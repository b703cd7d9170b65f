"""The private library names stagewise relies on (stagewise.internals) exist in the installed versions
with the parameters it uses; the declared list covers every private Trainer method stagewise overrides."""
from __future__ import annotations

import inspect

import pytest

from stagewise.internals import INTERNALS, Internal, installed_versions, internal_problem


@pytest.mark.parametrize("internal", INTERNALS, ids=[f"{i.owner}.{i.name}" for i in INTERNALS])
def test_each_internal_exists_with_the_parameters_stagewise_uses(internal):
    assert internal_problem(internal) is None


def test_a_changed_internal_is_named_with_what_changed():
    moved = Internal("transformers:Trainer", "_save", ("self", "folder"), "a test")
    assert "parameters are now ('self', 'output_dir', 'state_dict')" in internal_problem(moved)
    gone = Internal("transformers:Trainer", "_no_such_method", ("self",), "a test")
    assert internal_problem(gone).endswith("no longer exists")
    assert "cannot be imported" in internal_problem(Internal("trl.no_such_module", "x", None, "a test"))


def test_every_private_method_the_trainer_overrides_is_declared():
    from stagewise.trainers import StageTrainerMixin

    overridden = {name for name, value in vars(StageTrainerMixin).items()
                  if name.startswith("_") and not name.startswith("__") and inspect.isfunction(value)}
    declared = {internal.name for internal in INTERNALS if internal.owner == "transformers:Trainer"}
    assert overridden and overridden <= declared, overridden - declared


def test_installed_versions_are_read():
    import torch

    versions = installed_versions()
    assert versions["torch"] == torch.__version__ and versions["transformers"]


def test_the_pinned_versions_lie_within_pyprojects_bounds_and_install_uses_them():
    """constraints.txt (what the suite passed with) satisfies pyproject.toml, each library whose
    internals stagewise uses has an upper bound, and scripts/install.sh installs within the pins."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    requirements = {Requirement(text).name: Requirement(text)
                    for text in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    pins = dict(line.split("==") for line in (root / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for package in ("transformers", "trl", "accelerate", "peft"):
        assert any(spec.operator in ("<", "<=") for spec in requirements[package].specifier), package
    for package, requirement in requirements.items():
        if package in pins:
            assert requirement.specifier.contains(pins[package]), (package, pins[package], str(requirement))
    assert '-c constraints.txt' in (root / "scripts/install.sh").read_text()
