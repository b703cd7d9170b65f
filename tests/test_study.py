"""`stagewise study` end to end on tiny models, its resume, its outputs and its bad inputs."""
from __future__ import annotations

import json

import pytest
import yaml

from stagewise.cli import main

FACTS = [{"instruction": f"Where was P{i} born?", "output": f"Town{i}"} for i in range(8)]
TEXT = [{"text": f"the quick brown fox number {i}"} for i in range(6)]


def write_study(tmp_path, **changes):
    recipe = {
        "model": "tiny-llama",
        "datasets": {"facts": {"format": "instruction", "template": "alpaca", "rows": FACTS},
                     "text": {"format": "text", "rows": TEXT}},
        "stages": [{"name": "sft", "data": "facts", "lr": 1e-2, "epochs": 2, "batch_size": 4}],
        "evaluation": {"target": [{"name": "recall", "data": "facts", "metric": "contains", "max_new_tokens": 4}],
                       "retention": [{"name": "ppl", "data": "text", "metric": "perplexity"}],
                       "every": "epoch"},
        "output_dir": "unused",
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    study = {
        "arms": {"full": {"recipe": "base.yaml"},
                 "top": {"recipe": "base.yaml", "overrides": ["stages.0.trainable={kind: layers, indices: [-1]}"]},
                 "lr": {"recipe": "base.yaml", "sweep": {"key": "stages.0.lr", "values": [1e-3, 1e-2]}}},
        "baseline": "full",
        "seeds": [0, 1],
        "bootstrap": 200,
        "gain_levels": [0.05],
        "output_dir": str(tmp_path / "study"),
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_study_runs_every_arm_and_seed_and_writes_its_outputs(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "0 of 8 runs done" in capsys.readouterr().out
    assert main(["study", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| full |" in printed and "(baseline)" in printed and "minimal detectable difference" in printed
    out = tmp_path / "study"
    results = json.loads((out / "study.json").read_text())
    assert set(results["rows"]) == {"full", "top", "lr@0.001", "lr@0.01"}
    for name in ("top", "lr@0.001", "lr@0.01"):
        versus = results["rows"][name]["probes"]["recall"]["vs_baseline"]
        assert versus["low"] <= versus["estimate"] <= versus["high"] and 0 < versus["p_holm"] <= 1
    assert "vs_baseline" not in results["rows"]["full"]["probes"]["recall"]
    assert results["frontier"]["note"] == "no gain range that every arm measured"  # 0/1 recall: some arm gains 0
    assert results["probes"]["recall"]["items"] == 8 and results["probes"]["ppl"]["items"] == 6
    # every epoch-1 point plus the final point, per arm; a sweep arm's curve is its sweep values
    assert len(results["matched"]["full"]["curve"]) == 2 and len(results["matched"]["lr"]["curve"]) == 2
    assert len(results["matched"]["full"]["ppl"]) == 2  # baseline's gain and the extra level
    assert results["cost"]["runs"] == 8 and results["cost"]["train_s"] > 0 and results["cost"]["eval_s"] > 0
    for name in ("study.md", "study.png", "forest.png"):
        assert (out / name).stat().st_size > 0
    runs = sorted(p.relative_to(out).as_posix() for p in out.glob("runs/*/**/seed-*"))
    assert runs == ["runs/full/seed-0", "runs/full/seed-1", "runs/lr/lr=0.001/seed-0", "runs/lr/lr=0.001/seed-1",
                    "runs/lr/lr=0.01/seed-0", "runs/lr/lr=0.01/seed-1", "runs/top/seed-0", "runs/top/seed-1"]
    manifest = json.loads((out / "runs/top/seed-1/manifest.json").read_text())
    assert manifest["recipe"]["stages"][0]["seed"] == 1
    stage = manifest["stages"][0]  # each probe and the KL predictor say what they cost
    assert stage["evaluation"]["target"]["recall"]["seconds"] > 0 and stage["kl_to_entering"]["seconds"] > 0
    assert stage["evaluation"]["retention"]["ppl"]["seconds"] <= stage["eval_time_s"]

    manifest_path = out / "runs/top/seed-1/manifest.json"  # written before a key with a default existed
    older = json.loads(manifest_path.read_text())
    del older["recipe"]["datasets"]["facts"]["cluster"]
    manifest_path.write_text(json.dumps(older))
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "8 of 8 runs done" in capsys.readouterr().out
    hashed = json.loads(manifest_path.read_text())  # trained on other data or config: the engine would retrain it
    true_hash = hashed["stages"][0]["config_hash"]
    hashed["stages"][0]["config_hash"] = "0" * 16
    manifest_path.write_text(json.dumps(hashed))
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "7 of 8 runs done" in capsys.readouterr().out
    hashed["stages"][0]["config_hash"] = true_hash
    manifest_path.write_text(json.dumps(hashed))
    # a truncated final per-item file (rescored from the weights) and an edited curve point's (retrained)
    final = out / "runs/full/seed-0" / stage["evaluation"]["target"]["recall"]["items_file"]
    final.write_text(final.read_text()[:-7])
    curve = out / "runs/top/seed-1" / stage["curve"][0]["evaluation"]["retention"]["ppl"]["items_file"]
    curve.write_text(curve.read_text().replace('"score": ', '"score": 0', 1))
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "6 of 8 runs done" in capsys.readouterr().out
    assert main(["study", str(path)]) == 0  # everything reused or recomputed: same numbers
    again = json.loads((out / "study.json").read_text())
    assert again["rows"] == results["rows"]
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "8 of 8 runs done" in capsys.readouterr().out


def test_the_baseline_compared_with_itself_is_no_difference(tmp_path):
    """Two arms with the same recipe and seeds train the same weights: zero difference, p = 1."""
    path = write_study(tmp_path, arms={"full": {"recipe": "base.yaml"}, "copy": {"recipe": "base.yaml"}})
    assert main(["study", str(path)]) == 0
    versus = json.loads((tmp_path / "study/study.json").read_text())["rows"]["copy"]["probes"]["recall"]["vs_baseline"]
    assert versus["estimate"] == 0 and versus["half_width"] == 0 and versus["p_value"] == 1


def test_a_subset_of_arms_or_seeds_shares_the_runs_and_reports_apart(tmp_path, capsys):
    """--arms runs the named arms plus the baseline, --seeds some seeds; their reports never
    overwrite the whole study's."""
    path = write_study(tmp_path)
    assert main(["study", str(path), "--arms", "top", "--dry-run"]) == 0
    assert "0 of 4 runs done" in capsys.readouterr().out
    assert main(["study", str(path), "--arms", "top"]) == 0
    out = tmp_path / "study"
    subset = json.loads((out / "arms-full+top" / "study.json").read_text())
    assert set(subset["rows"]) == {"full", "top"} and not (out / "study.json").exists()
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "4 of 8 runs done" in capsys.readouterr().out  # the subset's runs are the whole study's runs
    one_line_error(capsys, ["study", str(path), "--arms", "top,nope"], "--arms: 'nope' not in")
    # --seeds likewise: a seed's runs are the whole study's, its report goes apart
    assert main(["study", str(path), "--seeds", "0", "--dry-run"]) == 0
    assert "2 of 4 runs done" in capsys.readouterr().out  # full and top seed 0 done, the sweep's two points not
    assert main(["study", str(path), "--arms", "top", "--seeds", "1"]) == 0
    one_seed = json.loads((out / "arms-full+top" / "seeds-1" / "study.json").read_text())
    assert set(one_seed["rows"]) == {"full", "top"} and one_seed["seeds"] == [1] and subset["seeds"] == [0, 1]
    assert one_seed["rows"]["top"]["seeds"] == 1
    capsys.readouterr()
    one_line_error(capsys, ["study", str(path), "--seeds", "0,7"], "--seeds: 7 not in")
    one_line_error(capsys, ["study", str(path), "--seeds", "0,x"], "--seeds: expected comma-separated integers")


def one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize("changes,expected", [
    ({"armz": {}}, "armz: unknown key (did you mean 'arms'?"),
    ({"baseline": "nope"}, "line 15: baseline: 'nope' is not an arm"),
    ({"seeds": [0, 1.5]}, "seeds.1"),
    ({"seeds": [0, True]}, "seeds: expected a number, got a boolean"),
    ({"seeds": [1, 1]}, "seeds must be distinct"),
    ({"arms": {"full": {"recipe": "missing.yaml"}, "b": {"recipe": "base.yaml"}}}, "arms.full.recipe: missing.yaml: recipe file not found"),
    ({"arms": {"full": {"recipe": "base.yaml"}, "b": {"recipe": "base.yaml", "sweep": {"key": "stages.0.lrr", "values": [1]}}}},
     "arms.b.sweep.stages.0.lrr: "),
    ({"arms": {"full": {"recipe": "base.yaml"}, "b": {"recipe": "base.yaml", "sweep": {"stages.0.lr": [1e-3],
                                                                                       "stages.0.epochz": [1]}}}},
     "arms.b.sweep.stages.0.epochz: "),
    ({"arms": {"full": {"recipe": "base.yaml"}, "b": {"recipe": "base.yaml", "sweep": {"stages.0.lr": []}}}},
     "arms.b.sweep: 'stages.0.lr' has no values"),
    ({"arms": {"full": {"recipe": "base.yaml"}, "b": {"recipe": "base.yaml", "overrides": ["evaluation.retention=[]"]}}},
     "arms.b: its probes differ from arm 'full'"),
    ({"arms": {"full": {"recipe": "base.yaml"}, "a/b": {"recipe": "base.yaml"}}}, "arm name 'a/b'"),
    ({"arms": {"full": {"recipe": "base.yaml", "sweep": {"key": "stages.0.lr", "values": [1e-3]}}, "b": {"recipe": "base.yaml"}}},
     "the baseline arm cannot sweep"),
    ({"match_on": "ppl"}, "match_on: 'ppl' is not a target probe"),
    ({"arms": {"full": {"recipe": "base.yaml"}}}, "arms: give at least 2 arms"),
    ({"arms": {"full": {"recipe": "base.yaml"},
               "b": {"recipe": "base.yaml", "sweep": {"key": "description", "values": ["a b", "a_b"]}}}},
     "arms.b.sweep: two values share the run folder name 'description=a_b'"),
    ({"seeds": [-1]}, "seeds.0: Input should be greater than or equal to 0"),
    ({"frontier_baseline": "nope"}, "frontier_baseline: 'nope' is not an arm"),
    ({"frontier_arms": ["full", "nope"]}, "frontier_arms: 'nope' is not an arm"),
    ({"frontier_arms": ["top"]}, "frontier_arms: the frontier baseline 'full' must be one of the frontier arms"),
    ({"bootstrap": 10**15}, "bootstrap: Input should be less than or equal to 100000"),
])
def test_bad_study_files_are_one_line(tmp_path, capsys, changes, expected):
    path = write_study(tmp_path, **changes)
    one_line_error(capsys, ["study", str(path), "--dry-run"], expected)
    assert not (tmp_path / "study").exists()


def test_classification_study_reports_macro_and_per_class_f1(tmp_path):
    rows = [{"text": f"{'good' if i % 3 else 'bad'} film {i}", "label": "pos" if i % 3 else "neg"} for i in range(12)]
    recipe = {
        "model": {"model_name_or_path": "tiny-bert", "task": "sequence_classification"},
        "datasets": {"train": {"format": "classification", "rows": rows, "labels": ["neg", "pos"]}},
        "stages": [{"name": "ft", "data": "train", "lr": 1e-2, "max_steps": 3, "batch_size": 4}],
        "evaluation": {"target": [{"name": "sentiment", "data": "train", "metric": "macro_f1"}]},
    }
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(recipe))
    study = {"arms": {"plain": {"recipe": "cls.yaml"}, "slow": {"recipe": "cls.yaml", "overrides": ["stages.0.lr=1e-4"]}},
             "baseline": "plain", "seeds": [0, 1, 2], "bootstrap": 200, "output_dir": str(tmp_path / "study")}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "study.yaml")]) == 0
    results = json.loads((tmp_path / "study/study.json").read_text())
    assert set(results["probes"]) == {"sentiment", "sentiment:f1_neg", "sentiment:f1_pos"}
    manifest = json.loads((tmp_path / "study/runs/plain/seed-0/manifest.json").read_text())
    reported = manifest["stages"][0]["evaluation"]["target"]["sentiment"]["scores"]
    seed0 = [json.loads(line) for line in (tmp_path / "study/runs/plain/seed-0/eval/0-ft/sentiment.jsonl").read_text().splitlines()]
    assert all("gold" in item for item in seed0)
    scores = [json.loads((tmp_path / f"study/runs/plain/seed-{s}/manifest.json").read_text())
              ["stages"][0]["evaluation"]["target"]["sentiment"]["scores"] for s in range(3)]
    plain = results["rows"]["plain"]["probes"]
    assert plain["sentiment"]["score"] == pytest.approx(sum(s["macro_f1"] for s in scores) / 3)
    assert plain["sentiment:f1_neg"]["score"] == pytest.approx(sum(s["f1_neg"] for s in scores) / 3)
    assert "f1_neg" in reported and "vs_baseline" in results["rows"]["slow"]["probes"]["sentiment:f1_neg"]
    assert results["gain_levels"] == [] and "not computed" in (tmp_path / "study/study.md").read_text()


def write_loco_study(tmp_path, recipe_changes=None, **changes):
    def rows(cluster, n=4):
        return [{"id": f"{cluster}{i}", "instruction": f"{cluster} question {i}", "output": f"{cluster}{i}"} for i in range(n)]

    datasets = {f"{c}_train": {"format": "instruction", "template": "alpaca", "cluster": c, "rows": rows(c)}
                for c in ("qa", "math")}
    datasets["mood_train"] = {"format": "classification", "template": "alpaca", "cluster": "mood",  # templated below
                              "rows": [{"id": f"mood{i}", "text": f"day {i}", "label": "calm"} for i in range(4)]}
    datasets |= {f"{c}_test": {"format": "instruction", "template": "alpaca", "cluster": c, "rows": rows(c.upper(), 3)}
                 for c in ("qa", "math", "mood")}
    recipe = {
        "model": "tiny-llama", "datasets": datasets,
        "stages": [{"name": "tune", "data": ["qa_train", "math_train", "mood_train"], "lr": 1e-2, "max_steps": 2,
                    "batch_size": 4, "transforms": [{"kind": "template", "datasets": ["mood_train"],
                                                      "templates": [{"instruction": "Mood of {text}?"}]}]}],
        "evaluation": {"target": [{"name": c, "data": f"{c}_test", "metric": "contains", "max_new_tokens": 4}
                                  for c in ("qa", "math", "mood")]},
        "output_dir": "unused", **(recipe_changes or {}),
    }
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    study = {"loco": {"recipe": "mix.yaml"}, "seeds": [0], "bootstrap": 100, "output_dir": str(tmp_path / "study"),
             **changes}
    path = tmp_path / "loco.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_leave_one_cluster_out_never_trains_on_the_held_out_cluster(tmp_path, capsys):
    path = write_loco_study(tmp_path)
    assert main(["study", str(path)]) == 0
    out = tmp_path / "study"
    results = json.loads((out / "study.json").read_text())
    assert set(results["rows"]) == {"all", "without-qa", "without-math", "without-mood"}
    assert [(row["cluster"], row["probe"]) for row in results["loco"]] == [("qa", "qa"), ("math", "math"), ("mood", "mood")]
    for cluster in ("qa", "math", "mood"):
        manifest = json.loads((out / f"runs/without-{cluster}/seed-0/manifest.json").read_text())
        trained = manifest["stages"][0]["inputs"]["data"]
        assert f"{cluster}_train" not in trained and len(trained) == 2
        datasets = manifest["recipe"]["datasets"]
        trained_ids = {row["id"] for name in trained for row in datasets[name]["rows"]}
        held_out_ids = {row["id"] for name, d in datasets.items() if d["cluster"] == cluster for row in d["rows"]}
        assert trained_ids and not trained_ids & held_out_ids  # no row of the held-out cluster reached training
        templated = out / f"runs/without-{cluster}/seed-0/0-tune/templated-mood_train.jsonl"
        assert templated.exists() == (cluster != "mood")  # the mood set leaves its template transform too
    entry = results["loco"][0]
    assert entry["held_out"] == results["rows"]["without-qa"]["probes"]["qa"]["score"]
    assert entry["included"] == results["rows"]["all"]["probes"]["qa"]["score"]
    assert "## Leave one cluster out" in (out / "study.md").read_text()


@pytest.mark.parametrize("recipe_changes,changes,expected", [
    ({"evaluation": {"target": [{"name": "qa", "data": "qa_test", "metric": "contains"}]}}, {},
     "loco.recipe: cluster 'math' is held out but has no test data"),
    ({}, {"arms": {"a": {"recipe": "mix.yaml"}}}, "a loco study makes its own arms"),
    ({}, {"loco": {"recipe": "mix.yaml", "stage": 3}}, "loco.stage: the recipe has 1 stage(s)"),
])
def test_bad_loco_studies_are_one_line(tmp_path, capsys, recipe_changes, changes, expected):
    path = write_loco_study(tmp_path, recipe_changes, **changes)
    one_line_error(capsys, ["study", str(path), "--dry-run"], expected)


def test_loco_clusters_may_not_share_a_dataset_or_leave_one_unlabelled(tmp_path, capsys):
    path = write_loco_study(tmp_path)
    recipe = yaml.safe_load((tmp_path / "mix.yaml").read_text())
    recipe["datasets"]["math_test"]["rows"] = recipe["datasets"]["qa_test"]["rows"]  # the same rows, another cluster
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(recipe))
    one_line_error(capsys, ["study", str(path), "--dry-run"], "clusters overlap by dataset: 'math_test' (math) and 'qa_test' (qa)")
    recipe = yaml.safe_load((tmp_path / "mix.yaml").read_text())
    recipe["datasets"]["math_test"]["rows"] = [{"instruction": "x", "output": "y"}]
    del recipe["datasets"]["mood_train"]["cluster"]
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(recipe))
    one_line_error(capsys, ["study", str(path), "--dry-run"], "dataset 'mood_train' of stage 0 has no 'cluster'")


def test_a_task_sequence_study_reports_bwt_consistent_with_each_runs_matrix(tmp_path):
    """The study's BWT/average accuracy equal the mean over seeds of each run's own accuracy-matrix
    summary (report.continual_section, computed from the manifests independently)."""
    from stagewise.report import continual_section

    rows_a = [{"instruction": f"a{i}?", "output": f"A{i}"} for i in range(6)]
    rows_b = [{"instruction": f"b{i}?", "output": f"B{i}"} for i in range(6)]
    recipe = {
        "model": "tiny-llama",
        "datasets": {"a": {"format": "instruction", "template": "alpaca", "rows": rows_a},
                     "b": {"format": "instruction", "template": "alpaca", "rows": rows_b}},
        "stages": [{"name": "first", "data": "a", "lr": 3e-2, "max_steps": 4, "batch_size": 3},
                   {"name": "second", "data": "b", "lr": 3e-2, "max_steps": 4, "batch_size": 3}],
        "evaluation": {"target": [{"name": "ta", "data": "a", "metric": "contains", "max_new_tokens": 3, "stage": "first"},
                                  {"name": "tb", "data": "b", "metric": "contains", "max_new_tokens": 3, "stage": "second"}]},
        "output_dir": "unused",
    }
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(recipe))
    study = {"arms": {"full": {"recipe": "seq.yaml"},
                      "low": {"recipe": "seq.yaml", "overrides": ["stages.1.lr=1e-3"]}},
             "baseline": "full", "seeds": [0, 1], "bootstrap": 200, "output_dir": str(tmp_path / "study")}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "study.yaml")]) == 0
    results = json.loads((tmp_path / "study/study.json").read_text())
    continual = results["continual"]
    assert continual["tasks"] == ["ta", "tb"]
    for arm in ("full", "low"):
        per_run = [continual_section(json.loads((tmp_path / f"study/runs/{arm}/seed-{s}/manifest.json").read_text()))
                   for s in (0, 1)]
        for key in ("average_accuracy", "bwt", "fwt"):
            entry = continual["arms"][arm][key]
            assert entry["estimate"] == pytest.approx(sum(run[key] for run in per_run) / 2)
            assert entry["low"] <= entry["estimate"] <= entry["high"]
    versus = continual["arms"]["low"]["bwt"]["vs_baseline"]
    assert versus["estimate"] == pytest.approx(continual["arms"]["low"]["bwt"]["estimate"]
                                               - continual["arms"]["full"]["bwt"]["estimate"])
    assert "## Task sequence: ta -> tb" in (tmp_path / "study/study.md").read_text()


def test_a_sweep_over_several_keys_is_a_grid_of_runs(tmp_path):
    from stagewise.cli import find_recipe
    from stagewise.study.config import load_study

    grid = {"stages.0.lr": [1e-3, 1e-2], "stages.0.epochs": [1, 3]}
    path = write_study(tmp_path, arms={"full": {"recipe": "base.yaml"}, "g": {"recipe": "base.yaml", "sweep": grid}})
    study = load_study(path, find_recipe)
    runs = [run for run in study.runs if run.arm == "g"]
    assert [(run.recipe.stages[0].lr, run.recipe.stages[0].epochs, run.seed) for run in runs] == [
        (lr, epochs, seed) for lr in (1e-3, 1e-2) for epochs in (1, 3) for seed in (0, 1)]
    assert runs[2].point == "g@lr=0.001,epochs=3"
    assert runs[2].recipe.output_dir.endswith("runs/g/lr=0.001+epochs=3/seed-0")


def test_a_study_with_a_continuous_target_compares_frontiers_and_splits_drops(tmp_path):
    """answer_logprob as the target: every arm gains, so frontiers are compared and drawn; a probe with
    recovery_shots gets its format loss per arm."""
    path = write_study(tmp_path, arms={"full": {"recipe": "base.yaml"},
                                       "lr": {"recipe": "base.yaml", "sweep": {"stages.0.lr": [1e-3, 3e-3]}}},
                       seeds=[0], gain_levels=[], frontier_baseline="lr")  # frontiers paired with the sweeping arm
    recipe = yaml.safe_load((tmp_path / "base.yaml").read_text())
    recipe["evaluation"]["target"] = [{"name": "logprob", "data": "facts", "metric": "answer_logprob"}]
    recipe["evaluation"]["retention"].append({"name": "facts_mc", "data": "facts", "metric": "answer_logprob",
                                              "recovery_shots": 2})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["study", str(path)]) == 0
    out = tmp_path / "study"
    frontier = json.loads((out / "study.json").read_text())["frontier"]
    assert len(frontier["levels"]) == 9 and set(frontier["probes"]["ppl"]["arms"]) == {"full", "lr"}
    arms = frontier["probes"]["ppl"]["arms"]
    assert "area" in arms["full"] and "area" not in arms["lr"] and (out / "frontier.png").is_file()
    assert "## Frontiers (logprob gain vs retention)" in (out / "study.md").read_text()
    results = json.loads((out / "study.json").read_text())  # knowledge vs format on the probe scored with examples
    assert results["probes"]["facts_mc@2shot"]["group"] == "recovery"
    split = results["knowledge_vs_format"]["facts_mc"]["arms"]
    assert set(split) == {"full", "lr@0.001", "lr@0.003"} and "vs_baseline" in split["lr@0.001"]
    assert "## Knowledge vs format" in (out / "study.md").read_text()
    correlation = results["kl_vs_retention"]["ppl"]  # 3 runs x 1 stage: KL vs perplexity change
    assert correlation["points"] == 3 and -1 <= correlation["estimate"] <= 1
    study = yaml.safe_load(path.read_text())  # frontier_arms leaves the fixed-LR arm out of the frontiers
    path.write_text(yaml.safe_dump({**study, "frontier_arms": ["lr"]}))
    assert main(["study", str(path)]) == 0  # the runs are reused: only the analysis is redone
    assert set(json.loads((out / "study.json").read_text())["frontier"]["probes"]["ppl"]["arms"]) == {"lr"}


def test_a_one_task_sequence_study_has_no_sequence_summary(tmp_path):
    """With one task there is no earlier task to forget or transfer to: BWT and FWT do not exist, so
    the study reports no task-sequence section (and does not break on the missing values)."""
    rows = [{"instruction": f"a{i}?", "output": f"A{i}"} for i in range(6)]
    recipe = {
        "model": "tiny-llama",
        "datasets": {"a": {"format": "instruction", "template": "alpaca", "rows": rows}},
        "stages": [{"name": "first", "data": "a", "lr": 3e-2, "max_steps": 2, "batch_size": 3}],
        "evaluation": {"target": [{"name": "ta", "data": "a", "metric": "contains", "max_new_tokens": 3,
                                   "stage": "first"}]},
        "output_dir": "unused",
    }
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(recipe))
    study = {"arms": {"full": {"recipe": "one.yaml"}, "low": {"recipe": "one.yaml", "overrides": ["stages.0.lr=1e-3"]}},
             "baseline": "full", "seeds": [0, 1], "bootstrap": 100, "output_dir": str(tmp_path / "study")}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "study.yaml")]) == 0
    assert json.loads((tmp_path / "study/study.json").read_text())["continual"] is None
    assert "## Task sequence" not in (tmp_path / "study/study.md").read_text()


def test_a_subset_of_many_long_arm_names_reports_into_one_valid_folder():
    from stagewise.study.config import subset_folder

    assert subset_folder("arms", ["full", "top"]) == "arms-full+top"
    names = [f"arm_with_a_rather_long_descriptive_name_{i}" for i in range(12)]
    folder = subset_folder("arms", names)
    assert len(folder.encode()) <= 113 and folder.startswith("arms-arm_with_a_rather_long")
    assert folder != subset_folder("arms", names[:11])  # the hash keeps different subsets apart
    assert subset_folder("arms", ["é" * 80]).encode().decode() # cut on a character boundary
