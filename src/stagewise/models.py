"""Model and tokenizer resolution: bundled names, local folders, hub ids.

Bundled names run offline. ``tiny-*`` are small random models built from configs
(for tests and smoke runs); real bundled models are resolved in ``bundled.py``.
Weights load with safetensors; ``trust_remote_code`` stays off unless the recipe sets it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .config import ModelConfig
from .distributed import local_device
from .errors import ModelError
from .precision import load_dtype, record_storage_dtype

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with a chat template: no files, no training, fully offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


TINY_VOCAB = 272  # 5 specials + 256 bytes, rounded up


def _tiny_config(arch: str) -> Any:
    if arch == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    if arch == "bert":
        return BertConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
            pad_token_id=0,
        )
    raise ValueError(arch)


TINY_MODELS = {"tiny-llama": "llama", "tiny-gpt2": "gpt2", "tiny-bert": "bert"}


def _auto_class(task: str) -> Any:
    return AutoModelForSequenceClassification if task == "sequence_classification" else AutoModelForCausalLM


def _classification_kwargs(task: str, labels: list[str] | None) -> dict[str, Any]:
    if task != "sequence_classification" or not labels:
        return {}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


HEAD_ATTRIBUTES = ("classifier", "score")  # BERT-style and decoder-style classification heads


def install_mlp_head(model: PreTrainedModel) -> None:
    """Replace the linear classification head by a 2-layer MLP (two-stage fine-tuning's head).

    The choice is recorded in the config (``stagewise_head_layers``) so ``load_pretrained``
    rebuilds it; plain ``from_pretrained`` sees a linear head and re-initialises it.
    """
    name = next((attr for attr in HEAD_ATTRIBUTES if isinstance(getattr(model, attr, None), torch.nn.Linear)), None)
    if name is None:
        raise ModelError(f"model.head_layers: 2 needs a linear 'classifier' or 'score' head in {type(model).__name__}")
    linear: torch.nn.Linear = getattr(model, name)
    hidden = linear.in_features
    dropout = getattr(model.config, "hidden_dropout_prob", 0.1) or 0.0
    head = torch.nn.Sequential(
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, linear.out_features, bias=linear.bias is not None),
    )
    setattr(model, name, head.to(linear.weight.dtype))
    model.config.stagewise_head_layers = 2


def restore_mlp_head(model: PreTrainedModel, folder: Path) -> None:
    """Re-install a saved 2-layer head and load its weights from the folder's safetensors."""
    if getattr(model.config, "stagewise_head_layers", 1) != 2:
        return
    from safetensors.torch import load_file

    install_mlp_head(model)
    name = next(attr for attr in HEAD_ATTRIBUTES if isinstance(getattr(model, attr, None), torch.nn.Sequential))
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update({k[len(name) + 1 :]: v for k, v in load_file(str(file)).items() if k.startswith(name + ".")})
    getattr(model, name).load_state_dict(state)


def load_model_and_tokenizer(
    cfg: ModelConfig, labels: list[str] | None = None, seed: int = 0, precision: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``cfg.model_name_or_path`` and build the model for ``cfg.task``, its weights loaded
    straight into the dtype ``precision`` holds them in (see ``precision``). ``seed`` draws the
    weights a checkpoint lacks (a new classification head), so a run's starting model is the same
    in every process: torch's own start-up seed is random."""
    name = cfg.model_name_or_path
    extra = _classification_kwargs(cfg.task, labels)
    if cfg.task == "sequence_classification" and not extra and cfg.num_labels:
        extra = {"num_labels": cfg.num_labels}
    dtype = load_dtype(precision, cfg.dtype)
    tokenizer: PreTrainedTokenizerBase
    if name in TINY_MODELS and cfg.quantization is None:
        config = _tiny_config(TINY_MODELS[name])
        for key, value in extra.items():
            setattr(config, key, value)
        torch.manual_seed(0)  # tiny models are random but reproducible
        tiny_dtype = torch.float32 if dtype == "auto" else dtype
        attention = {} if cfg.attn_implementation == "auto" else {"attn_implementation": cfg.attn_implementation}
        model, tokenizer = _auto_class(cfg.task).from_config(config, dtype=tiny_dtype, **attention), byte_tokenizer()
        record_storage_dtype(model, loaded_dtype(model))  # (load_pretrained records it for the others)
    else:
        from .bundled import BUNDLED, IDENTITY_POOLER, resolve_bundled, use_identity_pooler

        path = resolve_bundled(name) if name in BUNDLED else tiny_folder(name) if name in TINY_MODELS else name
        torch.manual_seed(seed)
        model, tokenizer = load_pretrained(
            path, cfg, extra, dtype=dtype, quantization=quantization_config(cfg, precision)
        )
        if name in IDENTITY_POOLER and cfg.task == "sequence_classification":
            use_identity_pooler(model)
    if cfg.task == "sequence_classification" and cfg.head_layers == 2:
        torch.manual_seed(seed)
        install_mlp_head(model)
    return on_local_device(model), tokenizer


def seed_weights_folder(cfg: ModelConfig) -> Path | None:
    """The folder whose safetensors hold the starting model's weights as they load (None: a
    classifier's new head is drawn at load time, or a hub model is not in the local cache)."""
    name = cfg.model_name_or_path
    if cfg.task == "sequence_classification":
        return None
    if name in TINY_MODELS:
        return tiny_folder(name)
    from .bundled import BUNDLED, resolve_bundled

    if name in BUNDLED:
        return resolve_bundled(name)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=cfg.revision, local_files_only=True))
    except Exception:  # not cached (or not a hub id): the merge loads the model instead
        return None


def tiny_folder(name: str) -> Path:
    """A tiny model saved once as a folder (quantized loading reads weights from disk)."""
    from .bundled import cache_dir
    from .io import atomic_folder

    target = cache_dir() / "models" / name
    if not (target / "model.safetensors").is_file():
        model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=name), precision="fp32")
        with atomic_folder(target) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    return target


def quantization_config(cfg: ModelConfig, precision: str) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization`` (None when unset)."""
    quant = cfg.quantization
    if quant is None:
        return None
    from transformers import BitsAndBytesConfig

    from .precision import COMPUTE_DTYPES, resolve_precision

    compute = (
        COMPUTE_DTYPES[resolve_precision(precision)]
        if quant.compute_dtype == "auto"
        else getattr(torch, quant.compute_dtype)
    )
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def loaded_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's unquantized floating weights as loaded (its storage dtype)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def is_quantized(model: torch.nn.Module) -> bool:
    """Does the model hold 4/8-bit (bitsandbytes) weights?"""
    from .addons import base_model_of

    base = base_model_of(model)
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def keep_canonical_layout(model: torch.nn.Module) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight into an inference-only layout the first time a CPU
    with AVX512-BF16 runs the layer without gradients (evaluating the base model, say); its backward
    pass and ``dequantize_4bit`` still read the weight in the canonical layout, so training after
    such an evaluation got wrong gradients (measured: QLoRA diverged) and a merge read wrong weights.
    The repacking is switched off on every 4-bit layer."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def dequantize_in_place(model: PreTrainedModel) -> PreTrainedModel:
    """Each 4/8-bit linear layer replaced by a plain ``nn.Linear`` holding its dequantized weight (in
    the storage dtype of the model's other tensors), and the quantization marks cleared, so the
    model saves and loads as a plain one."""
    import bitsandbytes as bnb
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    from .precision import storage_dtype

    dtype = storage_dtype(model)
    for name, module in list(model.named_modules()):
        if not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            continue
        weight = dequantize_bnb_weight(cast(torch.nn.Parameter, module.weight), getattr(module, "state", None)).to(
            dtype
        )
        plain = torch.nn.Linear(
            module.in_features, module.out_features, bias=module.bias is not None, device=weight.device, dtype=dtype
        )
        with torch.no_grad():
            plain.weight.copy_(weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, plain)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
        if hasattr(model, flag):
            setattr(model, flag, False)
    setattr(model, "hf_quantizer", None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def on_local_device(model: ModuleT) -> ModuleT:
    """The model on this rank's device (a quantized one was placed there while loading)."""
    return model if is_quantized(model) else model.to(local_device())


def looks_local(name: str) -> bool:
    """A path rather than a hub id: it starts like one, or names something that exists here."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def load_pretrained(
    path: str | Path,
    cfg: ModelConfig,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | str = "auto",
    quantization: Any = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load weights (safetensors only) and tokenizer from a folder or hub id, straight into
    ``dtype`` on this rank's device (no full fp32 copy on the host first); ``quantization`` loads
    the linear layers 4/8-bit and prepares the model for adapter training (PEFT)."""
    path = str(path)
    if looks_local(path) and not Path(path).expanduser().is_dir():
        raise ModelError(f"model.model_name_or_path: folder {path!r} not found")
    if Path(path).expanduser().is_dir():
        check_weight_files(Path(path).expanduser())
    common = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    placement: dict[str, Any] = (
        {"device_map": {"": local_device()}} if (quantization is not None or torch.cuda.is_available()) else {}
    )
    if cfg.attn_implementation != "auto":
        placement["attn_implementation"] = cfg.attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = _auto_class(cfg.task).from_pretrained(
            path,
            dtype=dtype,
            use_safetensors=True,
            quantization_config=quantization,
            **placement,
            **common,
            **(extra or {}),
        )
    except MemoryError:
        raise
    except Exception as err:  # config.json of the wrong types or shapes fails deep inside transformers/hub
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ModelError(f"model.model_name_or_path: cannot load {path!r} (config.json and weights): {first}") from None
    prepare_tokenizer(tokenizer, model)
    if Path(path).is_dir():
        restore_mlp_head(model, Path(path))
    # recorded before PEFT's k-bit preparation, which upcasts every unquantized tensor to float32: a
    # QLoRA stage's outputs (and merge_on_save's dequantized weights) keep the dtype the model was loaded in
    record_storage_dtype(model, loaded_dtype(model))
    if is_quantized(model):
        from peft import prepare_model_for_kbit_training

        # PEFT trains every unquantized tensor (norms, embeddings, head) in float32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        with torch.no_grad():  # tensors still viewing the checkpoint's memory map keep all of it resident
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.clone()
        keep_canonical_layout(model)
    return model, tokenizer


def check_weight_files(folder: Path) -> None:
    """One line for a folder whose weights are missing, only a pickle, or not valid safetensors
    (truncated, garbage, hostile header); pickles are never loaded."""
    from safetensors import safe_open

    config = folder / "config.json"
    if config.is_file():
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ModelError(f"{config}: not readable JSON ({type(err).__name__})") from None
        if not isinstance(settings, dict):
            raise ModelError(f"{config}: expected a JSON object of model settings, got {type(settings).__name__}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        what = (
            f"only pickle weights ({', '.join(pickles)}), which stagewise never loads: convert them to safetensors"
            if pickles
            else "no *.safetensors weights"
        )
        raise ModelError(f"model folder {folder}: {what}")
    for file in files:
        try:  # reads the header and checks that the tensors cover the file exactly
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # SafetensorError, or OSError for an unreadable file
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise ModelError(f"{file}: not a valid safetensors file ({reason})") from None


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Give the tokenizer (and model config) a pad token: batching needs one."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_stage_output(
    stage_dir: Path, cfg: ModelConfig, precision: str = "auto"
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Reload a finished stage's folder (after skipped stages), with its adapter if it has one."""
    model, tokenizer = load_pretrained(
        stage_dir, cfg.model_copy(update={"revision": None}), dtype=load_dtype(precision, cfg.dtype)
    )
    if (stage_dir / "adapter").is_dir():
        from peft import PeftConfig, PeftModel

        adapter = stage_dir / "adapter"
        # PEFT refuses is_trainable for prompt adapters; selectors set requires_grad per stage anyway
        trainable = not PeftConfig.from_pretrained(str(adapter)).is_prompt_learning
        return on_local_device(PeftModel.from_pretrained(model, adapter, is_trainable=trainable)), tokenizer
    return on_local_device(model), tokenizer
