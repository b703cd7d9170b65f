"""A retention guard during training (users of LLaMA-Factory and axolotl ask for it: #1603, PR #3818).

``evaluation.guard: {probe, max_drop, every_steps, items}``: every ``every_steps`` optimizer steps the
named retention probe is scored on its first ``items`` items and logged (``guard/<probe>``, so it
reaches the ``report_to`` trackers). Its drop is measured from the model entering the stage. When
the drop exceeds ``max_drop`` the stage stops, and the model goes back to the trainable tensors it
had at the last check that passed (held on the CPU: a copy of the trainable tensors); the manifest
entry's ``guard`` records the entering score, each check, and where and why the stage stopped.

Every checkpoint holds the guard's state (its checks so far and the kept tensors: ``guard.json``,
``guard-kept.safetensors``, sealed with the rest), so a resumed stage carries on exactly where the
interrupted one was: the same checks, the same kept weights, stopped if it had stopped. A resumed
stage reads the entering score from the manifest; from a checkpoint without guard state it checks
the checkpoint's weights first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from ..distributed import is_main_process
from ..errors import TrainingError

STATE, KEPT = "guard.json", "guard-kept.safetensors"  # in each checkpoint folder


class RetentionGuard(TrainerCallback):
    def __init__(
        self,
        score: Callable[[Any], float],
        config: Any,
        higher_is_better: bool,
        entry: dict[str, Any],
        log: Callable[[str], None],
    ) -> None:
        self.score, self.config, self.sign, self.log = score, config, 1.0 if higher_is_better else -1.0, log
        self.record = entry.setdefault("guard", {"probe": config.probe, "max_drop": config.max_drop, "checks": []})
        self.kept: dict[str, torch.Tensor] = {}
        self.kept_step = 0
        self.halted = False  # resumed from a checkpoint written after the guard stopped the stage
        self.pending: dict[str, float] = {}

    def extra_logs(self) -> dict[str, float]:
        """The latest check, once, for the Trainer's next log line (read by ``StageTrainerMixin.log``)."""
        pending, self.pending = self.pending, {}
        return pending

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.config.every_steps > state.max_steps:
            raise TrainingError(
                f"evaluation.guard.every_steps: {self.config.every_steps} is more than the stage's "
                f"{state.max_steps} steps: the guard would never check"
            )
        if "entering" not in self.record:
            self.record["entering"] = self.score(model)
            self.log(f"[guard] {self.config.probe}: {self.record['entering']:.4f} entering the stage")
        resumed = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.global_step > 0 and (resumed / STATE).is_file():
            self.restore(resumed, control)
        else:
            self.check(state, control, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.halted:  # the Trainer takes one step before it sees the stop: undo it
            self.put_back(model)
            control.should_training_stop = True
        elif state.global_step % self.config.every_steps == 0:
            self.check(state, control, model)
        self.save_state(args, state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.save_state(args, state, control)

    def save_state(self, args: Any, state: Any, control: Any) -> None:
        """The guard's state into the checkpoint the Trainer is about to write (this step's check
        done; the checkpoint is already journaled as stagewise's, and is sealed with these files)."""
        if not control.should_save or not is_main_process():
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        kept = {"kept_step": self.kept_step, "checks": self.record["checks"], "stopped": self.record.get("stopped")}
        save_file({name: tensor.contiguous() for name, tensor in self.kept.items()}, str(folder / KEPT))
        (folder / STATE).write_text(json.dumps(kept), encoding="utf-8")

    def restore(self, folder: Path, control: Any) -> None:
        saved = json.loads((folder / STATE).read_text(encoding="utf-8"))
        self.kept, self.kept_step = load_file(str(folder / KEPT)), int(saved["kept_step"])
        self.record["checks"] = saved["checks"]
        self.record.pop("stopped", None)
        if saved.get("stopped"):
            self.record["stopped"], self.halted = saved["stopped"], True
            control.should_training_stop = True
        self.log(f"[guard] resumed with {len(saved['checks'])} checks and the weights of step {self.kept_step}")

    def put_back(self, model: Any) -> None:
        """The trainable tensors of the last check that passed."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.kept:
                    param.copy_(self.kept[name].to(param.device))

    def check(self, state: Any, control: Any, model: Any) -> None:
        value = self.score(model)
        drop = self.sign * (self.record["entering"] - value)
        self.record["checks"] = [c for c in self.record["checks"] if c["step"] < state.global_step]
        self.record["checks"].append({"step": state.global_step, "score": value, "drop": drop})
        self.pending = {f"guard/{self.config.probe}": value, f"guard/{self.config.probe}_drop": drop}
        if drop <= self.config.max_drop:
            self.kept = {
                name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
            }
            self.kept_step = state.global_step
            return
        self.put_back(model)
        self.record["stopped"] = {
            "step": state.global_step,
            "drop": drop,
            "kept_step": self.kept_step if self.kept else state.global_step,
            "reason": f"{self.config.probe} dropped {drop:.4f} > max_drop {self.config.max_drop}",
        }
        self.log(
            f"[guard] stopping at step {state.global_step}: {self.record['stopped']['reason']}; keeping the "
            f"weights of step {self.record['stopped']['kept_step']}"
        )
        control.should_training_stop = True
