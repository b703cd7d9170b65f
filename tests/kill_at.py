"""Run a recipe and SIGKILL this very process at a chosen point (used by test_kill_resume.py and
benchmarks/kill_stress.py): ``python kill_at.py RECIPE.json PHASE N``.

Phases: ``step`` (after optimizer step N), ``checkpoint`` (checkpoint-N: weights written, the rest
not), ``seal`` (checkpoint-N complete on disk, not yet marked complete), ``final-save`` (the N-th
stage's final weights half written), ``eval`` (during the N-th evaluation: 1 = base model),
``manifest`` (the N-th manifest write: temp file written, not yet renamed), ``none``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(phase: str, n: int) -> list:
    import torch
    import transformers.modeling_utils as modeling_utils
    from transformers import TrainerCallback

    import stagewise.engine.checkpoints as checkpoints
    import stagewise.eval.evaluator as evaluator
    import stagewise.io as stagewise_io

    callbacks: list = []
    if phase == "step":
        class KillAtStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == n:
                    die()
        callbacks.append(KillAtStep())
    elif phase == "checkpoint":
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if str(f).endswith("optimizer.pt") and f"checkpoint-{n}" in str(f):
                die()
            return original_save(obj, f, *args, **kwargs)
        torch.save = save
    elif phase == "seal":
        original_on_save = checkpoints.CheckpointSeal.on_save

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == n:
                die()
            return original_on_save(self, args, state, control, **kwargs)
        checkpoints.CheckpointSeal.on_save = on_save
    elif phase == "final-save":
        original_file = modeling_utils.safe_save_file
        count = [0]

        def save_file(tensors, filename, *args, **kwargs):
            original_file(tensors, filename, *args, **kwargs)
            if "checkpoint-" not in str(filename):
                count[0] += 1
                if count[0] == n:
                    with open(filename, "r+b") as handle:
                        handle.truncate(os.path.getsize(filename) // 2)
                    die()
        modeling_utils.safe_save_file = save_file
    elif phase == "eval":
        original_suite = evaluator.evaluate_suite
        count = [0]

        def evaluate_suite(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                die()
            return original_suite(*args, **kwargs)
        evaluator.evaluate_suite = evaluate_suite
    elif phase == "manifest":
        original_replace = stagewise_io.os.replace
        count = [0]

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("manifest.json"):
                count[0] += 1
                if count[0] == n:
                    die()
            return original_replace(src, dst, *args, **kwargs)
        stagewise_io.os.replace = replace
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase}")
    return callbacks


def main() -> None:
    recipe_path, phase, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from stagewise.config import recipe_from_dict
    from stagewise.engine import run_recipe

    callbacks = install(phase, n)
    recipe = recipe_from_dict(json.loads(Path(recipe_path).read_text()))
    run_recipe(recipe, callbacks=callbacks, log=lambda message: None)


if __name__ == "__main__":
    main()
