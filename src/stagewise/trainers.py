"""The trainer slot: what runs a stage's optimisation, given everything the engine prepared.

A trainer entry receives the stage's model (trainable tensors already selected), its rows and
encoded examples, collator, loss, LR plan (optimizer-group split and callbacks), callbacks and
dev sets (:class:`TrainerInputs`) and returns a ``transformers.Trainer`` (or a TRL subclass).
Built with :func:`stage_trainer_class`, every trainer honours the LR rule's optimizer groups
and keeps adapter-wrapped checkpoints whole, so every selector and LR rule works with every
trainer. ``hf`` (the default) is the plain Trainer; strategies register TRL trainers (DPO, ...).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeVar, cast

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .addons import is_peft_model
from .data import ListDataset
from .distributed import barrier
from .errors import TrainingError
from .precision import return_to_storage_dtype, storage_dtype
from .protocols import GroupSplitter, OptimizerMaker, Penalty, TrainerInputs
from .registry import TRAINERS, PluginConfig, Requires
from .sharding import full_optimizer_state, full_state_dict, is_sharded, load_full_optimizer_state, load_full_state_dict

WRAPPED_WEIGHTS = "stagewise-wrapped-model.safetensors"  # exact resume state of an add-on-wrapped model
OPTIMIZER_FILE, SCHEDULER_FILE = "optimizer.pt", "scheduler.pt"  # the Trainer's names
# (groups, TrainingArguments) -> the stage's optimizer entry's optimizer, or None for the Trainer's own

AnyTrainer = TypeVar("AnyTrainer", bound=Trainer)

if TYPE_CHECKING:  # the mixin is only ever combined with a Trainer subclass: the type checker sees it as one
    _TrainerBase = Trainer
else:
    _TrainerBase = object


class StageTrainerMixin(_TrainerBase):
    """Adds to any ``Trainer`` subclass: optimizer groups an LR rule may split (e.g. one per
    layer), a regularizer's penalty on top of whatever loss the trainer computes, a data
    mixture's sampler, and
    checkpoints of an add-on-wrapped model that keep base *and* add-on (PEFT saves only the
    adapter, which would lose a base update made under a frozen prompt on resume). For a model the
    engine sharded (FSDP2), weights and optimizer state are saved and loaded as full, gathered
    state dicts: rank 0 writes them, every rank reads them."""

    def __init__(
        self,
        *args: Any,
        split_groups: GroupSplitter | None = None,
        build_optimizer: OptimizerMaker | None = None,
        penalty: Penalty | None = None,
        train_sampler: torch.utils.data.Sampler | None = None,
        **kwargs: Any,
    ) -> None:
        self.sharded = kwargs.get("model") is not None and is_sharded(kwargs["model"])
        if self.sharded:  # transformers refuses resumable checkpoints of a pre-sharded model: ours gather
            kwargs["args"].save_only_model, save_only_model = True, kwargs["args"].save_only_model
        super().__init__(*args, **kwargs)
        if self.sharded:
            self.args.save_only_model = save_only_model
        self.split_groups = split_groups
        self.build_optimizer = build_optimizer
        self.penalty = penalty
        self.train_sampler = train_sampler

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self) -> Iterator[None]:
        """Gradient accumulation on our FSDP2 shards: hold the reduce-scatter until the last micro-batch.
        The Trainer's own version reads ``config.distributed_config``, which only transformers' sharded
        loading sets (our ``shard_model`` shards a loaded model on a 1-D mesh: no replicas)."""
        if not self.sharded:
            with super()._defer_fsdp_gradient_reduction():
                yield
            return
        model = cast(Any, self.trained_model)
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.train_sampler is not None and train_dataset in (None, self.train_dataset):
            return self.train_sampler
        return super()._get_train_sampler(train_dataset)

    def training_step(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.penalty is not None:  # once per optimizer step over the accumulated micro-batches
            self.penalty.add_gradients(1.0 / self.current_gradient_accumulation_steps)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.penalty is not None and "loss" in logs:
            logs = {**logs, "penalty": self.penalty.value()}
        for callback in self.callback_handler.callbacks:  # e.g. the retention guard's latest check
            logs = {**logs, **getattr(callback, "extra_logs", dict)()}
        super().log(logs, *args, **kwargs)

    @property
    def trained_model(self) -> torch.nn.Module:
        """The model being trained (the Trainer's ``model``, set from construction on)."""
        return cast(torch.nn.Module, self.model)

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate scheduler (the Trainer's ``lr_scheduler``, set once training starts)."""
        return cast(torch.optim.lr_scheduler.LRScheduler, self.lr_scheduler)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's decay / no-decay groups, split by the LR rule, given to the stage's optimizer entry
        (or to the Trainer's optimizer class when the entry leaves it to the Trainer)."""
        if self.optimizer is not None or (self.split_groups is None and self.build_optimizer is None):
            return super().create_optimizer(model)
        opt_model = self.trained_model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        trainable = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in trainable if n in decay], "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
        ]
        groups = self.split_groups(opt_model, groups) if self.split_groups is not None else groups
        built = self.build_optimizer(groups, self.args) if self.build_optimizer is not None else None
        if built is None and self.split_groups is None:  # the Trainer's own optimizer over its own groups
            return super().create_optimizer(model)
        if built is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(
                self.args, cast(PreTrainedModel, opt_model)
            )
            built = optimizer_cls(groups, **optimizer_kwargs)
        self.optimizer = built
        return built

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Sharded: every rank gathers, rank 0 writes a plain ``save_pretrained`` folder (a stage's
        final weights in their storage dtype; a checkpoint's as trained, fp32 masters included)."""
        if not self.sharded:
            return super().save_model(output_dir, _internal_call)
        state = full_state_dict(self.trained_model, None if _internal_call else storage_dtype(self.trained_model))
        if self.args.should_save:
            self._save(output_dir, state_dict=state)
        barrier()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.sharded:
            return super()._save_optimizer_and_scheduler(output_dir)
        state = full_optimizer_state(self.trained_model, unwrapped_optimizer(self.optimizer))
        if self.args.should_save:
            torch.save(state, Path(output_dir) / OPTIMIZER_FILE)
            torch.save(self.scheduler.state_dict(), Path(output_dir) / SCHEDULER_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.sharded or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        folder = Path(checkpoint)
        state = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        load_full_optimizer_state(self.trained_model, unwrapped_optimizer(self.optimizer), state)
        self.scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=True))

    def _load_best_model(self) -> None:
        if not self.sharded:
            return super()._load_best_model()
        load_full_state_dict(self.trained_model, saved_weights(Path(str(self.state.best_model_checkpoint))))

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        if not is_peft_model(self.trained_model):
            return super()._save(output_dir, state_dict)
        from safetensors.torch import save_file

        folder = Path(output_dir or str(self.args.output_dir))
        folder.mkdir(parents=True, exist_ok=True)
        # cloned: some adapters keep parameters as views of one storage (OSF's SVD factors)
        save_file(
            {k: v.detach().contiguous().clone() for k, v in restorable_state(self.trained_model).items()},
            str(folder / WRAPPED_WEIGHTS),
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.sharded:
            return load_full_state_dict(self.trained_model, saved_weights(Path(resume_from_checkpoint)))
        wrapped = Path(resume_from_checkpoint) / WRAPPED_WEIGHTS
        if is_peft_model(self.trained_model) and wrapped.is_file():
            from safetensors.torch import load_file

            saved = load_file(str(wrapped))
            if set(saved) != set(restorable_state(self.trained_model)):
                raise TrainingError(f"{wrapped}: its tensors do not match the model being trained")
            self.trained_model.load_state_dict(saved, strict=False)  # the 4/8-bit base weights are frozen, never saved
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def unwrapped_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``save_pretrained`` folder's safetensors files (read by every rank)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TrainingError(f"{folder}: holds no safetensors weights to load")
    return {name: tensor for file in files for name, tensor in load_file(str(file)).items()}


def restorable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every floating parameter and buffer of a wrapped model by name (tied names too): all that
    training can change. A quantized base's packed weights and their quantization constants are
    left out: they are frozen and come back with the base."""
    named = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    return {name: tensor for name, tensor in named.items() if tensor.is_floating_point()}


def frozen_reference(model: Any) -> Any:
    """A frozen copy of the model entering the stage (None with an adapter: TRL then uses the
    adapter-disabled model as the reference)."""
    if is_peft_model(model):
        return None
    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return_to_storage_dtype(reference)  # not the fp32 master copies mixed precision trains
    return reference


_CLASSES: dict[type, type] = {}


def stage_trainer_class(base: type[AnyTrainer]) -> type[AnyTrainer]:
    """``base`` with :class:`StageTrainerMixin` (one class per base)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Stage{base.__name__}", (StageTrainerMixin, base), {})
    return _CLASSES[base]


@TRAINERS.register("hf", requires=Requires(objectives=("lm", "classification")))
def hf_trainer(config: PluginConfig, inputs: TrainerInputs) -> Trainer:
    """transformers' Trainer on the encoded examples, with the stage's loss."""
    return stage_trainer_class(Trainer)(
        model=inputs.model,
        args=inputs.args_for(TrainingArguments),
        train_dataset=ListDataset(inputs.examples),
        eval_dataset=inputs.dev,
        data_collator=inputs.collator,
        processing_class=inputs.tokenizer,
        compute_loss_func=inputs.loss,
        callbacks=inputs.callbacks,
        **inputs.stage_features(),
    )
