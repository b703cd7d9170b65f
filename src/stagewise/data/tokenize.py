"""Turn validated rows into token ids and labels.

Every LM format is reduced to a list of text *segments*, each either trained on or
masked (label -100). Segments are encoded one by one, so the mask boundary is exact
and the prompt is encoded exactly as it will be at generation time. SFT masks the
prompt unless ``train_on_prompt`` (LLaMA-Factory's key) is set.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, cast

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import DataError
from ..registry import DATA_FORMATS

IGNORE_INDEX = -100

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"

Segments = list[tuple[str, bool]]  # (text, trained on)


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, template: str) -> bool:
    if template == "chat" and not tokenizer.chat_template:
        raise DataError("template 'chat' requested but the tokenizer has no chat template")
    return template == "chat" or (template == "auto" and bool(tokenizer.chat_template))


@contextmanager
def chat_template_errors() -> Iterator[None]:
    """A chat template is a Jinja program from the model folder: its syntax errors, its own
    ``raise_exception`` calls, the sandbox's refusals and its runtime errors are one line."""
    from jinja2 import TemplateError

    try:
        yield
    except (TemplateError, TypeError, KeyError, IndexError, AttributeError) as err:
        message = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(f"the tokenizer's chat template failed: {message}") from None


def rendered(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **options: Any) -> str:
    """The conversation as the chat template renders it, as text."""
    with chat_template_errors():
        return cast(str, tokenizer.apply_chat_template(messages, tokenize=False, **options))


def chat_segments(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> Segments:
    """Split the rendered conversation into masked context and trained assistant turns."""
    full = rendered(tokenizer, messages)
    segments: Segments = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(rendered(tokenizer, messages[:index], add_generation_prompt=True))
        through_answer = rendered(tokenizer, messages[: index + 1])
        end = len(through_answer)
        if not full.startswith(through_answer) or start < cursor or end < start:
            raise DataError("the chat template does not render conversations prefix by prefix")
        segments += [(full[cursor:start], False), (full[start:end], True)]
        cursor = end
    if cursor < len(full):
        segments.append((full[cursor:], False))
    return segments


def instruction_prompt(row: dict[str, Any]) -> str:
    if row.get("input"):
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=row["instruction"], input=row["input"])
    return ALPACA_PROMPT.format(instruction=row["instruction"])


def row_segments(
    row: dict[str, Any], data_format: str, tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    """Segments for one row, and whether the special prefix/EOS must be added by us (the format's
    registered segments function, ``data.formats``)."""
    return DATA_FORMATS.get(data_format).impl(row, tokenizer, template)


def encode_segments(
    tokenizer: PreTrainedTokenizerBase,
    segments: Segments,
    add_special: bool,
    train_on_prompt: bool,
    max_length: int,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    if add_special:
        prefix = tokenizer("", add_special_tokens=True)["input_ids"]
        input_ids += prefix
        labels += [IGNORE_INDEX] * len(prefix)
    for text, trained in segments:
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if (trained or train_on_prompt) else [IGNORE_INDEX] * len(ids)
    if add_special and add_eos and tokenizer.eos_token_id is not None:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return {
        "input_ids": input_ids[:max_length],
        "attention_mask": [1] * min(len(input_ids), max_length),
        "labels": labels[:max_length],
    }


def encode_prompt(
    row: dict[str, Any], data_format: str, tokenizer: PreTrainedTokenizerBase, template: str = "auto"
) -> list[int]:
    """Token ids of everything before the first trained segment: the generation prompt,
    encoded exactly as in training."""
    segments, add_special = row_segments(row, data_format, tokenizer, template)
    prompt: Segments = []
    for text, trained in segments:
        if trained:
            break
        prompt.append((text, False))
    return encode_segments(tokenizer, prompt, add_special, False, 10**9, add_eos=False)["input_ids"]


def prompt_text(
    row: dict[str, Any], data_format: str, tokenizer: PreTrainedTokenizerBase, template: str = "auto"
) -> str:
    """The text of everything before the first trained segment (what :func:`encode_prompt`
    encodes), for trainers that tokenize prompts themselves (TRL's on-policy trainers)."""
    if data_format == "preference":
        return row["prompt"]
    segments, _ = row_segments(row, data_format, tokenizer, template)
    prompt = []
    for text, trained in segments:
        if trained:
            break
        prompt.append(text)
    return "".join(prompt)


def encode_lm_rows(
    rows: list[dict[str, Any]],
    data_format: str,
    tokenizer: PreTrainedTokenizerBase,
    template: str = "auto",
    train_on_prompt: bool = False,
    max_length: int = 512,
) -> list[dict[str, list[int]]]:
    """Encode rows; rows with nothing left to train on after truncation are dropped."""
    encoded = []
    for row in rows:
        segments, add_special = row_segments(row, data_format, tokenizer, template)
        example = encode_segments(tokenizer, segments, add_special, train_on_prompt, max_length)
        if any(label != IGNORE_INDEX for label in example["labels"]):
            encoded.append(example)
    return encoded


def encode_classification_rows(
    rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int
) -> list[dict[str, Any]]:
    index = {label: i for i, label in enumerate(labels)}
    return [
        {**tokenizer(row["text"], truncation=True, max_length=max_length), "labels": index[row["label"]]}
        for row in rows
    ]


def encode_dataset(
    rows: list[dict[str, Any]],
    data_format: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str = "auto",
    train_on_prompt: bool = False,
    max_length: int = 512,
    labels: list[str] | None = None,
) -> list[dict[str, Any]]:
    objective = DATA_FORMATS.get(data_format).traits.objective
    if objective == "classification":
        return encode_classification_rows(rows, tokenizer, labels or sorted({r["label"] for r in rows}), max_length)
    if objective in ("preference", "feedback"):
        return rows  # TRL's trainers tokenize preference and feedback rows themselves
    encoded = encode_lm_rows(rows, data_format, tokenizer, template, train_on_prompt, max_length)
    if not encoded:
        raise DataError(f"no row has a trainable token within max_length={max_length}")
    return encoded


class ListDataset(torch.utils.data.Dataset):
    """Encoded examples held in memory (our datasets are small; no Arrow round trip)."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]
