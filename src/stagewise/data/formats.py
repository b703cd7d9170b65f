"""The data formats a dataset can have: each one's fields, objective, extra row checks and (LM
formats) how a row splits into masked prompt and trained answer segments.

Adding a format is one registration here (or in a strategy's folder): ``DATA_FORMATS.register(name,
traits=FormatTraits(fields=..., objective=...))`` on its segments function.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ..errors import DataError
from ..registry import DATA_FORMATS, FormatTraits
from .text_template import template_fields
from .tokenize import Segments, chat_segments, instruction_prompt, uses_chat_template

CHAT_ROLES = {"system", "user", "assistant"}


def answer_field(data_format: str) -> str:
    """Where rows of this format keep their one gold answer (its traits' ``answer_field``; the probes
    and strategies that read it are validated to take only such formats)."""
    found = DATA_FORMATS.get(data_format).traits.answer_field
    if found is None:
        raise DataError(f"format {data_format!r} has no single gold answer field")
    return found


def last_assistant_turn(row: dict[str, Any]) -> str:
    return str([m["content"] for m in row["messages"] if m["role"] == "assistant"][-1])


def gold_answer(row: dict[str, Any]) -> str:
    """The row's gold answer text, by the first registered format that has one for it: its ``gold``
    (where the row holds that format's fields), else its ``answer_field`` (where the row holds it);
    '' for rows without one."""
    for entry in DATA_FORMATS.entries():
        traits = entry.traits
        if traits.gold is not None and set(traits.fields) <= set(row):
            return traits.gold(row)
        if traits.answer_field is not None and traits.answer_field in row:
            return str(row[traits.answer_field])
    return ""


def check_messages(row: dict[str, Any], where: str) -> None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise DataError(f"{where}: messages[{index}].role must be one of {sorted(CHAT_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{index}].content must be text")
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{where}: messages has no assistant turn to train on")


def check_feedback_label(row: dict[str, Any], where: str) -> None:
    if not isinstance(row["label"], bool):
        raise DataError(
            f"{where}: field 'label' must be true or false (a desirable or undesirable answer), got {row['label']!r}"
        )


def check_class_label(row: dict[str, Any], where: str) -> None:
    if not isinstance(row["label"], (str, int)) or isinstance(row["label"], bool):
        raise DataError(f"{where}: field 'label' must be a string or integer, got {row['label']!r}")
    row["label"] = str(row["label"])


def check_fewshot(row: dict[str, Any], where: str) -> None:
    """``prompt_format`` (text, checked by the loader) is a template with one ``{input}`` slot and no
    format spec or conversion."""
    try:
        fields = template_fields(row["prompt_format"])
    except ValueError as err:
        raise DataError(f"{where}: field 'prompt_format': {err}") from None
    if set(fields) != {"input"}:
        raise DataError(f"{where}: field 'prompt_format' must be text with exactly one {{input}} slot")


def check_pair(row: dict[str, Any], where: str) -> None:
    for field in ("chosen", "rejected"):
        if not row[field].strip():
            raise DataError(f"{where}: field {field!r} is empty (a preference pair needs both answers)")


@DATA_FORMATS.register("text", traits=FormatTraits(fields=("text",)))
def text_segments(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: str) -> tuple[Segments, bool]:
    return [(row["text"], True)], True


@DATA_FORMATS.register(
    "prompt_completion",
    traits=FormatTraits(fields=("prompt", "completion"), answer_field="completion", has_prompt=True, generative=True),
)
def completion_segments(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    return [(row["prompt"], False), (row["completion"], True)], True


@DATA_FORMATS.register(
    "chat",
    traits=FormatTraits(
        fields=("messages",), check=check_messages, has_prompt=True, generative=True, gold=last_assistant_turn
    ),
)
def conversation_segments(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    uses_chat_template(tokenizer, "chat")
    return chat_segments(tokenizer, row["messages"]), False


@DATA_FORMATS.register(
    "instruction",
    traits=FormatTraits(
        fields=("instruction", "output"),
        optional=("input", "system"),
        answer_field="output",
        has_prompt=True,
        generative=True,
    ),
)
def instruction_segments(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    """The chat template where the tokenizer has one (``template: auto``), else Alpaca's prompt."""
    if uses_chat_template(tokenizer, template):
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": row["output"]},
        ]
        return chat_segments(tokenizer, messages), False
    return [(instruction_prompt(row), False), (row["output"], True)], True


def not_language_modelling(name: str) -> Any:
    def segments(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: str) -> tuple[Segments, bool]:
        raise DataError(f"format {name!r} is not a language-modelling format")

    return segments


for name, traits in {
    "preference": FormatTraits(
        fields=("prompt", "chosen", "rejected"), objective="preference", check=check_pair, has_prompt=True
    ),
    # unpaired: one answer, label true = desirable (KTO)
    "feedback": FormatTraits(
        fields=("prompt", "completion", "label"), objective="feedback", check=check_feedback_label
    ),
    "classification": FormatTraits(fields=("text", "label"), objective="classification", check=check_class_label),
    "fewshot": FormatTraits(fields=("task", "input", "output", "prompt_format"), trainable=False, check=check_fewshot),
}.items():
    DATA_FORMATS.register(name, traits=traits)(not_language_modelling(name))
