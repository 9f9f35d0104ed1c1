"""The command line: help, config errors, the split stage through manifests, skip and staleness."""

import json
import shutil

import pandas as pd
import pytest

from manifests.manifest import build_manifest, write_manifest
from pipeline.cli import main
from pipeline.config import load_config


def run(*args):
    return main(["-q", *args])


def videolt_args(videolt_dir, work_dir):
    return ["--set", "dataset.format=videolt", "--set", f"dataset.root={videolt_dir}", "--work-dir", str(work_dir)]


def manifest(work_dir, stage):
    return json.loads((work_dir / stage / "manifest.json").read_text())


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["status", "--help"], ["config", "--help"],
                                  ["demo-data", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "usage: python -m pipeline" in capsys.readouterr().out


def test_unknown_key_lists_valid_keys(capsys):
    assert run("config", "--set", "split.imbalanse=0.1") == 2
    err = capsys.readouterr().err
    assert "unknown key 'split.imbalanse'" in err
    assert "valid keys here: profile, imbalance, max_per_class, seed, head, tail" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("override, expected", [
    ("split.imbalance=abc", "split.imbalance: Input should be a valid number"),
    ("dataset.format=youtube", "dataset.format: Input should be 'demo', 'synthetic', 'videolt'"),
    ("noequals", "expected key=value"),
    ("dataset=3", "dataset: Input should be a valid dictionary"),
])
def test_bad_values_are_one_clear_error(override, expected, capsys):
    assert run("config", "--set", override) == 2
    assert expected in capsys.readouterr().err


def test_missing_config_file_names_candidates(capsys):
    assert run("config", "--config", "nope") == 2
    assert "config 'nope' not found" in capsys.readouterr().err


def test_config_resolves_defaults_and_overrides():
    cfg = load_config("minik200_r50", ("split.imbalance=0.1", "dataset.root=/x"), work_dir="w")
    assert (cfg.split.imbalance, cfg.dataset.root, cfg.work_dir, cfg.dataset.format) == (0.1, "/x", "w", "minikinetics")


def test_split_on_videolt_lists(videolt_dir, tmp_path):
    work = tmp_path / "run"
    assert run("run", "--stage", "split", *videolt_args(videolt_dir, work)) == 0
    summary = manifest(work, "split")["summary"]
    assert summary["num_classes"] == 5
    assert summary["videos"] == {"train": 1202, "val": 7, "test": 12}
    # counts 501 / 500 / 101 / 100 / 3 with head > 500, tail <= 100
    assert summary["groups"] == {"head": 1, "medium": 2, "tail": 2}
    classes = pd.read_parquet(work / "split" / "classes.parquet")
    assert classes.train_count.tolist() == [501, 500, 101, 100, 3]
    assert classes.group.tolist() == ["head", "medium", "medium", "tail", "tail"]
    assert classes.name.tolist()[3] == "soccerJuggling"
    ingest = manifest(work, "ingest")
    assert set(ingest["inputs"]) == {"file:count-labels-train.lst", "file:train.lst", "file:validate.lst",
                                      "file:test.lst"}
    assert manifest(work, "split")["inputs"]["ingest/manifest.json"]["path"] == "../ingest/manifest.json"


def test_rerun_is_a_noop_and_force_reruns(videolt_dir, tmp_path):
    work = tmp_path / "run"
    args = ["run", "--stage", "split", *videolt_args(videolt_dir, work)]
    assert run(*args) == 0
    before = {s: (work / s / "manifest.json").stat().st_mtime_ns for s in ("ingest", "split")}
    assert run(*args) == 0
    assert {s: (work / s / "manifest.json").stat().st_mtime_ns for s in ("ingest", "split")} == before
    assert run(*args, "--force") == 0
    assert (work / "split" / "manifest.json").stat().st_mtime_ns != before["split"]
    assert (work / "ingest" / "manifest.json").stat().st_mtime_ns == before["ingest"]


def test_changed_label_list_is_detected_and_rebuilt(videolt_dir, tmp_path, capsys):
    work = tmp_path / "run"
    args = ["run", "--stage", "split", *videolt_args(videolt_dir, work)]
    assert run(*args) == 0
    test_list = videolt_dir / "test.lst"
    test_list.write_text(test_list.read_text() + "te901 1\n")
    assert run("status", "--work-dir", str(work)) == 0
    out = capsys.readouterr().out
    assert "ingest    stale" in out and "input 'file:test.lst' changed" in out
    assert run(*args, "--no-rerun") == 2
    assert "is stale" in capsys.readouterr().err
    assert run(*args) == 0
    assert manifest(work, "split")["summary"]["videos"]["test"] == 13


def test_changed_upstream_manifest_makes_downstream_stale(videolt_dir, tmp_path, capsys):
    work = tmp_path / "run"
    assert run("run", "--stage", "split", *videolt_args(videolt_dir, work)) == 0
    ingest = manifest(work, "ingest")
    ingest["summary"]["note"] = "edited"
    (work / "ingest" / "manifest.json").write_text(json.dumps(ingest))
    assert run("status", "--work-dir", str(work)) == 0
    assert "input 'ingest/manifest.json' changed since this stage ran" in capsys.readouterr().out


def test_config_change_marks_stage_stale(videolt_dir, tmp_path, capsys):
    work = tmp_path / "run"
    args = videolt_args(videolt_dir, work)
    assert run("run", "--stage", "split", *args) == 0
    assert run("status", "--config", "demo", *args, "--set", "split.head=400") == 0
    assert "config changed (head)" in capsys.readouterr().out
    assert run("run", "--stage", "split", *args, "--set", "split.head=400") == 0
    assert manifest(work, "split")["summary"]["groups"] == {"head": 2, "medium": 1, "tail": 2}


def test_work_dir_can_be_moved(videolt_dir, tmp_path, capsys):
    work = tmp_path / "run"
    assert run("run", "--stage", "split", *videolt_args(videolt_dir, work)) == 0
    shutil.move(work, tmp_path / "moved")
    assert run("status", "--work-dir", str(tmp_path / "moved")) == 0
    out = capsys.readouterr().out
    assert "ingest    done" in out and "split     done" in out


def test_stage_without_its_upstream_is_refused(videolt_dir, tmp_path, capsys):
    assert run("run", "--stage", "train", *videolt_args(videolt_dir, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "stage 'train' needs 'extract', which has not run" in err
    assert "run `python -m pipeline run --stage extract` with the same config first" in err


def fake_extract(work, ok_ids, failed):
    """An extract stage output as the extract contract defines it (manifest + videos.parquet)."""
    stage = work / "extract"
    stage.mkdir(parents=True)
    rows = [(v, "ok", 8, "shard-0.h5", "decord", None) for v in ok_ids]
    rows += [(v, "failed", 0, None, None, why) for v, why in failed.items()]
    pd.DataFrame(rows, columns=["video_id", "status", "num_frames", "shard", "decoder", "error"]).to_parquet(
        stage / "videos.parquet")
    return stage


def test_split_keeps_only_videos_with_features(videolt_dir, tmp_path):
    work = tmp_path / "run"
    args = videolt_args(videolt_dir, work)
    assert run("run", "--stage", "ingest", *args) == 0
    ids = pd.read_parquet(work / "ingest" / "videos.parquet").video_id.tolist()
    ok = [v for v in ids if v not in ("tr00000", "te003", "va001")]
    stage = fake_extract(work, ok[:-1], {"te003": "not a video"})  # last ok id left out entirely
    cfg = load_config(None, tuple(a for a in args[1::2][:2]), work_dir=str(work))
    write_manifest(stage, build_manifest("extract", stage, cfg.extract.model_dump(),
                                         {"ingest/manifest.json": work / "ingest" / "manifest.json"},
                                         ["videos.parquet"], {}))
    assert run("run", "--stage", "split", *args) == 0
    dropped = pd.read_parquet(work / "split" / "dropped.parquet").set_index("video_id")
    assert dropped.reason.to_dict() == {"tr00000": "not extracted", "va001": "not extracted",
                                        "te003": "extract failed: not a video", ok[-1]: "not extracted"}
    summary = manifest(work, "split")["summary"]
    assert summary["dropped_without_features"] == 4
    assert summary["videos"] == {"train": 1201, "val": 6, "test": 10}
    # tr00000 was labelled {0, 4}: both counts drop by one
    classes = pd.read_parquet(work / "split" / "classes.parquet")
    assert classes.train_count.tolist() == [500, 500, 101, 100, 2]


def test_stale_extract_is_never_mixed_into_split(videolt_dir, tmp_path, capsys):
    work = tmp_path / "run"
    args = videolt_args(videolt_dir, work)
    assert run("run", "--stage", "ingest", *args) == 0
    stage = fake_extract(work, [], {})
    write_manifest(stage, build_manifest("extract", stage, {"backbone": "other"},
                                         {"ingest/manifest.json": work / "ingest" / "manifest.json"},
                                         ["videos.parquet"], {}))
    assert run("run", "--stage", "split", *args) == 2
    err = capsys.readouterr().err
    assert "needs 'extract', which is stale (config changed" in err and "--stage extract" in err


def test_minikinetics_split_through_the_cli(tmp_path):
    root = tmp_path / "mk"
    root.mkdir()
    # 3 classes in file order 2,0,1,...: counts 10 / 10 / 4; imbalance 0.1 -> quotas 10, 3, 1
    labels = [2, 0, 1] * 4 + [2, 0] * 6
    (root / "train.lst").write_text("".join(f"c{i:03d} {c}\n" for i, c in enumerate(labels)))
    (root / "val.lst").write_text("".join(f"v{i} {i % 3}\n" for i in range(6)))
    work = tmp_path / "run"
    assert run("run", "--config", "minik200_r50", "--stage", "split", "--set", f"dataset.root={root}",
               "--set", "split.imbalance=0.1", "--work-dir", str(work)) == 0
    summary = manifest(work, "split")["summary"]
    assert summary["videos"] == {"train": 14, "val": 6, "test": 6} and summary["test_is_val"]
    # ranks by count, ties stable: class 0 (10), class 2 (10), class 1 (4)
    assert summary["rank_order"] == [0, 2, 1]
    table = pd.read_parquet(work / "split" / "videos.parquet")
    train = table[table.split == "train"]
    assert train[train.labels.map(lambda l: l[0] == 2)].video_id.tolist() == ["c000", "c003", "c006"]
    assert train[train.labels.map(lambda l: l[0] == 1)].video_id.tolist() == ["c002"]


def test_demo_data_command(tmp_path):
    assert run("demo-data", "--out", str(tmp_path / "d"), "--seed", "4") == 0
    assert json.loads((tmp_path / "d" / "demo.json").read_text())["seed"] == 4
    assert len(pd.read_csv(tmp_path / "d" / "labels.csv")) > 300


def test_union_errors_name_the_key_without_internal_branch_names(capsys):
    assert run("config", "--set", "train.method=[baseline,foo]") == 2
    err = capsys.readouterr().err
    assert "train.method: unknown method 'foo'; valid: baseline, focal" in err and "literal[" not in err
    assert len(err.strip().splitlines()) == 2


@pytest.mark.parametrize("argv, quiet", [(["-q", "status", "--work-dir", "w"], True),
                                         (["status", "-q", "--work-dir", "w"], True),
                                         (["status", "--work-dir", "w"], False)])
def test_quiet_works_before_and_after_the_command(argv, quiet):
    from pipeline.cli import build_parser

    assert build_parser().parse_args(argv).quiet is quiet
