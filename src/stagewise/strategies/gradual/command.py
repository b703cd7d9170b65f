"""``stagewise categorize``: SliCK knowledge categories (and P values) of QA items under a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field

from ...options import OutputFile, command_options
from ...registry import COMMANDS
from ...schema import StrictModel


class CategorizeOptions(StrictModel):
    columns: list[Annotated[str, Field(pattern=r"^[^=]+=[^=]+$")]] = []  # old=new renames
    out: OutputFile
    n_prompts: int = Field(ge=1)
    shots: int = Field(ge=0)
    samples: int = Field(ge=0)
    temperature: float = Field(gt=0)
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)

    def renames(self) -> dict[str, str]:
        return dict(column.split("=", 1) for column in self.columns)


def categorize_items(args: argparse.Namespace) -> int:
    from ...config import DatasetConfig, ModelConfig
    from ...data import load_dataset_config
    from ...distributed import init_from_launcher, is_main_process
    from ...io import atomic_write_text
    from ...models import load_model_and_tokenizer
    from .slick import CATEGORIES, ProbeSettings, categorize, model_answerer

    options = command_options(CategorizeOptions, args)
    init_from_launcher()  # under torchrun/accelerate launch, ranks share the items
    rows = load_dataset_config(
        "data", DatasetConfig(format="instruction", path=args.data, columns=options.renames())
    ).rows
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model))
    settings = ProbeSettings(
        n_prompts=options.n_prompts,
        shots=options.shots,
        samples=options.samples,
        temperature=options.temperature,
        max_new_tokens=options.max_new_tokens,
        checker=args.checker,
    )
    results = categorize(rows, settings, model_answerer(model, tokenizer, options.batch_size))
    if not is_main_process():
        return 0
    out = Path(options.out)
    atomic_write_text(
        out, "".join(json.dumps({**row, **result}, ensure_ascii=False) + "\n" for row, result in zip(rows, results))
    )
    for category in CATEGORIES:
        count = sum(r["category"] == category for r in results)
        print(f"{category:12s} {count:5d}  {count / len(results):6.1%}")
    print(f"wrote {out} ({len(results)} items)")
    return 0


@COMMANDS.register("categorize")
def add_categorize(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser("categorize", help="SliCK knowledge categories of QA items under a model")
    probe.add_argument("--model", required=True, help="model folder, hub id or bundled name")
    probe.add_argument("--data", required=True, help="QA file (JSONL/CSV/Parquet) with instruction/output")
    probe.add_argument("--columns", nargs="*", default=[], help="renames, e.g. question=instruction answer=output")
    probe.add_argument("--out", default="categories.jsonl")
    probe.add_argument("--n-prompts", type=int, default=10, help="random few-shot prompts per item (SliCK: 10)")
    probe.add_argument("--shots", type=int, default=4)
    probe.add_argument("--samples", type=int, default=16, help="sampled answers per prompt (SliCK: 16)")
    probe.add_argument("--temperature", type=float, default=0.5)
    probe.add_argument("--max-new-tokens", type=int, default=16)
    probe.add_argument("--checker", choices=["exact_match", "contains"], default="exact_match")
    probe.add_argument("--batch-size", type=int, default=64, help="sequences decoded per batch")
    probe.set_defaults(handler=categorize_items)
