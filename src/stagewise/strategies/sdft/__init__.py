"""SDFT (Yang et al., ACL 2024, "Self-Distillation Bridges Distribution Gap in Language Model
Fine-Tuning"; reference: sail-sg/sdft). Not TRL's ``experimental.sdft``, an on-policy method.

A ``distill`` transform has the seed model (the model entering the stage) rewrite every
training answer in its own words, guided by the original; a rewrite is kept only if it passes
the reference's phrase filter and the task check, else the original answer stays. The output
has exactly as many rows as the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ...data.tokenize import chat_template_errors
from ...eval.metrics import exact_match, last_integer
from ...generation import SamplingConfig, generate
from ...plan.footprint import generation_plan
from ...protocols import TransformContext
from ...registry import TRANSFORMS, Requires, TransformConfig
from ...transforms import cached, rows_fingerprint, write_rows


@dataclass(frozen=True)
class DistillTemplate:
    """A rewrite request: an optional system turn, the user text, and the start of the answer
    (generation continues from it; it is not part of the rewrite)."""

    user: str
    system: str | None = None
    answer_prefix: str = ""


TEMPLATES = {  # sail-sg/sdft src/llmtuner/data/template.py
    "general": DistillTemplate(
        "Below are an instruction that describes a task along with a reference answer. "
        "Using the reference answer as a guide, write your own response.\n\n"
        "### Instruction:\n{instruction}\n\n### Reference Answer:\n{original_response}\n\n### Response:\n"
    ),
    "refer": DistillTemplate(
        "Below are an instruction that describes a task along with a reference answer. "
        "Refer to the reference answer and write your own response.\n\n"
        "### Instruction:\n{instruction}\n\n### Reference Answer:\n{original_response}\n\n### Response:\n"
    ),
    "gsm8k_distill": DistillTemplate(  # the reference's math template: a math system turn, and the answer
        "{instruction}\n\n{original_response}",  # starts "Great! Let's think step by step. "
        system="You are an expert in math. Below are a math question and its reference answer. Refer to the "
        "reference answer and write a response that appropriately answers the question.",
        answer_prefix="Great! Let's think step by step. ",
    ),
}
BANNED = ("reference answer", "your response", "my response", "your own response", "now it's your turn")


class DistillConfig(TransformConfig):
    template: Literal["general", "refer", "gsm8k_distill"] = "general"
    chat_template: Literal["auto", "always", "never"] = "auto"  # wrap the rewrite prompt as a user turn
    temperature: float = Field(default=0.95, gt=0)  # reference sampling settings
    top_p: float = Field(default=0.7, gt=0, le=1)
    top_k: int = Field(default=50, ge=0)
    max_new_tokens: int = Field(default=512, ge=1)
    check: Literal["last_integer", "exact", "none"] = "none"
    batch_size: int = Field(default=16, ge=1)
    # the rewrites' sampling seed: one fixed sample of the seed model, as the paper distils once (the
    # stage seed varies training only). It is part of the rewrites' cache key, so a run's rewrites never
    # depend on which seed happened to fill the cache first.
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


def distill_prompt(row: dict[str, Any], template: str) -> str:
    """The user text of the rewrite request (without system turn or answer prefix)."""
    instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return TEMPLATES[template].user.format(instruction=instruction, original_response=row["output"])


def passes_filter(rewrite: str) -> bool:
    """The reference's filter: no meta-talk about the reference or the turn."""
    lowered = rewrite.lower()
    return not any(phrase in lowered for phrase in BANNED) and not rewrite.startswith("Your turn")


def passes_check(rewrite: str, row: dict[str, Any], check: str) -> bool:
    if check == "last_integer":
        gold = int(row["answer"]) if "answer" in row else last_integer(row["output"])
        found = last_integer(rewrite)
        return found is not None and found == gold
    if check == "exact":
        return exact_match(rewrite, [row["output"]])
    return True


def merge_rewrites(
    rows: list[dict[str, Any]], rewrites: list[str], check: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Accepted rewrites replace the answer; rejected ones fall back to the original row."""
    out, counts = [], {"kept": 0, "rejected_filter": 0, "rejected_check": 0}
    for row, rewrite in zip(rows, rewrites):
        rewrite = rewrite.strip()
        if not rewrite or not passes_filter(rewrite):
            counts["rejected_filter"] += 1
            out.append(row)
        elif not passes_check(rewrite, row, check):
            counts["rejected_check"] += 1
            out.append(row)
        else:
            counts["kept"] += 1
            out.append({**row, "output": rewrite, "original_output": row["output"]})
    return out, counts


def encode_distill_prompts(rows: list[dict[str, Any]], tokenizer: Any, config: DistillConfig) -> list[list[int]]:
    """Token ids of each row's rewrite request: as chat turns (system, user, then the answer
    prefix) when the tokenizer has a chat template, else as plain text in the same order."""
    template = TEMPLATES[config.template]
    use_chat = config.chat_template == "always" or (config.chat_template == "auto" and bool(tokenizer.chat_template))
    prefix = tokenizer(template.answer_prefix, add_special_tokens=False)["input_ids"] if template.answer_prefix else []
    prompts = []
    for row in rows:
        text = distill_prompt(row, config.template)
        if use_chat:
            turns = [{"role": "system", "content": template.system}] if template.system else []
            turns.append({"role": "user", "content": text})
            with chat_template_errors():
                encoded = tokenizer.apply_chat_template(
                    turns, add_generation_prompt=True, tokenize=True, return_dict=True
                )
            prompts.append(encoded["input_ids"] + prefix)
        else:
            system = f"{template.system}\n\n" if template.system else ""
            prefix_text = f"\n\n{template.answer_prefix}" if template.answer_prefix else ""
            prompts.append(tokenizer(system + text + prefix_text)["input_ids"])
    return prompts


@TRANSFORMS.register(
    "distill",
    DistillConfig,
    requires=Requires(formats=("instruction",), model_tasks=("causal_lm",)),
    plan=generation_plan,
)
def distill(rows: list[dict[str, Any]], config: DistillConfig, context: TransformContext):
    """SDFT: the seed model rewrites each answer; failed rewrites keep the original."""
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=True,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        seed=config.seed,
    )

    def rewrite() -> list[str]:
        prompts = encode_distill_prompts(rows, context.tokenizer, config)
        outputs = generate(
            context.model, context.tokenizer, prompts, sampling, batch_size=config.batch_size, desc="sdft distill"
        )
        return [texts[0] for texts in outputs]

    settings = config.model_dump(exclude={"batch_size", "check"})
    rewrites = cached("distill", [context.model_key, rows_fingerprint(rows), settings], rewrite, context.log)
    distilled, counts = merge_rewrites(rows, rewrites, config.check)
    write_rows(context.stage_dir / f"distilled-{context.dataset_name}.jsonl", distilled)
    return distilled, {"rows": len(rows), **counts}
