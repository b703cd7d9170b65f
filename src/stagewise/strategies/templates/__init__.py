"""Instruction data made from labelled datasets (FLAN-style; Wei et al. ICLR 2022, Chung et al. 2022).

A ``template`` transform turns the rows of any labelled dataset (classification, QA, pairs) into
``instruction`` rows by filling the named fields of a template — ``{text}``, ``{label}``,
``{instruction}``, any column — into an instruction and an answer. A dataset gets several
phrasings, one drawn per row with the stage seed; ``verbalizer`` maps label values to words
(``{"0": negative, "1": positive}``) and ``options`` appends the verbalised label set as FLAN's
OPTIONS list (``{options}`` places it, else it ends the instruction). Templates come inline, from
a built-in set for the bundled benchmark tasks (``builtin:sentiment``, ``builtin:qa``,
``builtin:math``), or from a YAML/JSON file (a list of ``{instruction, output}``), read when the
recipe is validated so the templates themselves are part of the stage's config hash and
manifest. The rows are written beside the stage as ``templated-<dataset>.jsonl``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from ...data.text_template import template_fields
from ...errors import DataError
from ...protocols import TransformContext
from ...registry import TRANSFORMS, TransformConfig, TransformTraits
from ...schema import StrictModel
from ...transforms import write_rows


class InstructionTemplate(StrictModel):
    instruction: str
    output: str = "{label}"

    @field_validator("instruction", "output")
    @classmethod
    def _plain_slots(cls, value: str) -> str:
        template_fields(value)  # one line for a format spec, conversion, stray brace...
        return value


BUILTIN_TEMPLATES: dict[str, list[dict[str, str]]] = {
    "sentiment": [  # text/label rows (sentiment:train)
        {"instruction": "{text}\n\nIs this review positive or negative?"},
        {"instruction": "Review: {text}\nWhat is the sentiment of this review?"},
        {"instruction": "What is the sentiment of the following movie review sentence?\n{text}"},
        {"instruction": "Does the following review express a positive or a negative opinion?\n\n{text}"},
    ],
    "qa": [  # instruction/output rows (facts)
        {"instruction": "{instruction}", "output": "{output}"},
        {"instruction": "Answer the question.\n\n{instruction}", "output": "{output}"},
        {"instruction": "Question: {instruction}\nAnswer briefly.", "output": "{output}"},
    ],
    "math": [  # instruction/output rows (math)
        {"instruction": "{instruction}", "output": "{output}"},
        {"instruction": "Solve the problem and give the final number.\n\n{instruction}", "output": "{output}"},
    ],
}


class TemplateConfig(TransformConfig):
    templates: list[InstructionTemplate] | str  # inline list, "builtin:<task>", or a YAML/JSON file of them
    verbalizer: dict[str, str] = Field(default_factory=dict)  # label value -> word ({"0": negative, ...})
    options: bool = False  # list the verbalised labels (FLAN's OPTIONS) in the instruction

    @field_validator("templates", mode="before")
    @classmethod
    def _read_source(cls, value: Any) -> Any:
        """A file is read now: its templates, not its path, are what the stage hash covers."""
        if isinstance(value, str) and value.startswith("builtin:"):
            if value[8:] not in BUILTIN_TEMPLATES:
                raise ValueError(
                    f"unknown built-in template set {value[8:]!r} (expected one of: {', '.join(BUILTIN_TEMPLATES)})"
                )
            return value
        if isinstance(value, str):
            value = read_template_file(Path(value))
        if isinstance(value, list) and not value:
            raise ValueError("give at least one template")
        return value

    @field_validator("verbalizer", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def read_template_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"templates file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise ValueError(f"{path}: not a YAML/JSON list of templates ({first})") from None
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ValueError(f"{path}: expected a list of {{instruction, output}} templates")
    return data


def load_templates(source: list[InstructionTemplate] | str) -> list[InstructionTemplate]:
    if isinstance(source, str):  # a built-in set (files are read at validation)
        return [InstructionTemplate(**t) for t in BUILTIN_TEMPLATES[source[8:]]]
    return source


def option_list(config: TemplateConfig, rows: list[dict[str, Any]]) -> str:
    labels = sorted({str(row["label"]) for row in rows if "label" in row})
    return "OPTIONS:\n" + "\n".join(f"- {config.verbalizer.get(label, label)}" for label in labels)


def fill(
    template: InstructionTemplate, row: dict[str, Any], config: TemplateConfig, options: str, where: str
) -> dict[str, str]:
    values = {key: str(value) for key, value in row.items()}
    if "label" in row:
        values["label"] = config.verbalizer.get(str(row["label"]), str(row["label"]))
    values["options"] = options
    for text in (template.instruction, template.output):
        missing = [name for name in template_fields(text) if name not in values]
        if missing:
            raise DataError(
                f"{where}: the template names field {missing[0]!r}, which the row lacks "
                f"(fields: {', '.join(sorted(row))})"
            )
    instruction = template.instruction.format(**values)  # slots checked when the template was read
    if config.options and "{options}" not in template.instruction:
        instruction = f"{instruction}\n\n{options}"
    return {"instruction": instruction, "output": template.output.format(**values)}


@TRANSFORMS.register(
    "template", TemplateConfig, example={"templates": "builtin:qa"}, traits=TransformTraits(output_format="instruction")
)
def template(rows: list[dict[str, Any]], config: TemplateConfig, context: TransformContext):
    """Labelled rows -> instruction rows, one seeded phrasing per row."""
    templates = load_templates(config.templates)
    options = option_list(config, rows) if config.options else ""
    rng = random.Random(context.seed)
    out = []
    for number, row in enumerate(rows, start=1):
        chosen = rng.randrange(len(templates))
        out.append(
            fill(
                templates[chosen],
                row,
                config,
                options,
                f"transform 'template' on {context.dataset_name!r} row {number} (template {chosen + 1})",
            )
        )
    write_rows(context.stage_dir / f"templated-{context.dataset_name}.jsonl", out)
    return out, {"rows": len(rows), "templates": len(templates)}
