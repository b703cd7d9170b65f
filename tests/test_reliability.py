"""Bad inputs and faults end in one line and exit 2, never a traceback, a hang, silent garbage,
a write outside the output folder, or a change to what an earlier run wrote.

Every case runs the real CLI in-process against an output folder that already holds a finished
run; afterwards that folder's files must be byte-identical and nothing may appear beside it.
"""
from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from stagewise.cli import main

ROWS = [{"text": f"line {i}"} for i in range(4)]
SFT_ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]


def base_recipe(out: Path) -> dict[str, Any]:
    return {
        "model": "tiny-llama",
        "datasets": {"d": {"format": "text", "path": "d.jsonl"}},
        "stages": [{"name": "s", "data": "d", "max_steps": 2, "batch_size": 2, "lr": 1e-3}],
        "output_dir": str(out),
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished run, copied into each case's sandbox (training it once keeps the suite fast)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "r.yaml").write_text(yaml.safe_dump(base_recipe(root / "run")))
    old = os.environ.get("STAGEWISE_CACHE")
    os.environ["STAGEWISE_CACHE"] = str(root / "cache")
    try:
        assert main(["run", str(root / "r.yaml")]) == 0
    finally:
        os.environ.pop("STAGEWISE_CACHE") if old is None else os.environ.__setitem__("STAGEWISE_CACHE", old)
    return root / "run"


class Sandbox:
    """A case's folder: data files, a recipe, and a copy of a finished run as its output_dir."""

    def __init__(self, root: Path, finished: Path) -> None:
        import shutil

        self.root = root
        self.out = root / "run"
        shutil.copytree(finished, self.out)
        manifest = json.loads((self.out / "manifest.json").read_text())  # paths point at the copy
        text = json.dumps(manifest).replace(str(finished), str(self.out))
        (self.out / "manifest.json").write_text(text)
        self.write("d.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))
        self.recipe = base_recipe(self.out)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def recipe_file(self, text: str | bytes | None = None) -> str:
        return str(self.write("r.yaml", yaml.safe_dump(self.recipe, sort_keys=False) if text is None else text))


def stage(**changes: Any) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.recipe["stages"][0].update(changes)
    return edit


def top(**changes: Any) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.recipe.update(changes)
    return edit


def dataset(**changes: Any) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.recipe["datasets"]["d"].update(changes)
    return edit


def data_file(name: str, content: str | bytes, **changes: Any) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.write(name, content)
        box.recipe["datasets"]["d"].update(path=name, **changes)
    return edit


def rows(fmt: str, rows_: list[dict[str, Any]], **model: Any) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.recipe["datasets"]["d"] = {"format": fmt, "rows": rows_}
        if model:
            box.recipe["model"] = {"model_name_or_path": box.recipe["model"], **model}
    return edit


def probes(*tasks: dict[str, Any]) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.recipe["evaluation"] = {"target": list(tasks)}
    return edit


def raw_recipe(text: str | bytes) -> Callable[[Sandbox], str]:
    def edit(box: Sandbox) -> str:
        return box.recipe_file(text)
    return edit


def model_folder(files: dict[str, bytes]) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        folder = box.root / "model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        for name, content in files.items():
            (folder / name).write_bytes(content)
        box.recipe["model"] = str(folder)
    return edit


HELD_LOCKS: list[int] = []  # descriptors whose flock stands in for a live run's lock (closed at exit)


def hold_lock(out: Path) -> int:
    """Hold ``out``'s run lock as a live stagewise run would (the kernel lock, and its holder recorded)."""
    import fcntl
    import socket

    fd = os.open(out / ".stagewise.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}).encode())
    return fd


def in_output(setup: Callable[[Path], None]) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        setup(box.out)
    return edit


def output_elsewhere(setup: Callable[[Path], Path]) -> Callable[[Sandbox], None]:
    def edit(box: Sandbox) -> None:
        box.recipe["output_dir"] = str(setup(box.root))
    return edit


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['a0: &a0 ["x"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{', '.join(f'*a{level - 1}' for _ in range(width))}]")
    return "\n".join(lines) + "\nmodel: tiny-llama\n"


def parquet_file(box: Sandbox, columns: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), box.root / "m.parquet")
    box.recipe["datasets"]["d"].update(path="m.parquet")


def _tiny_weights() -> bytes:
    from safetensors.torch import save

    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    return save(load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0].state_dict())


TINY_WEIGHTS = _tiny_weights()  # valid weights of one architecture, for config.json cases that do not match them
HEADER_BOMB = struct.pack("<Q", 2**62) + b"{}"
TRUNCATED = struct.pack("<Q", 60) + b'{"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}' + b"\0" * 10

# (id, change to the sandbox, text the one error line must contain)
CASES: list[tuple[str, Callable[[Sandbox], Any], str]] = [
    # recipe text
    ("yaml-duplicate-top", raw_recipe("model: tiny-llama\nmodel: tiny-gpt2\n"), "line 2: model: duplicate key (first given on line 1)"),
    ("yaml-duplicate-nested", raw_recipe("stages:\n  - name: a\n    lr: 1\n    lr: 2\n"), "line 4: stages.0.lr: duplicate key"),
    ("yaml-alias-bomb", raw_recipe(alias_bomb()), "expands to more than"),
    ("yaml-not-utf8", raw_recipe(b"model: tiny-llama\ndescription: caf\xe9\n"), "recipe is not UTF-8 text (byte 34 is 0xe9)"),
    ("yaml-syntax", raw_recipe("model: [unclosed\n"), "invalid YAML"),
    ("yaml-top-list", raw_recipe("- a\n- b\n"), "expected a mapping of recipe keys"),
    ("yaml-empty", raw_recipe(""), "expected a mapping of recipe keys"),
    ("yaml-deep-nesting", raw_recipe("a: " + "[" * 5000 + "]" * 5000 + "\n"), "r.yaml"),
    ("yaml-date", raw_recipe("model: tiny-llama\ndescription: 2024-01-01\n"), "line 2: invalid YAML: a date or time"),
    ("yaml-timestamp-in-rows", raw_recipe("model: tiny-llama\ndatasets:\n  d:\n    format: text\n    rows:\n"
                                          "      - {text: 2024-01-01 10:00:00}\n"), "line 6: invalid YAML: a date or time"),
    ("yaml-set", raw_recipe("model: tiny-llama\ndescription: !!set {a, b}\n"), "line 2: invalid YAML: a set"),
    ("yaml-binary", raw_recipe("model: tiny-llama\ndescription: !!binary aGVsbG8=\n"), "line 2: invalid YAML: binary data"),
    ("yaml-bad-int", raw_recipe("model: tiny-llama\nstages:\n  - {name: s, data: d, seed: !!int abc}\n"),
     "line 3: invalid YAML: 'abc' is not a valid int"),
    ("seed-negative", stage(seed=-1), "stages.0.seed: Input should be greater than or equal to 0"),
    ("seed-too-large", stage(seed=2**32), "stages.0.seed: Input should be less than or equal to 4294967295"),
    # names that become paths
    ("dataset-name-escape", lambda b: b.recipe.update(datasets={"x/../../../../tmp/ESCAPED": b.recipe["datasets"]["d"]},
                                                      stages=[{"name": "s", "data": "x/../../../../tmp/ESCAPED"}]),
     "datasets.x/../../../../tmp/ESCAPED: dataset name"),
    ("dataset-name-dotdot", lambda b: b.recipe.update(datasets={"..": b.recipe["datasets"]["d"]},
                                                      stages=[{"name": "s", "data": ".."}]), "dataset name '..'"),
    ("dataset-name-hidden", lambda b: b.recipe.update(datasets={".h": b.recipe["datasets"]["d"]},
                                                      stages=[{"name": "s", "data": ".h"}]), "dataset name '.h'"),
    ("stage-name-dotdot", stage(name=".."), "stages.0.name: expected letters"),
    ("stage-name-slash", stage(name="a/b"), "stages.0.name"),
    ("probe-name-slash", probes({"name": "a/../b", "data": "d", "metric": "perplexity"}), "evaluation.target.0.name"),
    ("probe-name-duplicate", probes({"name": "p", "data": "d", "metric": "perplexity"},
                                    {"name": "p", "data": "d", "metric": "perplexity"}), "duplicate probe name 'p'"),
    # values handed to libraries
    ("optim-unknown", stage(optim="adamz"), "stages.0.optim: unknown optimizer"),
    ("report-to-unknown", top(report_to="bogus"), "report_to: unknown logger 'bogus'"),
    ("report-to-missing-package", top(report_to=["wandb"]), "logger 'wandb' is not installed"),
    ("scheduler-unknown", stage(lr_scheduler_type="cosine_x"), "stages.0.lr_scheduler_type"),
    ("deepspeed-missing-file", top(distributed={"deepspeed": "nope.json"}), "distributed.deepspeed: file 'nope.json' not found"),
    ("deepspeed-not-json", lambda b: (b.write("ds.json", "{bad"), b.recipe.update(distributed={"deepspeed": str(b.root / "ds.json")})),
     "distributed.deepspeed"),
    ("deepspeed-not-installed", lambda b: (b.write("ds.json", "{}"), b.recipe.update(distributed={"deepspeed": str(b.root / "ds.json")})),
     "the deepspeed package is not installed"),
    ("fsdp-not-bool", top(distributed={"fsdp": "full_shard auto_wrap"}), "distributed.fsdp"),
    ("regex-invalid", probes({"name": "p", "data": "d", "metric": "regex", "pattern": "(unclosed"}), "invalid regular expression"),
    ("regex-no-pattern", probes({"name": "p", "data": "d", "metric": "regex"}), "metric 'regex' needs a 'pattern'"),
    ("metric-unknown", probes({"name": "p", "data": "d", "metric": "bleu"}), "evaluation.target.0.metric"),
    ("probe-unknown-data", probes({"name": "p", "data": "nope", "metric": "perplexity"}), "unknown dataset 'nope'"),
    ("max-steps-zero", stage(max_steps=0), "stages.0.max_steps"),
    ("max-steps-negative", stage(max_steps=-7), "stages.0.max_steps"),
    ("model-task-unknown", top(model={"model_name_or_path": "tiny-llama", "task": "seq2seq"}), "model.task"),
    ("model-dtype-unknown", top(model={"model_name_or_path": "tiny-llama", "dtype": "fp8"}), "model.dtype"),
    ("num-labels-one", top(model={"model_name_or_path": "tiny-bert", "num_labels": 1}), "model.num_labels"),
    ("encoding-unknown", dataset(encoding="utf-42"), "datasets.d.encoding: unknown text encoding"),
    ("unknown-top-key", top(outptu_dir="x"), "outptu_dir: unknown key"),
    ("classification-on-causal-lm", rows("classification", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]),
     "classification data needs model.task: sequence_classification"),
    ("preference-without-dpo", rows("preference", [{"prompt": "p", "chosen": "a", "rejected": "b"}]),
     "trainer 'hf' takes lm or classification data, not preference (this stage can use: cpo, dpo, grpo, orpo, reward, rloo, simpo)"),
    # data files
    ("jsonl-not-utf8", data_file("bad.jsonl", b'{"text": "caf\xe9"}\n'), "bad.jsonl line 1: not utf-8 text"),
    ("csv-not-utf8", data_file("bad.csv", b"text\nok\ncaf\xe9\n"), "bad.csv line 3: not utf-8 text"),
    ("jsonl-invalid", data_file("bad.jsonl", '{"text": "a"}\n{"text": \n'), "bad.jsonl line 2: invalid JSON"),
    ("jsonl-deep", data_file("deep.jsonl", "[" * 100000 + "]" * 100000 + "\n"), "deep.jsonl line 1"),
    ("json-deep", data_file("deep.json", "[" * 100000 + "]" * 100000), "deep.json line 1: JSON nested too deeply"),
    ("jsonl-nan", data_file("nan.jsonl", '{"text": "a"}\n{"text": NaN}\n'), "nan.jsonl line 2: NaN is not a JSON number"),
    ("jsonl-huge-int", data_file("big.jsonl", '{"text": "a", "n": ' + "7" * 5000 + '}\n'),
     "big.jsonl line 1: an integer of 5000 digits"),
    ("json-huge-int", data_file("big.json", '[{"text": "a", "n": ' + "7" * 5000 + '}]'), "big.json line 1: an integer of 5000 digits"),
    ("jsonl-lone-surrogate", data_file("s.jsonl", '{"text": "broken \\ud800 text"}\n'), "s.jsonl line 1: field 'text' holds"),
    ("parquet-date-column", lambda b: parquet_file(b, {"text": ["a"], "when": [__import__("datetime").date(2024, 1, 1)]}),
     "m.parquet row 1: field 'when' holds a date"),
    ("parquet-date-out-of-range", lambda b: parquet_file(b, {"text": ["a"], "when": __import__("pyarrow").array(
        [2**30], type=__import__("pyarrow").date32())}), "m.parquet: a value cannot be read"),
    ("parquet-decimal-column", lambda b: parquet_file(b, {"text": ["a"], "price": [__import__("decimal").Decimal("1.5")]}),
     "m.parquet row 1: field 'price' holds a Decimal"),
    ("jsonl-empty", data_file("empty.jsonl", ""), "is empty"),
    ("jsonl-missing-field", data_file("m.jsonl", '{"txt": "a"}\n'), "m.jsonl line 1: field 'text' missing"),
    ("jsonl-row-not-object", data_file("m.jsonl", '["a"]\n'), "m.jsonl line 1: expected an object"),
    ("jsonl-number-text", data_file("m.jsonl", '{"text": 5}\n'), "field 'text' must be text"),
    ("json-not-list", data_file("m.json", '{"text": "a"}'), "expected a JSON list of rows"),
    ("csv-extra-values", data_file("m.csv", "text\na,b\n"), "m.csv line 2: more values than header columns"),
    ("parquet-garbage", data_file("m.parquet", b"not parquet"), "not a readable Parquet file"),
    ("data-unknown-suffix", data_file("m.txt", "a"), "must end in one of"),
    ("data-missing-file", dataset(path="nope.jsonl"), "file"),
    ("preference-empty-chosen", lambda b: (rows("preference", [{"prompt": "p", "chosen": " ", "rejected": "b"}])(b),
                                           stage(trainer="dpo")(b)) and None, "field 'chosen' is empty"),
    ("classification-one-class", rows("classification", [{"text": "a", "label": 1}, {"text": "b", "label": 1}],
                                      task="sequence_classification"), "classification needs at least 2 classes"),
    ("num-labels-mismatch", rows("classification", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                                    {"text": "c", "label": 7}],
                                 task="sequence_classification", num_labels=2), "model.num_labels is 2 but datasets.d has 3"),
    ("label-not-declared", lambda b: rows("classification", [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}],
                                          task="sequence_classification")(b) or b.recipe["datasets"]["d"].update(labels=["x", "y"]),
     "label 'z' not in labels"),
    ("chat-no-assistant", rows("chat", [{"messages": [{"role": "user", "content": "hi"}]}]), "no assistant turn"),
    ("chat-bad-role", rows("chat", [{"messages": [{"role": "bot", "content": "hi"}]}]), "messages[0].role"),
    ("split-bad", dataset(split="train[:x]"), "datasets.d.split"),
    # model folders
    ("model-folder-missing", top(model="/no/such/folder"), "folder '/no/such/folder' not found"),
    ("model-only-pickle", model_folder({"pytorch_model.bin": b"\x80\x04K."}), "only pickle weights (pytorch_model.bin)"),
    ("model-no-weights", model_folder({}), "no *.safetensors weights"),
    ("model-config-a-list", lambda b: (model_folder({"model.safetensors": TINY_WEIGHTS})(b),
                                       (b.root / "model/config.json").write_text("[1, 2]")) and None, "model/config.json"),
    ("model-config-wrong-types", lambda b: (model_folder({"model.safetensors": TINY_WEIGHTS})(b),
                                            (b.root / "model/config.json").write_text(json.dumps(
                                                {"model_type": "llama", "hidden_size": "big"}))) and None, "model"),
    ("model-shapes-mismatch", lambda b: (model_folder({"model.safetensors": TINY_WEIGHTS})(b),
                                         (b.root / "model/config.json").write_text(json.dumps(
                                             {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                              "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 272}))) and None,
     "model"),
    ("model-garbage", model_folder({"model.safetensors": os.urandom(64)}), "model.safetensors: not a valid safetensors file"),
    ("model-header-bomb", model_folder({"model.safetensors": HEADER_BOMB}), "not a valid safetensors file (Error while deserializing header"),
    ("model-truncated", model_folder({"model.safetensors": TRUNCATED}), "not a valid safetensors file"),
    ("model-empty-file", model_folder({"model.safetensors": b""}), "not a valid safetensors file"),
    # output folders
    ("output-nul", top(output_dir="run\x00x"), "output_dir: expected a folder path"),
    ("output-long-part", top(output_dir="x" * 300), "output_dir: path part"),
    ("output-is-file", output_elsewhere(lambda root: (root / "f").write_text("x") and root / "f"), "is a file, expected a folder"),
    ("output-under-file", output_elsewhere(lambda root: (root / "g").write_text("x") and root / "g" / "sub"), "g is a file, not a folder"),
    ("output-foreign", output_elsewhere(lambda root: ((root / "mine").mkdir(), (root / "mine/0-s").mkdir(),
                                                      (root / "mine/0-s/mywork.txt").write_text("keep"))[0] or root / "mine"),
     "holds files stagewise did not write (0-s)"),
    ("manifest-not-json", in_output(lambda out: (out / "manifest.json").write_text("{oops")), "not a readable JSON manifest"),
    ("manifest-json-list", in_output(lambda out: (out / "manifest.json").write_text("[1, 2]")), "not a stagewise manifest"),
    ("manifest-foreign", in_output(lambda out: (out / "manifest.json").write_text('{"name": "my project"}')), "not a stagewise manifest"),
    ("manifest-not-utf8", in_output(lambda out: (out / "manifest.json").write_bytes(b'{"a": "\xff"}')), "not a readable JSON manifest"),
    ("stage-folder-not-owned", lambda b: (b.recipe["stages"].append({"name": "t", "data": "d", "max_steps": 1}),
                                          (b.out / "1-t").mkdir(), (b.out / "1-t/notes.txt").write_text("mine")),
     "stagewise did not create this folder"),
    ("locked-by-live-run", in_output(lambda out: HELD_LOCKS.append(hold_lock(out))), "in use by another stagewise run"),
    ("lock-is-a-folder", in_output(lambda out: (out / ".stagewise.lock").mkdir()), "expected stagewise's lock file"),
    # references and sources
    ("stage-unknown-data", stage(data="nope"), "stages.0.data: unknown dataset 'nope'"),
    ("stage-eval-unknown-data", stage(eval={"data": ["nope"]}), "stages.0.eval: unknown dataset 'nope'"),
    ("stage-trains-on-fewshot", rows("fewshot", [{"task": "t", "input": "a", "output": "b", "prompt_format": "{input}"}]),
     "format 'fewshot' is for evaluation probes only"),
    ("stage-mixes-formats", lambda b: (b.recipe["datasets"].update(p={"format": "classification", "rows": [{"text": "a", "label": 0}]}),
                                       stage(data=["d", "p"])(b)) and None, "cannot mix dataset formats"),
    ("stage-duplicate-names", lambda b: b.recipe["stages"].append(dict(b.recipe["stages"][0])), "duplicate stage name 's'"),
    ("stages-empty", top(stages=[]), "stages: List should have at least 1 item"),
    ("stages-missing", lambda b: b.recipe.pop("stages") and None, "stages: required key is missing"),
    ("model-missing", lambda b: b.recipe.pop("model") and None, "model: required key is missing"),
    ("trust-remote-code-not-bool", top(model={"model_name_or_path": "tiny-llama", "trust_remote_code": "maybe"}),
     "model.trust_remote_code"),
    ("dataset-two-sources", dataset(rows=ROWS), "expected exactly one of 'path', 'rows', 'builtin' or 'hub'"),
    ("dataset-no-source", lambda b: b.recipe["datasets"]["d"].pop("path") and None, "expected exactly one of"),
    ("dataset-template-unknown", dataset(template="llama9"), "datasets.d.template"),
    ("dataset-max-samples-zero", dataset(max_samples=0), "datasets.d.max_samples"),
    ("dataset-rename-loses-field", dataset(columns={"text": "body"}), "field 'text' missing"),
    ("builtin-unknown", lambda b: b.recipe["datasets"].update(d={"format": "text", "builtin": "nope:train"}), "nope"),
    ("builtin-unknown-split", lambda b: b.recipe["datasets"].update(d={"format": "text", "builtin": "facts:nope"}), "nope"),
    ("transform-unknown", stage(transforms=[{"kind": "distil"}]), "unknown data transform 'distil'"),
    ("metric-needs-generative-data", probes({"name": "p", "data": "d", "metric": "contains"}),
     "metric 'contains' takes data of format chat or instruction or prompt_completion, not text (dataset 'd')"),
    ("metric-needs-fewshot-data", probes({"name": "p", "data": "d", "metric": "fewshot"}), "metric 'fewshot' takes data of format fewshot, not text"),
    ("metric-needs-classification-data", probes({"name": "p", "data": "d", "metric": "macro_f1"}),
     "metric 'macro_f1' takes data of format classification, not text"),
    ("metric-highly-known-on-text", probes({"name": "p", "data": "d", "metric": "highly_known"}),
     "metric 'highly_known' takes data of format instruction, not text"),
    # training that goes wrong
    ("diverging-lr", stage(name="t", lr=1e12, max_grad_norm=0, max_steps=3, logging_steps=1), "training diverged"),
]

NUMBER_FIELDS = {  # stage field -> bad values (each its own case)
    "lr": [True, ".inf", ".nan", -1, 0, "abc"],
    "epochs": [True, ".inf", ".nan", -2, 0, "many"],
    "weight_decay": [True, ".inf", -0.1, "x"],
    "warmup_ratio": [True, 1.5, -0.1, ".nan"],
    "max_grad_norm": [True, ".inf", -1],
    "batch_size": [True, 0, -4, 1.5, "x"],
    "grad_accum": [True, 0, 2.5],
    "save_steps": [False, 0, -1],
    "logging_steps": [True, 0],
    "max_length": [True, 4, 1.5],
    "seed": [True, 1.5, "x"],
}
for field, values in NUMBER_FIELDS.items():
    for value in values:
        parsed = yaml.safe_load(value) if isinstance(value, str) and value.startswith(".") else value
        CASES.append((f"stage-{field}-{value}", stage(**{field: parsed}), f"stages.0.{field}"))
for field, value in (("shots", True), ("max_new_tokens", 0), ("n_prompts", ".inf"), ("samples", -1)):
    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    CASES.append((f"probe-{field}-{value}", probes({"name": "p", "data": "d", "metric": "perplexity", field: parsed}),
                  f"evaluation.target.0.{field}"))
for key, value in (("batch_size", True), ("max_length", 2), ("batch_size", ".inf")):
    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    CASES.append((f"evaluation-{key}-{value}", lambda b, k=key, v=parsed: b.recipe.update(
        evaluation={"target": [{"name": "p", "data": "d", "metric": "perplexity"}], k: v}), f"evaluation.{key}"))
for kind, options, expected in (
    ("hft", {"ratio": True}, "stages.0.trainable.ratio"),
    ("hft", {"ratio": ".nan"}, "stages.0.trainable.ratio"),
    ("layers", {"indices": "all"}, "stages.0.trainable.indices"),
    ("lora", {"lora_rank": True}, "stages.0.trainable.lora_rank"),
    ("lora", {"lora_rank": 0}, "stages.0.trainable.lora_rank"),
    ("bogus", {}, "unknown trainable selector 'bogus'"),
):
    parsed = {k: yaml.safe_load(v) if isinstance(v, str) and v.startswith(".") else v for k, v in options.items()}
    CASES.append((f"selector-{kind}-{list(options.items())}", stage(trainable={"kind": kind, **parsed}), expected))
for kind, options in (("tempbalance", {"lr_map": "cubic"}), ("tempbalance", {"min_eigs": True}), ("nope", {})):
    CASES.append((f"lr-rule-{kind}-{list(options.items())}", stage(lr_rule={"kind": kind, **options}), "stages.0.lr_rule"))
for kind, options in (("ldam", {"max_m": ".inf"}), ("focal", {"gamma": True}), ("crossentropy", {})):
    parsed = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in options.items()}
    CASES.append((f"loss-{kind}-{list(options.items())}", stage(loss={"kind": kind, **parsed}), "stages.0.loss"))


def second_dataset(rows_: list[dict[str, Any]] | None = None, **stage_changes: Any) -> Callable[[Sandbox], None]:
    """A second text dataset ``g`` (``rows_``, may be empty) and changes to the stage."""
    def edit(box: Sandbox) -> None:
        box.recipe["datasets"]["g"] = {"format": "text", "rows": ROWS if rows_ is None else rows_}
        box.recipe["stages"][0].update(stage_changes)
    return edit


def later_stage(**first: Any) -> Callable[[Sandbox], None]:
    """A second stage; ``first`` changes the first one (the bad merge is on stage 0)."""
    def edit(box: Sandbox) -> None:
        box.recipe["stages"][0].update(first)
        box.recipe["stages"].append({"name": "later", "data": "d", "max_steps": 1})
    return edit


CASES += [  # baselines: mixtures, merges, regularizers, PEFT variants
    ("mix-negative-weight", second_dataset(data={"d": 1.0, "g": -0.5}), "weight of 'g' is negative"),
    ("mix-all-zero", second_dataset(data={"d": 0.0, "g": 0.0}), "its weight must be > 0"),
    ("mix-unknown-dataset", second_dataset(data={"d": 1.0, "nope": 0.5}), "unknown dataset 'nope'"),
    ("merge-alpha-above-one", stage(trainable="none", merge={"with": "base", "alpha": 1.5}), "must lie in [0, 1]"),
    ("merge-alpha-negative-list", stage(trainable="none", merge={"with": "base", "alpha": [0.5, -0.1]}),
     "must lie in [0, 1]"),
    ("merge-with-later-stage", later_stage(trainable="none", merge={"with": "later", "alpha": 0.5}),
     "stages.0.merge.with: 'later' is neither 'base' nor an earlier stage"),
    ("merge-with-unknown", stage(trainable="none", merge={"with": "nope", "alpha": 0.5}), "'nope' is neither"),
    ("merge-select-unknown-data", stage(trainable="none", merge={"with": "base", "alpha": [0.2, 0.8],
                                                                 "select": {"data": "x", "metric": "perplexity"}}),
     "stages.0.merge.select.data: unknown dataset 'x'"),
    ("merge-density-zero", stage(trainable="none", merge={"method": "ties", "with": "base", "alpha": 1, "density": 0}),
     "stages.0.merge.density"),
    ("ewc-empty-fisher-data", second_dataset([], regularizer={"kind": "ewc", "data": "g"}), "dataset 'g' is empty"),
    ("ewc-unknown-data", stage(regularizer={"kind": "ewc", "data": "nope"}), "stages.0.regularizer.data: unknown dataset"),
    ("ewc-negative-weight", second_dataset(regularizer={"kind": "ewc", "data": "g", "weight": -1}),
     "stages.0.regularizer.weight"),
    ("l2sp-nan-weight", stage(regularizer={"kind": "l2sp", "weight": float("nan")}), "stages.0.regularizer.weight"),
    ("dora-missing-module", stage(trainable={"kind": "lora", "use_dora": True, "lora_target": ["nope_proj"]}),
     "trainable.lora_target"),
    ("osf-missing-module", stage(trainable={"kind": "osf", "target": ["nope_proj"]}), "trainable.target"),
    ("corda-without-data", stage(trainable={"kind": "lora", "init": "corda"}), "init: corda and corda_data go together"),
    ("lora-unknown-init", stage(trainable={"kind": "lora", "init": "fancy"}), "stages.0.trainable.init"),
    ("self-replay-unknown-prompts", stage(transforms=[{"kind": "self_replay", "prompts": "nope"}]),
     "stages.0.transforms.0"),
]
for override, expected in (("stages.9.lr=1", "stages.9 is not a valid index"), ("=1", "empty key part"),
                           ("stages.0.lr", "expected key=value"), ("stages.0.lr=true", "stages.0.lr"),
                           ("stages.0.epochz=1", "did you mean 'epochs'"),
                           ("description=2024-01-01", "a date or time is not a recipe value"),
                           ("stages.0.lr=2024-01-01 10:00:00", "a date or time is not a recipe value"),
                           ("description=!!binary aGk=", "binary data is not a recipe value"),
                           ("output_dir=$STAGEWISE_TEST_UNSET/run", "environment variable $STAGEWISE_TEST_UNSET is not set")):
    CASES.append((f"override-{override}", lambda b, o=override: b.recipe.update(_override=o), expected))


@pytest.mark.parametrize("case_id,change,expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case_id, change, expected, tmp_path, finished_run, capsys):
    box = Sandbox(tmp_path / "box", finished_run)
    written = change(box)
    before_outputs = snapshot(box.out)
    override = box.recipe.pop("_override", None)
    recipe_path = written if isinstance(written, str) else box.recipe_file()
    before_tree = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))

    def hang(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{case_id}: no answer within 60 s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        status = main(["run", recipe_path, *([override] if override else [])])
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert expected in errors[0], errors[0]
    if box.out.is_dir() and (box.out / "0-s").is_dir():  # the finished run is untouched
        after = snapshot(box.out)
        changed = [name for name in before_outputs if after.get(name) != before_outputs[name]]
        assert not changed or changed == ["manifest.json"] and case_id == "diverging-lr", changed
    after_tree = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    new = [p for p in after_tree if p not in before_tree and not p.startswith(("box/run/", "cache/"))]
    assert not new, f"written outside the output folder: {new}"
    assert not Path("/tmp/ESCAPED.jsonl").exists()


def test_home_and_variables_in_output_paths_are_expanded_once(tmp_path, monkeypatch):
    """``~`` and ``$VAR`` in an output folder are the user's home and variable, never a literal ``~``
    folder beside the recipe (transformers expands ``~`` itself: one run would write to two places)."""
    from stagewise.config import load_recipe
    from stagewise.study.config import StudyConfig

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(base_recipe(tmp_path / "unused")))
    assert load_recipe(recipe_file, ["output_dir=~/x"]).output_dir == str(tmp_path / "home/x")
    assert load_recipe(recipe_file, ["output_dir=${RUNS}/y"]).output_dir == str(tmp_path / "runs/y")
    study = StudyConfig.model_validate({"arms": {"a": {"recipe": "r.yaml"}}, "seeds": [0], "output_dir": "~/s"})
    assert study.output_dir == str(tmp_path / "home/s")


def test_there_are_at_least_150_cases():
    assert len(CASES) >= 150, len(CASES)
