"""SDFT distillation, SliCK categorization and Gradual Learning selection; the generation
machinery they share (batching must not change greedy answers; results are cached)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import make_recipe, run

from stagewise.config import ModelConfig
from stagewise.generation import (
    GumbelSample,
    SamplingConfig,
    first_line,
    generate,
    prompt_generator,
    sampling_processors,
)
from stagewise.models import load_model_and_tokenizer
from stagewise.strategies.gradual import SelectConfig, choose
from stagewise.strategies.gradual.slick import ProbeSettings, categorize, slick_category
from stagewise.strategies.sdft import distill_prompt, merge_rewrites
from stagewise.transforms import cached


def test_distill_template_golden_strings():
    row = {"instruction": "Add 2 and 3.", "output": "2 + 3 = 5\n#### 5"}
    assert distill_prompt(row, "general") == (
        "Below are an instruction that describes a task along with a reference answer. Using the reference answer "
        "as a guide, write your own response.\n\n### Instruction:\nAdd 2 and 3.\n\n### Reference Answer:\n"
        "2 + 3 = 5\n#### 5\n\n### Response:\n")
    assert distill_prompt({**row, "input": "quickly"}, "refer").startswith(
        "Below are an instruction that describes a task along with a reference answer. Refer to the reference "
        "answer and write your own response.\n\n### Instruction:\nAdd 2 and 3.\n\nquickly\n\n")


def test_rewrites_failing_filter_or_check_keep_the_original():
    rows = [{"instruction": f"q{i}", "output": f"... #### {i}", "answer": str(i)} for i in range(5)]
    rewrites = ["Adding gives 0.", "As the reference answer says, 1", "So the total is 7.", "Your turn: 3", " The answer is 4.0 "]
    out, counts = merge_rewrites(rows, rewrites, "last_integer")
    assert len(out) == len(rows)
    assert [r["output"] for r in out] == ["Adding gives 0.", "... #### 1", "... #### 2", "... #### 3", "The answer is 4.0"]
    assert counts == {"kept": 2, "rejected_filter": 2, "rejected_check": 1}


def test_slick_rules():
    assert slick_category([True, True], [False]) == "HighlyKnown"
    assert slick_category([True, False], [False]) == "MaybeKnown"
    assert slick_category([False, False], [False, True]) == "WeaklyKnown"
    assert slick_category([False, False], [False, False]) == "Unknown"


def test_mocked_generator_yields_exactly_the_four_categories():
    items = [{"instruction": f"Q{i}?", "output": f"A{i}", "type": "t"} for i in range(4)]
    settings = ProbeSettings(n_prompts=3, shots=2, samples=4, seed=0)
    calls = []

    def answer(prompts, sampling):
        """Item i's correctness is fixed by (item, prompt, sample): 0 always, 1 on its first prompt
        only, 2 only in one sample, 3 never. The first sequence of each prompt is the greedy one."""
        calls.append((len(prompts), sampling.num_return_sequences, sampling.greedy_first))
        outputs = []
        for position, prompt in enumerate(prompts):
            item, prompt_index = divmod(position, settings.n_prompts)
            gold, wrong = f"A{item}", "nope"
            greedy_right = item == 0 or (item == 1 and prompt_index == 0)
            samples = [gold if item == 2 and prompt_index == 1 and s == 2 else wrong
                       for s in range(sampling.num_return_sequences - 1)]
            outputs.append([gold if greedy_right else wrong, *samples])
        return outputs

    results = categorize(items, settings, answer)
    assert [r["category"] for r in results] == ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]
    assert results[1]["p_greedy"] == pytest.approx(1 / 3)
    assert results[2]["p_sampled"] == pytest.approx(1 / 12)
    assert calls == [(12, 5, True)]  # 4 items x 3 prompts, 1 greedy + 4 samples each, in one pass


def test_stage_two_selector_returns_upgraded_plus_replay_at_ratio():
    rows = [{"id": i} for i in range(12)]
    before = ["Unknown"] * 4 + ["WeaklyKnown"] * 4 + ["HighlyKnown"] * 4
    now = ["MaybeKnown", "HighlyKnown", "Unknown", "Unknown",
           "HighlyKnown", "WeaklyKnown", "MaybeKnown", "Unknown",
           "HighlyKnown", "HighlyKnown", "HighlyKnown", "MaybeKnown"]
    config = SelectConfig(kind="select", upgraded_from=["WeaklyKnown", "Unknown"], to=["MaybeKnown", "HighlyKnown"],
                          replay={"categories": ["HighlyKnown"], "ratio": 0.5})
    picked = choose(rows, now, before, config, seed=0)
    upgraded = [{"id": 0}, {"id": 1}, {"id": 4}, {"id": 6}]
    assert picked[:4] == upgraded
    replay = picked[4:]
    assert len(replay) == 2 and all(now[r["id"]] == "HighlyKnown" and r not in upgraded for r in replay)
    already_known = ["HighlyKnown"] * 11
    picked = choose(rows, ["MaybeKnown", *already_known], ["Unknown", *already_known], config, seed=0)
    assert len(picked) == 2  # 1 upgraded + 0.5 replay, rounded up (Python's round(0.5) would give 0)
    stage_one = choose(rows, now, None, SelectConfig(kind="select", categories=["MaybeKnown"]), seed=0)
    assert [r["id"] for r in stage_one] == [0, 6, 11]


def test_select_config_needs_one_rule():
    with pytest.raises(ValueError, match="give either 'categories' or 'upgraded_from'"):
        SelectConfig(kind="select")
    with pytest.raises(ValueError, match="'upgraded_from' and 'to' go together"):
        SelectConfig(kind="select", upgraded_from=["Unknown"])


def test_batched_greedy_equals_one_at_a_time():
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    prompts = [tokenizer(text)["input_ids"] for text in ["a", "hello there", "xyz xyz xyz xyz", "q"]]
    batched = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=6), batch_size=4)
    single = [generate(model, tokenizer, [p], SamplingConfig(max_new_tokens=6), batch_size=1)[0] for p in prompts]
    assert batched == single
    sampled = SamplingConfig(max_new_tokens=6, do_sample=True, temperature=1.0, num_return_sequences=3, seed=7)
    first, again = generate(model, tokenizer, prompts, sampled), generate(model, tokenizer, prompts, sampled)
    assert first == again and all(len(texts) == 3 for texts in first)
    with_greedy = generate(model, tokenizer, prompts, replace(sampled, greedy_first=True))
    assert [texts[0] for texts in with_greedy] == [texts[0] for texts in batched]


def test_gumbel_draws_follow_the_softmax_and_greedy_rows_take_the_argmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    scores = probs.log().repeat(40_000, 1)
    generators = [prompt_generator(0, index, torch.device("cpu")) for index in range(10_000)]
    picks = GumbelSample(generators, copies=4, greedy_first=True)(None, scores.clone()).argmax(-1)
    assert (picks[::4] == 0).all()  # greedy rows
    sampled = torch.cat([picks[k::4] for k in (1, 2, 3)])
    frequencies = torch.bincount(sampled, minlength=4).float() / len(sampled)
    assert torch.allclose(frequencies, probs, atol=0.01), frequencies
    config = SamplingConfig(do_sample=True, temperature=0.5, top_k=2)
    warped = sampling_processors(config, generators)(None, scores[:10_000].clone())
    frequencies = torch.bincount(warped.argmax(-1), minlength=4).float() / 10_000
    expected = torch.tensor([0.5 ** 2, 0.3 ** 2, 0, 0]) / (0.5 ** 2 + 0.3 ** 2)  # T=0.5 squares, top-2 kept
    assert torch.allclose(frequencies, expected, atol=0.015), frequencies


def test_sampled_answers_do_not_depend_on_batch_size():
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    prompts = [tokenizer(text)["input_ids"] for text in ["a", "hello there", "xyz xyz xyz xyz", "q", "Q: b?"]]
    sampled = SamplingConfig(max_new_tokens=6, do_sample=True, temperature=1.0, num_return_sequences=3, seed=3)
    assert generate(model, tokenizer, prompts, sampled, batch_size=3) == generate(model, tokenizer, prompts, sampled, batch_size=15)


def test_shared_prefill_and_first_line_stop_match_plain_generation():
    """Copies decoded from one prefilled cache equal a plain generate call; stopping at the
    first line returns exactly the first line of the unstopped output."""
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    prompts = [tokenizer(text)["input_ids"] for text in ["Q: a?\nA:", "hello there\n", "xyz xyz xyz xyz"]]
    plain = [ids[width:] for ids, width in zip(
        model.generate(input_ids=torch.tensor([prompts[2]]), max_new_tokens=12, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id).tolist(), [len(prompts[2])])]
    [[copy_a, copy_b]] = generate(model, tokenizer, [prompts[2]], SamplingConfig(max_new_tokens=12, num_return_sequences=2))
    assert copy_a == copy_b == tokenizer.decode(plain[0], skip_special_tokens=True)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():  # make line breaks likely, so some outputs go on past their first line
        model.get_output_embeddings().weight[newline] *= 4
    full = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=12))
    assert any("\n" in texts[0].strip() for texts in full)
    stopped = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=12, first_line=True))
    assert stopped == [[first_line(texts[0])] for texts in full]


def test_cached_results_are_not_recomputed():
    calls = []
    compute = lambda: calls.append(1) or {"value": 42}  # noqa: E731
    assert cached("unit", ["k", 1], compute) == {"value": 42}
    assert cached("unit", ["k", 1], compute) == {"value": 42}
    assert cached("unit", ["k", 2], compute) == {"value": 42}
    assert len(calls) == 2


MATH = [{"instruction": f"What is {i} + {i}?", "output": f"{i} + {i} = {2 * i}\n#### {2 * i}", "answer": str(2 * i)}
        for i in range(6)]


def test_distill_stage_trains_on_the_seed_models_own_rewrites(tmp_path):
    """Every row comes back; each kept row's answer is exactly what the model entering the stage
    wrote for it (regenerated here with the same sampling: the transform's seed, not the stage's)
    and differs from the original."""
    from stagewise.strategies.sdft import DistillConfig, encode_distill_prompts

    stage = {"name": "sdft", "data": "math", "max_steps": 2, "batch_size": 2, "seed": 3,
             "transforms": [{"kind": "distill", "max_new_tokens": 8, "check": "none", "seed": 7}]}
    datasets = {"math": {"format": "instruction", "template": "alpaca", "rows": MATH}}
    result = run(make_recipe(tmp_path, [stage], datasets=datasets))
    [report] = result.manifest["stages"][0]["transforms"]
    assert report["kind"] == "distill" and report["rows"] == 6
    assert report["kept"] + report["rejected_filter"] + report["rejected_check"] == 6 and report["kept"] >= 1
    distilled = [json.loads(line) for line in (tmp_path / "run/0-sdft/distilled-math.jsonl").read_text().splitlines()]
    assert len(distilled) == 6 and result.manifest["stages"][0]["train_rows"] == 6

    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    config = DistillConfig(kind="distill", max_new_tokens=8, check="none")
    sampling = SamplingConfig(max_new_tokens=8, do_sample=True, temperature=config.temperature, top_p=config.top_p,
                              top_k=config.top_k, seed=7)
    own = [texts[0].strip() for texts in generate(model, tokenizer, encode_distill_prompts(MATH, tokenizer, config),
                                                   sampling, batch_size=config.batch_size)]
    for row, original, rewrite in zip(distilled, MATH, own):
        if "original_output" in row:  # kept: the model's words, not the dataset's
            assert row["output"] == rewrite and row["output"] != original["output"]
            assert row["original_output"] == original["output"]
        else:
            assert row == original


def test_gsm8k_distill_request_golden_tokens():
    """The reference's math template: system turn, question + reference as the user turn, and the
    answer opened with "Great! Let's think step by step. " (chat), or the same text in order."""
    from stagewise.strategies.sdft import DistillConfig, encode_distill_prompts

    _, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    row = {"instruction": "What is 2 + 3?", "output": "2 + 3 = 5\n#### 5"}
    system = ("You are an expert in math. Below are a math question and its reference answer. Refer to the "
              "reference answer and write a response that appropriately answers the question.")
    plain = encode_distill_prompts([row], tokenizer, DistillConfig(kind="distill", template="gsm8k_distill",
                                                                   chat_template="never"))
    assert tokenizer.decode(plain[0], skip_special_tokens=True) == (
        f"{system}\n\nWhat is 2 + 3?\n\n2 + 3 = 5\n#### 5\n\nGreat! Let's think step by step. ")
    chat = encode_distill_prompts([row], tokenizer, DistillConfig(kind="distill", template="gsm8k_distill",
                                                                  chat_template="always"))
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": "What is 2 + 3?\n\n2 + 3 = 5\n#### 5"}],
        add_generation_prompt=True, tokenize=False) + "Great! Let's think step by step. "
    assert tokenizer.decode(chat[0]) == expected


def test_gradual_select_keeps_exactly_one_categorys_items_and_categorize_cli(tmp_path, capsys):
    """Half the items' gold answers are the model's own greedy answers (zero-shot, so each prompt
    is fixed): those are HighlyKnown, the rest Unknown; selecting HighlyKnown keeps exactly them."""
    from stagewise.cli import main
    from stagewise.strategies.gradual.slick import model_answerer, qa_prompt

    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    questions = [f"Capital {i}?" for i in range(8)]
    greedy = model_answerer(model, tokenizer)([qa_prompt({"instruction": q}, []) for q in questions],
                                              SamplingConfig(max_new_tokens=3, first_line=True))
    qa = [{"instruction": q, "output": answer[0].strip() if i % 2 == 0 else "zzz qqq", "id": f"q{i}"}
          for i, (q, answer) in enumerate(zip(questions, greedy))]
    assert all(row["output"] for row in qa)
    probe = {"n_prompts": 1, "shots": 0, "samples": 0, "max_new_tokens": 3}
    stages = [{"name": "known", "data": "qa", "max_steps": 1, "batch_size": 2,
               "transforms": [{"kind": "select", "categories": ["HighlyKnown"], **probe}]}]
    result = run(make_recipe(tmp_path, stages, datasets={"qa": {"format": "instruction", "rows": qa}}))
    [report] = result.manifest["stages"][0]["transforms"]
    assert report["categories_now"] == {"HighlyKnown": 4, "MaybeKnown": 0, "WeaklyKnown": 0, "Unknown": 4}
    assert report["rows_out"] == 4 and result.manifest["stages"][0]["train_rows"] == 4
    selected = [json.loads(line) for line in (tmp_path / "run/0-known/selected-qa.jsonl").read_text().splitlines()]
    assert [row["id"] for row in selected] == ["q0", "q2", "q4", "q6"]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in qa))
    assert main(["categorize", "--model", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "cat.jsonl"),
                 "--n-prompts", "1", "--shots", "0", "--samples", "0", "--max-new-tokens", "3"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "cat.jsonl").read_text().splitlines()]
    assert [line["category"] for line in lines] == ["HighlyKnown", "Unknown"] * 4
    assert "HighlyKnown" in capsys.readouterr().out


def test_a_stage_whose_selection_keeps_nothing_stops_with_one_line(tmp_path):
    """A random tiny model knows nothing: selecting HighlyKnown items leaves no training row."""
    from stagewise.errors import DataError

    qa = [{"instruction": f"Who is {name}?", "output": name} for name in ("ab", "cd", "ef", "gh")]
    stage = {"name": "known", "data": ["qa", "more"], "max_steps": 1,
             "transforms": [{"kind": "select", "categories": ["HighlyKnown"], "n_prompts": 2, "shots": 1,
                             "samples": 1, "max_new_tokens": 3}]}
    datasets = {name: {"format": "instruction", "template": "alpaca", "rows": qa} for name in ("qa", "more")}
    with pytest.raises(DataError) as error:
        run(make_recipe(tmp_path, [stage], datasets=datasets))
    message = str(error.value)
    assert "\n" not in message and "kept no training row" in message
    assert "select on qa+more: rows in 8, rows out 0, categories now" in message and "'Unknown': 8" in message


def test_selection_runs_over_all_stage_datasets_and_hands_rows_back_to_their_own(tmp_path):
    """Select is stage-wide (replay counts against every upgraded item); each dataset keeps its rows."""
    from stagewise.data import load_dataset_config
    from stagewise.engine.context import ModelIdentity, StageContext
    from stagewise.engine.stage_data import transform_stage_data

    def qa(names):
        return [{"instruction": f"Who is {name}?", "output": name} for name in names]

    datasets = {"a": {"format": "instruction", "template": "alpaca", "rows": qa(["ab", "cd", "ef", "gh"])},
                "b": {"format": "instruction", "template": "alpaca", "rows": qa(["ij", "kl", "mn"])}}
    stage = {"name": "s", "data": ["a", "b"], "transforms": [
        {"kind": "select", "categories": ["Unknown"], "n_prompts": 2, "shots": 1, "samples": 1, "max_new_tokens": 3}]}
    recipe = make_recipe(tmp_path, [stage], datasets=datasets)
    loaded = {name: load_dataset_config(name, recipe.datasets[name]) for name in datasets}
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    identity = ModelIdentity(key="k-stagewide", seed_key="k-stagewide", load_seed=lambda: (model, tokenizer),
                             weights_of=lambda name: None, folder_of=lambda name: tmp_path,
                             model_of=lambda name: model)
    out, reports = transform_stage_data(model, tokenizer, StageContext(recipe, 0, loaded, tmp_path, identity,
                                                                       log=lambda message: None))
    [report] = reports
    assert report["data"] == "a+b" and report["rows_in"] == 7
    assert report["rows_out_per_dataset"] == {"a": 4, "b": 3}
    assert out["a"].rows == loaded["a"].rows and out["b"].rows == loaded["b"].rows
    assert len((tmp_path / "selected-a+b.jsonl").read_text().splitlines()) == 7


def test_a_dataset_emptied_by_a_transform_is_skipped_while_the_others_train(tmp_path):
    import dataclasses

    from stagewise.data import load_dataset_config
    from stagewise.engine.stage_data import encode_stage_data

    qa = [{"instruction": f"Who is {name}?", "output": name} for name in ("ab", "cd", "ef")]
    datasets = {name: {"format": "instruction", "template": "alpaca", "rows": qa} for name in ("kept", "emptied")}
    recipe = make_recipe(tmp_path, [{"name": "s", "data": ["kept", "emptied"]}], datasets=datasets)
    loaded = {name: load_dataset_config(name, recipe.datasets[name]) for name in datasets}
    loaded["emptied"] = dataclasses.replace(loaded["emptied"], rows=[])
    _, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    examples = encode_stage_data(recipe, recipe.stages[0], ["kept", "emptied"], loaded, tokenizer, None)
    assert len(examples) == 3


def test_selection_over_datasets_of_another_format_is_refused_at_validation(tmp_path):
    from stagewise.errors import RecipeError

    datasets = {"qa": {"format": "instruction", "template": "alpaca", "rows": [{"instruction": "q", "output": "a"}]},
                "prose": {"format": "text", "rows": [{"text": "some plain text"}]}}
    stage = {"name": "s", "data": ["qa", "prose"], "max_steps": 1,
             "transforms": [{"kind": "select", "categories": ["Unknown"], "n_prompts": 1, "samples": 0}]}
    with pytest.raises(RecipeError, match=r"stages.0.transforms.0: data transform 'select' takes data of format "
                                          r"instruction, not instruction, text") as error:
        make_recipe(tmp_path, [stage], datasets=datasets)
    assert "\n" not in str(error.value)
