"""Run every (arm, sweep value, seed) of a study through the normal engine, then analyse.

Each run has its own output folder under ``<output_dir>/runs/``, so finished runs are reused
(by config hash) and an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import ValidationError

from ..config import Recipe, recipe_to_dict
from ..data import load_dataset_config
from ..engine.identity import stage_hashes
from ..engine.run_folder import read_manifest
from ..errors import OutputError, StagewiseError
from ..eval.evaluator import evaluation_problem
from ..io import atomic_write_json, atomic_write_text
from ..manifest import RunManifest, as_manifest
from ..page import write_page
from ..written import Written
from .analysis import analyse
from .config import Study, StudyRun
from .page import study_sections
from .report import plot_forest, plot_frontier, plot_gain_retention, study_markdown


def is_complete(run: StudyRun) -> bool:
    """Finished with exactly this recipe and the stage hashes the engine would compute now (over
    config and data content), so "done" means the engine will reuse it rather than retrain. The
    recorded recipe is read through today's schema, so a recipe key added since (with its default)
    does not by itself make a finished run look unfinished."""
    try:
        manifest = as_manifest(read_manifest(Path(run.recipe.output_dir)))
        recorded = recipe_to_dict(Recipe.model_validate(manifest.recipe))
    except (OutputError, ValidationError):
        return False
    stages = manifest.stages
    if not (
        recorded == recipe_to_dict(run.recipe)
        and len(stages) == len(run.recipe.stages)
        and all(stage.status == "completed" for stage in stages)
        and items_intact(Path(run.recipe.output_dir), manifest)
    ):
        return False
    try:
        datasets = {name: load_dataset_config(name, cfg) for name, cfg in run.recipe.datasets.items()}
    except StagewiseError:
        return False  # the run itself will say what is wrong with the data
    return [stage.config_hash for stage in stages] == stage_hashes(run.recipe, datasets)


def items_intact(run_dir: Path, manifest: RunManifest) -> bool:
    """Every per-item file the run recorded is as it wrote it (a truncated or edited one makes the
    run unfinished: rerunning it scores that point again)."""
    evaluations = [manifest.base_evaluation] + [
        evaluation
        for stage in manifest.stages
        for evaluation in (stage.evaluation, *(p.evaluation for p in stage.curve))
    ]
    return all(evaluation_problem(run_dir, evaluation) is None for evaluation in evaluations)


def run_versions(manifests: Iterable[RunManifest]) -> dict[str, list[str]]:
    """Per recorded package, the versions the study's runs were made with (one each, unless the
    runs were made under different installs; runs made before versions were recorded add none)."""
    found: dict[str, set[str]] = {}
    for manifest in manifests:
        for package, version in manifest.versions.items():
            found.setdefault(package, set()).add(version or "not installed")
    return {package: sorted(versions) for package, versions in found.items()}


def plan(study: Study) -> list[tuple[StudyRun, bool]]:
    return [(run, is_complete(run)) for run in study.runs]


def cost(manifest: RunManifest) -> tuple[float, float]:
    """(training seconds, evaluation seconds) spent by one run as recorded in its manifest: the
    probes at every point and the forgetting predictor's KL (recorded since it carries ``seconds``);
    a reused base-score cache costs nothing."""
    train = sum(stage.wall_time_s for stage in manifest.stages)
    evaluate = manifest.base_eval_time_s + sum(
        stage.eval_time_s
        + sum(point.eval_time_s for point in stage.curve)
        + (stage.kl_to_entering or {}).get("seconds", 0.0)
        for stage in manifest.stages
    )
    return train, evaluate


def run_study(study: Study, log: Callable[[str], None]) -> dict[str, Any]:
    from ..engine import run_recipe

    check_reports(study.report_dir)
    manifests: dict[StudyRun, RunManifest] = {}
    started = time.perf_counter()
    for number, (run, done) in enumerate(plan(study), start=1):
        label = f"{run.point} seed {run.seed}"
        log(f"[study] run {number}/{len(study.runs)}: {label}{' (done, reused)' if done else ''}")
        result = run_recipe(run.recipe, recipe_path=str(run.recipe_path), log=log)
        manifests[run] = as_manifest(result.manifest)
    wall = time.perf_counter() - started
    results = analyse(study, manifests)
    train, evaluate = map(sum, zip(*(cost(manifest) for manifest in manifests.values())))
    results["cost"] = {
        "wall_s": round(wall, 1),
        "train_s": round(train, 1),
        "eval_s": round(evaluate, 1),
        "runs": len(study.runs),
    }
    results["versions"] = run_versions(manifests.values())
    out = study.report_dir
    check_reports(out)  # again: the runs took a while
    written = Written(out)
    written.record(*REPORTS)
    atomic_write_json(out / "study.json", results)
    plot_gain_retention(results, out / "study.png")
    plot_forest(results, out / "forest.png")
    plot_frontier(results, out / "frontier.png")
    markdown = study_markdown(results)
    atomic_write_text(out / "study.md", markdown)
    intro = f"{len(study.runs)} runs; baseline '{results['baseline']}'."
    title = f"stagewise study: {Path(results['study']).stem}"
    write_page(out / "report.html", title, intro, study_sections(results, study.runs), markdown)
    for name in REPORTS:
        if (out / name).is_file():
            written.record_content(name)
    return results


REPORTS = ("study.json", "study.png", "forest.png", "frontier.png", "study.md", "report.html")


def check_reports(folder: Path) -> None:
    """A study overwrites only reports it wrote and nobody has edited since; one line otherwise."""
    written = Written(folder)
    for name in REPORTS:
        path = folder / name
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not written.is_ours(name)):
            raise OutputError(
                f"{path}: stagewise did not write this file (or it was edited since) and the study "
                "would overwrite it; move it away"
            )
