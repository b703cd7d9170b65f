"""What a stage holds in memory, per device, estimated from the model's config alone.

The model is built on the meta device (shapes, no weights) and each stage's selector is applied
to it as the engine would (so HFT's half, LoRA's adapters and a layer choice are counted exactly).
Per device, for ``N`` devices (FSDP shards weights, gradients and optimizer state; activations
are per device):

- weights: stored elements × storage bytes (4-bit NF4: ½ byte + one absmax byte per 64 with
  double quantization, 4 bytes per 64 without; 8-bit: 1 byte + a 4-byte scale per row); under
  mixed precision the trained base tensors are fp32 master copies;
- gradients: trained elements × their bytes; optimizer state by ``optim`` (AdamW 2 fp32 moments,
  8-bit AdamW 2 bytes, Adafactor factored rows + columns, SGD none);
- activations saved for backward, per token and block of a Llama-style stack: 6h + 2·kv + 4·I
  elements (each norm's input and output, rotated q and k, v, the attention output; gate, up,
  the activation and the product) in the compute dtype, h per block with gradient checkpointing
  plus one block recomputed; eager attention adds 2·heads·T² per sequence and block; the loss adds
  the vocabulary's logits (compute dtype, an fp32 copy, fp32 log-softmax, and at the start of the
  backward two fp32 gradients of them) — gradients of the weights build up as the backward frees
  the activations, so the peak holds the larger of the two, plus the output layer's gradient;
- what the stage's entries add (``Entry.plan``: an L2-SP/EWC anchor, a reference model, a
  reward model, a generation KV cache), and evaluation's generation KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

GiB = 2**30
OPTIMIZER_BYTES = {  # optimizer state per trained element (fp32 moments unless 8-bit)
    "adamw": 8.0,
    "adam": 8.0,
    "lion": 4.0,
    "rmsprop": 4.0,
    "sgd": 0.0,
    "adagrad": 4.0,
    "8bit": 2.0,
    "adafactor": 0.0,  # adafactor: factored (rows + columns), counted per matrix below
}


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need of a config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_dim: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> "ModelShape":
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
        return cls(hidden, intermediate, layers, heads, kv_heads * head_dim, config.vocab_size)


@dataclass
class Footprint:
    """Bytes per device by part, and the trained/total element counts behind them."""

    parts: dict[str, float] = field(default_factory=dict)
    trainable: int = 0
    total: int = 0

    head_gradient: float = 0.0  # the first weight gradient the backward makes (the output layer's)

    @property
    def peak(self) -> float:
        """Gradients build up as the backward frees activations: the two overlap."""
        others = sum(v for k, v in self.parts.items() if k not in ("gradients", "activations"))
        gradients, activations = self.parts.get("gradients", 0.0), self.parts.get("activations", 0.0)
        return others + max(gradients, activations + min(self.head_gradient, gradients))


@dataclass(frozen=True)
class PlanContext:
    """What an entry's ``plan`` callable sees: the stage's model and settings, in bytes per device."""

    weights: float  # the model's weights on one device as it trains (fp32 masters included)
    stored_weights: float  # the same in the storage dtype (what a frozen copy of the model takes)
    trainable: int  # trained elements (whole model)
    storage_bytes: float  # bytes per stored (unquantized) element
    compute_bytes: float  # bytes per activation element
    has_adapter: bool  # an adapter is attached (TRL's reference is the adapter-disabled model)
    kv_bytes_per_token: float  # one sequence's KV cache per token
    batch_size: int
    seq_len: int
    devices: int


def dtype_bytes(dtype: torch.dtype | str) -> float:
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return torch.empty((), dtype=dtype, device="meta").element_size()


def quantized_weight_bytes(numel: int, rows: int, bits: int, double_quant: bool) -> float:
    """Stored bytes of one bitsandbytes-quantized matrix (blocks of 64 for 4-bit)."""
    if bits == 8:
        return numel + 4 * rows
    return numel / 2 + numel / 64 * (1 + 4 / 256 if double_quant else 4)


def optimizer_bytes(optim: str | None, trained: list[torch.nn.Parameter], param_bytes: float) -> float:
    """State of the stage's optimizer (transformers' default: AdamW) over its trained tensors."""
    name = (optim or "adamw_torch").lower()
    numel = sum(p.numel() for p in trained)
    if "adafactor" in name:
        return sum(4.0 * (sum(p.shape) if p.dim() == 2 else p.numel()) for p in trained)
    key = "8bit" if "8bit" in name else next((k for k in OPTIMIZER_BYTES if name.startswith(k)), "adamw")
    per_element = OPTIMIZER_BYTES[key]
    return numel * (per_element if param_bytes >= 4 or key == "8bit" else per_element * param_bytes / 4)


def activation_bytes(
    shape: ModelShape, batch: int, seq_len: int, compute_bytes: float, checkpointing: bool, eager: bool
) -> float:
    """Peak activation memory of one micro-batch's forward and backward: what each block saves,
    the loss's logits, and the logits' gradients that exist together at the start of the backward."""
    tokens = batch * seq_len
    per_block = (6 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate) * compute_bytes * tokens
    if eager:
        per_block += 2 * shape.heads * seq_len**2 * batch * compute_bytes
    stack = 3 * shape.hidden * compute_bytes * tokens  # embedding output, final norm's input and output
    blocks = (
        (shape.layers * shape.hidden * compute_bytes * tokens + per_block)
        if checkpointing
        else shape.layers * per_block
    )
    upcast = 4 if compute_bytes < 4 else 0  # the loss upcasts bf16/fp16 logits to fp32
    logits = tokens * shape.vocab * (compute_bytes + upcast + 4 + 8)  # logits, log-softmax, then two fp32 grads
    return stack + blocks + logits


def kv_bytes_per_token(shape: ModelShape, compute_bytes: float) -> float:
    return 2 * shape.layers * shape.kv_dim * compute_bytes


def ceil_div(value: float, parts: int) -> float:
    return math.ceil(value / parts)


def generation_plan(config: Any, ctx: PlanContext) -> dict[str, float]:
    """A generating transform's KV cache: ``batch_size`` sequences of prompt + ``max_new_tokens``."""
    return {"kv cache": config.batch_size * (ctx.seq_len + config.max_new_tokens) * ctx.kv_bytes_per_token}
