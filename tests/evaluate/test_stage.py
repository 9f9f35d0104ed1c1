"""The evaluate stage: predictions file -> metrics.json, per-class CSV, tables, plot, profiles, report."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evaluate import metrics, profiles
from evaluate.report import aggregate, collect
from pipeline.cli import main


def test_profile_weights_hand_computed():
    counts = [10, 1, 5, 5]
    assert profiles.class_weights("uniform", counts).tolist() == [1, 1, 1, 1]
    assert profiles.class_weights("long_tailed", counts).tolist() == [10, 1, 5, 5]
    # ranks (stable): class 0 (10), 2 (5), 3 (5), 1 (1) -> mirrored counts 1, 5, 5, 10
    assert profiles.class_weights("inverse", counts).tolist() == [1, 10, 5, 5]
    with pytest.raises(ValueError, match="unknown test profile"):
        profiles.class_weights("flat", counts)


def test_resample_follows_the_target_distribution():
    targets = np.zeros((1000, 3), dtype=np.uint8)
    targets[:900, 0] = 1
    targets[900:, 1] = 1
    targets[950:, 2] = 1  # 50 multi-label videos {1, 2}; class 2 never alone
    assert profiles.resample(targets, "as_is", [1, 1, 1], seed=0).tolist() == list(range(1000))
    rows = profiles.resample(targets, "uniform", [1, 1, 1], seed=0)
    assert len(rows) == 1000 and np.array_equal(rows, profiles.resample(targets, "uniform", [1, 1, 1], seed=0))
    drawn = targets[rows].sum(axis=0).astype(int)
    # a third of the draws pick each class; class 1 draws bring class 2 along half the time
    assert abs(drawn[0] - 333) < 50 and abs(drawn[2] - (333 + 333 / 2)) < 60
    assert not np.array_equal(rows, profiles.resample(targets, "uniform", [1, 1, 1], seed=1))
    only_present = profiles.resample(np.array([[1, 0], [1, 0]], dtype=np.uint8), "uniform", [1, 1], seed=0)
    assert set(only_present) <= {0, 1}
    assert profiles.label_distribution(targets) == {"min_positives": 50, "max_positives": 900, "ratio": 18.0,
                                                    "classes_present": 3}


@pytest.fixture
def evaluated(videolt_dir, tmp_path):
    work = tmp_path / "run"
    args = ["--set", "dataset.format=videolt", "--set", f"dataset.root={videolt_dir}", "--work-dir", str(work)]
    assert main(["run", "-q", "--stage", "split", *args]) == 0
    videos = pd.read_parquet(work / "split" / "videos.parquet")
    test = videos[videos.split == "test"]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(test), 5)).astype(np.float32)
    for i, labels in enumerate(test.labels):
        scores[i, list(labels)] += 1.0
    order = rng.permutation(len(test))  # predictions in another order than the split
    path = tmp_path / "pred.npz"
    np.savez(path, scores=scores[order], video_ids=test.video_id.to_numpy().astype(str)[order],
             method="baseline", select_on="val", seed=7)
    assert main(["run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={path}"]) == 0
    targets = np.zeros((len(test), 5), dtype=np.uint8)
    for i, labels in enumerate(test.labels):
        targets[i, list(labels)] = 1
    return work, scores, targets, args, path


def test_stage_outputs_match_the_metrics(evaluated):
    work, scores, targets, _, _ = evaluated
    expected = metrics.compute(scores, targets, [501, 500, 101, 100, 3], head=500, tail=100)
    document = json.loads((work / "evaluate" / "baseline" / "metrics.json").read_text())
    for key in ("mAP", "head", "medium", "tail", "acc1", "acc5"):
        assert document["metrics"][key] == pytest.approx(expected[key], abs=1e-12)
    assert document["run"] == {"seed": 7, "method": "baseline", "select_on": "val"}
    assert set(document["profiles"]) == {"as_is", "uniform", "long_tailed", "inverse"}
    assert document["profiles"]["as_is"]["mAP"] == pytest.approx(expected["mAP"])
    per_class = pd.read_csv(work / "evaluate" / "baseline" / "per_class.csv")
    assert per_class.columns.tolist() == ["class_index", "name", "train_count", "group", "ap", "test_positives"]
    assert per_class.ap.to_numpy() == pytest.approx(expected["per_class_ap"], abs=1e-6)
    assert per_class.test_positives.tolist() == targets.sum(axis=0).tolist()
    assert per_class.group.tolist() == ["head", "medium", "medium", "tail", "tail"]
    table = (work / "evaluate" / "baseline" / "results.md").read_text()
    assert "| Method | Overall | Head | Medium | Tail | Acc@1 | Acc@5 |" in table
    assert f"{expected['mAP']:.3f}" in table and "model selected on val" in table


def test_each_expert_is_scored_alone(evaluated, tmp_path):
    work, scores, targets, args, path = evaluated
    assert "experts" not in json.loads((work / "evaluate" / "baseline" / "metrics.json").read_text())
    assert "## Experts" not in (work / "evaluate" / "baseline" / "results.md").read_text()
    with np.load(path) as data:
        ids, order = data["video_ids"], data["scores"]
    rng = np.random.default_rng(1)
    perfect = targets * 5.0 - 2.0  # the split's order; the file's rows follow the same permutation as scores
    lookup = {tuple(row): i for i, row in enumerate(scores)}
    rows = np.array([lookup[tuple(r)] for r in order])  # where each file row sits in the split's order
    noisy = rng.normal(size=scores.shape).astype(np.float32)
    experts = {"expert_lt": perfect[rows].astype(np.float32), "expert_inv": noisy[rows]}
    np.savez(tmp_path / "medc.npz", scores=order, video_ids=ids, method="medc", select_on="val", seed=7, **experts)
    assert main(["run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={tmp_path / 'medc.npz'}"]) == 0
    document = json.loads((work / "evaluate" / "baseline" / "metrics.json").read_text())
    assert set(document["experts"]) == {"lt", "inv"}
    assert document["experts"]["lt"]["mAP"] == pytest.approx(1.0) and document["experts"]["lt"]["acc1"] == 1.0
    expected = metrics.compute(noisy, targets, [501, 500, 101, 100, 3], head=500, tail=100)
    for key in ("mAP", "head", "medium", "tail", "acc1", "acc5"):
        assert document["experts"]["inv"][key] == pytest.approx(expected[key], abs=1e-12)
    assert set(document["experts"]["inv"]["profiles"]) == {"as_is", "uniform", "long_tailed", "inverse"}
    rows = profiles.resample(targets, "inverse", [501, 500, 101, 100, 3], document["profile_seed"])
    inverse = metrics.compute(perfect[rows], targets[rows], [501, 500, 101, 100, 3], head=500, tail=100)
    assert document["experts"]["lt"]["profiles"]["inverse"]["mAP"] == pytest.approx(inverse["mAP"])
    table = (work / "evaluate" / "baseline" / "results.md").read_text()
    assert "## Experts" in table and "| lt | 1.000 |" in table and "| combination |" in table
    np.savez(tmp_path / "bad.npz", scores=order, video_ids=ids, expert_lt=order[:, :4])
    assert main(["run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={tmp_path / 'bad.npz'}"]) == 2


def test_plot_is_a_png_with_the_group_colours(evaluated):
    with Image.open(evaluated[0] / "evaluate" / "baseline" / "ap_vs_frequency.png") as png:
        assert png.format == "PNG"
        image = png.convert("RGB")
    assert image.size[0] > 600 and image.size[1] > 300
    colours = set(map(tuple, np.asarray(image).reshape(-1, 3).tolist()))
    # the scatter colours of tail / medium / head (matplotlib's tab red, orange, blue)
    for rgb in [(214, 39, 40), (255, 127, 14), (31, 119, 180)]:
        assert rgb in colours


def test_missing_predictions_and_bad_files_are_clear_errors(evaluated, tmp_path, capsys):
    work, scores, _, args, path = evaluated
    with np.load(path) as data:
        ids = data["video_ids"]
    cases = {
        "short.npz": (dict(scores=scores[1:], video_ids=ids[1:]), "no prediction for 1 of 12 videos"),
        "classes.npz": (dict(scores=scores[:, :4], video_ids=ids), "scores have 4 classes, the split has 5"),
        "nan.npz": (dict(scores=np.full_like(scores, np.nan), video_ids=ids), "NaN or Inf"),
        "dup.npz": (dict(scores=scores, video_ids=np.array([ids[0]] * len(ids))), "predicted twice"),
        "keys.npz": (dict(logits=scores), "missing array(s) ['scores', 'video_ids']"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        assert main(["run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={tmp_path / name}"]) == 2
        assert message in capsys.readouterr().err, name


def test_no_train_stage_and_no_predictions_says_what_to_do(videolt_dir, tmp_path, capsys):
    args = ["--set", "dataset.format=videolt", "--set", f"dataset.root={videolt_dir}", "--work-dir", str(tmp_path / "w")]
    assert main(["run", "-q", "--stage", "split", *args]) == 0
    assert main(["run", "-q", "--stage", "evaluate", *args]) == 2
    assert "no predictions to evaluate" in capsys.readouterr().err


def test_changed_predictions_file_makes_evaluate_stale(evaluated, capsys):
    work, scores, _, args, path = evaluated
    with np.load(path) as data:
        arrays = dict(data)
    arrays["scores"] = arrays["scores"][:, ::-1].copy()
    np.savez(path, **arrays)
    assert main(["status", "--work-dir", str(work)]) == 0
    assert "input 'file:predictions' changed" in capsys.readouterr().out


def write_metrics(folder, method, seed, m, features="resnet50", select_on="val"):
    folder.mkdir(parents=True)
    document = {"run": {"method": method, "features": features, "seed": seed, "select_on": select_on},
                "metrics": {"mAP": m, "head": m, "medium": m, "tail": m, "acc1": m, "acc5": m},
                "profiles": {"uniform": {"mAP": m / 2}}}
    (folder / "metrics.json").write_text(json.dumps(document))


def test_report_mean_and_std_over_seeds(tmp_path, capsys):
    write_metrics(tmp_path / "a" / "evaluate" / "baseline", "baseline", 1, 0.50)
    write_metrics(tmp_path / "b" / "evaluate" / "baseline", "baseline", 2, 0.54)
    write_metrics(tmp_path / "c" / "evaluate" / "move", "move", 1, 0.70)
    write_metrics(tmp_path / "d", "baseline", 1, 0.40, select_on="test")
    table = aggregate(collect([tmp_path / x for x in "abcd"]))
    base = table[(table.method == "baseline") & (table.select_on == "val")].iloc[0]
    assert base.runs == 2 and base["mAP_mean"] == pytest.approx(0.52)
    assert base["mAP_std"] == pytest.approx(np.std([0.50, 0.54], ddof=1))
    assert base["mAP[uniform]_mean"] == pytest.approx(0.26)
    assert len(table) == 3  # selection protocol keeps the test-selected run apart
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                 "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| baseline | resnet50 | val | 2 | 0.520 ± 0.028 |" in text
    assert "| move | resnet50 | val | 1 | 0.700 |" in text
    assert pd.read_csv(tmp_path / "rep" / "report.csv").shape[0] == 2
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no evaluate results" in capsys.readouterr().err


def test_views_are_refitted_per_profile_and_incomplete_views_are_clear_errors(evaluated, tmp_path, capsys):
    work, scores, targets, args, path = evaluated
    with np.load(path) as data:
        ids, order = data["video_ids"], data["scores"]
    rng = np.random.default_rng(3)
    experts = {f"expert_{e}": rng.normal(size=order.shape).astype(np.float32) for e in ("lt", "bal")}
    views = {f"view_{side}_{e}": rng.normal(size=order.shape).astype(np.float32) for side in "ab" for e in ("lt", "bal")}
    np.savez(tmp_path / "mea.npz", scores=order, video_ids=ids, method="mea", view_step=0.5, **experts, **views)
    assert main(["run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={tmp_path / 'mea.npz'}"]) == 0
    document = json.loads((work / "evaluate" / "baseline" / "metrics.json").read_text())
    refit = document["experts"]["mix_agreement_per_profile"]
    assert set(refit["weights"]) == set(document["profiles"])
    for weights in refit["weights"].values():  # step 0.5 with two experts: (1, 0), (0.5, 0.5) or (0, 1)
        assert sorted(weights) == ["bal", "lt"] and sorted(weights.values()) in ([0.0, 1.0], [0.5, 0.5])
    assert "mix_agreement_per_profile: the experts' agreement weights refitted" in \
        (work / "evaluate" / "baseline" / "results.md").read_text()
    broken = {"unpaired.npz": {k: v for k, v in views.items() if k != "view_b_bal"},
              "no_step.npz": views,
              "no_expert.npz": {**views, "view_a_inv": order, "view_b_inv": order}}
    for name, arrays in broken.items():
        step = {} if name == "no_step.npz" else {"view_step": 0.5}
        np.savez(tmp_path / name, scores=order, video_ids=ids, **experts, **arrays, **step)
        assert main(["run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={tmp_path / name}"]) == 2
        assert "views need view_a_<e>, view_b_<e> and expert_<e>" in capsys.readouterr().err, name
