"""``metric: lm_eval``: standard benchmarks through EleutherAI's lm-evaluation-harness (PyPI
``lm-eval``), run on the stage's model in memory through its Python API.

``tasks`` names lm-eval tasks (``mmlu``, ``arc_easy``, ``hellaswag``, ``gsm8k`` ... with internet,
or the user's own task YAMLs in ``include_path`` over local files, offline). The probe's score is
the mean over tasks of each task's first reported metric (``acc``, ``exact_match`` ...), with its
stderr; every document is an item (``task:doc_id``) so studies pair lm-eval probes like any other.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import DataError, RecipeError
from ..registry import METRICS, MetricTraits

# lm-eval's metric keys look like "acc,none"; these are read first, in this order
PREFERRED = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bleu")


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None) -> Any:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RecipeError("metric 'lm_eval' needs the lm-eval package (pip install 'stagewise[lm-eval]')") from None
    return TaskManager(include_path=include_path, verbosity="ERROR")


def check_probe(task: Any) -> tuple[str, str] | None:
    """Validation of an lm_eval probe: tasks given and known to lm-eval, include_path a folder."""
    from pathlib import Path

    if not task.tasks:
        return "tasks", "metric 'lm_eval' needs 'tasks' (lm-eval task names, e.g. [arc_easy])"
    if task.include_path and not Path(task.include_path).is_dir():
        return "include_path", f"folder {task.include_path!r} not found"
    try:
        check_tasks(task.tasks, task.include_path)
    except RecipeError as err:
        return "tasks", str(err)
    return None


def check_tasks(tasks: list[str], include_path: str | None) -> None:
    """One line for a task lm-eval does not know (raised while the recipe is validated)."""
    manager = task_manager(include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(task, manager.all_tasks, n=1) for task in unknown]
        shown = ", ".join(f"{task!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for task, h in zip(unknown, hints))
        raise RecipeError(
            f"unknown lm-eval task {shown}" + ("" if include_path else "; custom tasks need include_path")
        )


def _main_metric(results: dict[str, Any]) -> tuple[str, float, float | None]:
    values = {
        key.split(",")[0]: value
        for key, value in results.items()
        if "," in key and isinstance(value, (int, float)) and "_stderr" not in key
    }
    name = next((m for m in PREFERRED if m in values), None) or next(iter(sorted(values)), None)
    if name is None:
        raise DataError(f"lm-eval reported no numeric metric ({sorted(results)})")
    stderr = next((v for k, v in results.items() if k.startswith(f"{name}_stderr,")), None)
    return name, float(values[name]), float(stderr) if isinstance(stderr, (int, float)) else None


@METRICS.register("lm_eval", traits=MetricTraits(needs_data=False, check=check_probe))
def lm_eval_task(model: Any, tokenizer: Any, task: Any, dataset: Any, rows: Any, evaluation: Any) -> dict[str, Any]:
    """The tasks' main metrics averaged; lm-eval loads its own data (``rows`` is empty)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(task.include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=evaluation.batch_size, max_length=evaluation.max_length)
    try:
        output = simple_evaluate(
            model=lm,
            tasks=list(task.tasks),
            num_fewshot=task.num_fewshot,
            limit=task.limit,
            task_manager=manager,
            log_samples=True,
            verbosity="ERROR",
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
    except (ConnectionError, OSError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(
            f"evaluation {task.name!r}: lm-eval could not load the data of {task.tasks} (offline? {first})"
        ) from None
    scores: dict[str, float] = {}
    items: list[dict[str, Any]] = []
    means = []
    for name in task.tasks:
        if name not in output["results"]:
            raise DataError(
                f"evaluation {task.name!r}: lm-eval returned no result for task {name!r} "
                "(a group name? list its subtasks)"
            )
        metric, value, stderr = _main_metric(output["results"][name])
        scores[f"{name}_{metric}"] = value
        if stderr is not None:
            scores[f"{name}_{metric}_stderr"] = stderr
        means.append(value)
        items += [
            {"id": f"{name}:{sample['doc_id']}", "score": float(sample[metric])}
            for sample in output.get("samples", {}).get(name, [])
            if isinstance(sample.get(metric), (int, float))
        ]
    return {"score": sum(means) / len(means), "scores": scores, "items": items, "n": len(items)}
