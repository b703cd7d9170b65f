"""The ``stagewise`` command line.

Every user error (bad recipe key, missing file, malformed row) ends in one line on
stderr and exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Sequence

import yaml
from pydantic import Field

from .errors import StagewiseError
from .options import OutputFile, OutputFolder, command_options
from .schema import StrictModel

RECIPE_DIRS = [Path("recipes"), Path(__file__).resolve().parents[2] / "recipes"]


def find_recipe(name: str) -> Path:
    """A path, or the name of a bundled recipe (``quickstart`` -> recipes/quickstart.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in RECIPE_DIRS:
        candidate = folder / (name if name.endswith(".yaml") else f"{name}.yaml")
        if candidate.is_file():
            return candidate
    raise StagewiseError(f"{name}: recipe file not found (see `stagewise recipes` for the bundled ones)")


def bundled_recipes() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for folder in RECIPE_DIRS:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            if path.stem in found:
                continue
            try:
                description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            except yaml.YAMLError:
                description = "(invalid YAML)"
            found[path.stem] = (path, " ".join(str(description).split()))
    return found


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_recipe, recipe_to_dict
    from .sharding import check_shardable

    recipe = load_recipe(find_recipe(args.recipe), args.overrides)
    check_shardable(recipe)
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_recipe
    from .engine import run_recipe
    from .report import print_run_summary

    path = find_recipe(args.recipe)
    recipe = load_recipe(path, args.overrides)
    result = run_recipe(recipe, recipe_path=str(path), log=_log, force=args.force)
    from .distributed import is_main_process

    if is_main_process():  # one summary, not one per rank
        print_run_summary(result.manifest)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled recipes")
    table.add_column("name")
    table.add_column("description")
    for name, (_, description) in bundled_recipes().items():
        table.add_row(name, description)
    Console().print(table)
    return 0


class EvalOptions(StrictModel):
    out: OutputFile | None = None


class CompareOptions(StrictModel):
    out: OutputFolder


class AuditOptions(StrictModel):
    out: OutputFolder
    fail_if_drop: float | None = Field(default=None, ge=0, le=1)  # in score units (accuracy-like probes)
    bootstrap: int = Field(default=2000, ge=100, le=100_000)
    lm_eval_limit: int | None = Field(default=None, ge=1)


REGRESSION_STATUS = 3  # `stagewise audit --fail-if-drop`: a probe dropped by more, its interval excluding 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import DEFAULT_PROMPTS, DEFAULT_SUITE, AuditRequest, regressions, run_audit
    from .audit.report import write_audit

    options = command_options(AuditOptions, args)
    default = [] if args.lm_eval else [str(DEFAULT_SUITE)]  # lm-eval tasks alone, unless suites are named too
    suites = [str(find_recipe(name)) for name in args.suite] if args.suite else default
    request = AuditRequest(
        args.base,
        args.tuned,
        suites,
        args.prompts or DEFAULT_PROMPTS,
        options.bootstrap,
        args.lm_eval or [],
        options.lm_eval_limit,
    )
    audit = run_audit(request, log=_log)
    written = write_audit(Path(options.out), audit)
    print((Path(options.out) / "audit.md").read_text(), end="")
    print(f"wrote {', '.join(map(str, written))}")
    if options.fail_if_drop is None:
        return 0
    failed = [(t["model"], name) for t in audit["tuned"] for name in regressions(t, options.fail_if_drop)]
    for model, name in failed:
        print(
            f"regression: {model}: {name} dropped by more than {options.fail_if_drop} (95% interval "
            "excludes no change)",
            file=sys.stderr,
        )
    return REGRESSION_STATUS if failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import write_comparison
    from .config import load_recipe
    from .engine import run_recipe
    from .report import build_report

    out = Path(command_options(CompareOptions, args).out)
    recipes = []  # every recipe checked before any is run
    for name in args.recipes:
        path = find_recipe(name)
        recipe = load_recipe(path, args.overrides)
        if recipe.evaluation is None:
            raise StagewiseError(f"{path}: compare needs an 'evaluation' section (target and retention probes)")
        recipes.append((path, recipe))
    reports = {}
    for path, recipe in recipes:
        _log(f"[compare] {path}")
        result = run_recipe(recipe, recipe_path=str(path), log=_log)
        reports[path.stem] = build_report(result.manifest)
    rows = write_comparison(reports, out)
    print((out / "compare.md").read_text(), end="")
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.png'} ({len(rows)} recipes)")
    return 0


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise StagewiseError(f"--seeds: expected comma-separated integers, got {text!r}") from None


def cmd_study(args: argparse.Namespace) -> int:
    from .study import load_study, plan, run_study, select_arms, select_seeds

    study = load_study(args.study, find_recipe)
    if args.arms is not None:
        names = [name.strip() for name in args.arms.split(",") if name.strip()]
        if not names:
            raise StagewiseError(f"--arms: expected comma-separated arm names, got {args.arms!r}")
        study = select_arms(study, names)
    if args.seeds is not None:
        study = select_seeds(study, parse_seeds(args.seeds))
    if args.dry_run:
        runs = plan(study)
        for run, done in runs:
            print(f"{'done   ' if done else 'to run '} {run.point:30s} seed {run.seed:<4d} {run.recipe.output_dir}")
        print(f"{sum(done for _, done in runs)} of {len(runs)} runs done")
        return 0
    results = run_study(study, log=_log)
    out = study.report_dir
    print((out / "study.md").read_text(), end="")
    cost = results["cost"]
    print(
        f"wall {cost['wall_s'] / 60:.1f} min: training {cost['train_s'] / 60:.1f} min, "
        f"evaluation {cost['eval_s'] / 60:.1f} min"
    )
    written = [out / name for name in ("study.json", "study.md", "study.png", "forest.png") if (out / name).is_file()]
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_suite
    from .data import load_dataset_config
    from .eval import evaluate_suite
    from .io import atomic_write_json
    from .models import load_model_and_tokenizer
    from .precision import autocast
    from .report import GROUPS

    command_options(EvalOptions, args)
    recipe = load_suite(find_recipe(args.suite), task=args.task)
    evaluation = recipe.evaluation
    assert evaluation is not None  # a suite is an evaluation section
    used = {task.data for group in GROUPS for task in getattr(evaluation, group) if task.data}
    rows = {name: load_dataset_config(name, recipe.datasets[name]).rows for name in used}
    model_cfg = recipe.model.model_copy(update={"model_name_or_path": args.model})
    precision = recipe.performance.precision
    model, tokenizer = load_model_and_tokenizer(model_cfg, precision=precision)
    with autocast(precision):
        results = evaluate_suite(model, tokenizer, evaluation, recipe.datasets, rows)
    for group in GROUPS:
        for name, result in results[group].items():
            print(f"{group:9s} {name:20s} {result['metric']:12s} {result['score']:.4f}  (n={result['n']})")
    if args.out:
        atomic_write_json(args.out, {"model": args.model, "suite": args.suite, "results": results})
        print(f"wrote {args.out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .config import load_recipe
    from .plan import load_model_config, parse_memory, plan_recipe, render_plan

    if args.devices < 1:
        raise StagewiseError(f"--devices: expected a whole number >= 1, got {args.devices}")
    if args.seq_len is not None and args.seq_len < 1:
        raise StagewiseError(f"--seq-len: expected a whole number >= 1, got {args.seq_len}")
    memory = parse_memory(args.device_memory) if args.device_memory else None
    if args.audit:
        return plan_audit(args, memory)
    if args.recipe is None:
        raise StagewiseError("plan: give a recipe (or --audit)")
    recipe = load_recipe(find_recipe(args.recipe), args.overrides)
    config = load_model_config(recipe.model, args.model)
    plans = plan_recipe(recipe, config, memory, args.devices, args.seq_len)
    print(render_plan(plans, memory, args.model or recipe.model.model_name_or_path))
    return 0


def plan_audit(args: argparse.Namespace, memory: float | None) -> int:
    from .audit import DEFAULT_SUITE
    from .config import load_suite
    from .plan import load_model_config
    from .plan.audit import audit_footprint, render_audit_plan

    suite = load_suite(find_recipe(args.recipe) if args.recipe else DEFAULT_SUITE)
    config = load_model_config(suite.model, args.model)
    footprint = audit_footprint(suite, config, memory, args.seq_len)
    print(render_audit_plan(footprint, memory, args.model or suite.model.model_name_or_path))
    return 0


def cmd_bench_peak(args: argparse.Namespace) -> int:
    from .speed import device_name, peak_flops

    for dtype in args.dtypes:
        print(f"{device_name()} {dtype}: {peak_flops(dtype, remeasure=True) / 1e9:.1f} GFLOP/s (measured matmul peak)")
    return 0


def _close_progress_bars() -> None:
    """A stage stopped mid-epoch leaves its bar open: close it so the error starts its own line."""
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


BUILTIN_COMMANDS = ("run", "validate", "recipes", "compare", "study", "bench-peak", "eval", "plan", "audit")


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    """The command line; ``with_plugins`` adds the commands strategies register (importing every
    strategy, which a built-in command such as ``recipes`` does not need to wait for)."""
    parser = argparse.ArgumentParser(prog="stagewise", description="Staged fine-tuning without forgetting.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, handler, help_text in (
        ("run", cmd_run, "train every stage of a recipe (resumes finished/interrupted stages)"),
        ("validate", cmd_validate, "check a recipe and print it with every default filled in"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("recipe", help="recipe file, or the name of a bundled recipe")
        command.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.0.lr=1e-4")
        command.set_defaults(handler=handler)
        if name == "run":
            command.add_argument(
                "--force",
                action="store_true",
                help="write into an output_dir that holds files stagewise did not write "
                "(or an unreadable manifest), replacing what is in the way",
            )
    sub.add_parser("recipes", help="list the bundled recipes").set_defaults(handler=cmd_recipes)
    compare = sub.add_parser("compare", help="run several recipes and plot target score vs retention")
    compare.add_argument("recipes", nargs="+", help="recipe files or bundled recipe names")
    compare.add_argument("--out", default="runs/compare", help="folder for compare.json/.md/.png")
    compare.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="key=value override applied to every recipe (repeatable)",
    )
    compare.set_defaults(handler=cmd_compare)
    study = sub.add_parser("study", help="arms x seeds: paired per-item comparisons with 95%% intervals")
    study.add_argument("study", help="study file (YAML: arms, seeds, baseline, output_dir)")
    study.add_argument("--dry-run", action="store_true", help="list the runs and which are already done")
    study.add_argument(
        "--arms",
        help="comma-separated arms to run and report (the baseline is always included); "
        "the report goes to OUTPUT_DIR/arms-<names>/",
    )
    study.add_argument(
        "--seeds",
        help="comma-separated seeds of the study file to run and report; the report goes to OUTPUT_DIR/seeds-<seeds>/",
    )
    study.set_defaults(handler=cmd_study)
    plan = sub.add_parser("plan", help="estimate each stage's peak memory per device from the model config")
    plan.add_argument(
        "recipe",
        nargs="?",
        help="recipe file, or the name of a bundled recipe (with --audit: the "
        "audit's suite, default suites/audit.yaml)",
    )
    plan.add_argument("--audit", action="store_true", help="plan `stagewise audit` of a base/tuned pair instead")
    plan.add_argument("overrides", nargs="*", help="key=value overrides, e.g. performance.gradient_checkpointing=true")
    plan.add_argument("--model", help="plan for this model instead: a config.json, a folder or a (cached) hub id")
    plan.add_argument("--devices", type=int, default=1, help="devices the weights are sharded over (FSDP)")
    plan.add_argument("--device-memory", help="memory of one device, e.g. 80GB: adds a verdict and the cheapest fix")
    plan.add_argument("--seq-len", type=int, help="tokens per sequence (default: each stage's max_length)")
    plan.set_defaults(handler=cmd_plan)
    peak = sub.add_parser("bench-peak", help="measure this machine's matmul FLOP/s (the MFU denominator)")
    peak.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"]
    )
    peak.set_defaults(handler=cmd_bench_peak)
    evaluate = sub.add_parser("eval", help="score any checkpoint on a recipe's evaluation probes")
    evaluate.add_argument("--model", required=True, help="model folder, hub id or bundled name")
    evaluate.add_argument("--suite", required=True, help="recipe (file or bundled name) whose probes to run")
    evaluate.add_argument("--task", choices=["causal_lm", "sequence_classification"], help="override model.task")
    evaluate.add_argument("--out", help="write the scores to this JSON file")
    evaluate.set_defaults(handler=cmd_eval)
    audit = sub.add_parser("audit", help="what a fine-tune forgot: base vs tuned, paired, with examples")
    audit.add_argument("--base", required=True, help="the model before fine-tuning: folder, hub id or bundled name")
    audit.add_argument(
        "--tuned",
        required=True,
        nargs="+",
        help="fine-tuned folder(s): full weights, a stage "
        "folder, or a PEFT adapter folder (its base read from adapter_config.json)",
    )
    audit.add_argument(
        "--suite", action="append", help="probe suite (file or bundled recipe; repeatable); default suites/audit.yaml"
    )
    audit.add_argument(
        "--prompts",
        help="KL prompts: a built-in split (name:split) or a JSONL file of instruction rows (default chat:test)",
    )
    audit.add_argument(
        "--lm-eval",
        action="append",
        help="an lm-eval task name or a local task YAML file (repeatable), scored per document; "
        "without --suite only these are audited",
    )
    audit.add_argument("--lm-eval-limit", type=int, help="first N documents of each lm-eval task")
    audit.add_argument("--out", default="audit", help="folder for audit.json and audit.md (default ./audit)")
    audit.add_argument(
        "--fail-if-drop",
        type=float,
        help=f"exit {REGRESSION_STATUS} when a probe's score "
        "drops by more than this with its 95%% interval excluding 0 (a CI regression gate)",
    )
    audit.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    audit.set_defaults(handler=cmd_audit)
    if with_plugins:
        from .registry import COMMANDS, load_plugins

        load_plugins()
        for entry in COMMANDS.entries():  # commands that strategies contribute
            entry.impl(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_plugins=not argv or argv[0] not in BUILTIN_COMMANDS).parse_args(argv)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed stdout shows here, inside the try, not at the interpreter's exit
        return status
    except StagewiseError as err:
        _close_progress_bars()
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stagewise ... | head`: the reader left; end quietly, as a killed-by-SIGPIPE tool would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush is silent
        return 141
    except Exception as err:
        _close_progress_bars()
        reason = no_room(err)
        if reason is not None:
            print(
                f"error: {reason} ({printable(' '.join(str(err).split()))[:200]}); make room and rerun the same "
                "command to resume from the last complete checkpoint",
                file=sys.stderr,
            )
            return 1
        if isinstance(err, OSError) and err.filename:  # a read-only cache or output folder, a file in the way
            print(
                f"error: {printable(str(err.filename))}: {err.strerror or type(err).__name__} (check the folder's "
                "permissions, or move the cache with STAGEWISE_CACHE)",
                file=sys.stderr,
            )
            return 1
        raise


def printable(text: str) -> str:
    """One line without control characters (a NUL or newline from a file name is shown escaped)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


NO_ROOM = {  # errno, the C library's message, what it means here
    errno.ENOSPC: ("No space left on device", "no space left on device"),
    errno.EFBIG: ("File too large", "a file reached the file-size limit (ulimit -f)"),
    errno.EDQUOT: ("Disk quota exceeded", "the disk quota is exceeded"),
}


def no_room(err: BaseException) -> str | None:
    """What ran out, for a full disk, a file-size limit or a quota, from Python I/O or as the message
    of a library's own error (safetensors' Rust writer: "... No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno in NO_ROOM:
        return NO_ROOM[err.errno][1]
    return next((meaning for message, meaning in NO_ROOM.values() if message in str(err)), None)


if __name__ == "__main__":
    sys.exit(main())
