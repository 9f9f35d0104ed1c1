"""docs/extending.md works: its code blocks, applied as they say, give a backbone, a method, a dataset
format and a metric that config validation accepts and the stages run on tiny inputs. Also: the
registries' names are what the docs and --help list."""

import importlib
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
HEADER = re.compile(r"# (?P<path>[\w/]+\.py): (?:(?P<new>new file)|(?P<add>add)|one entry in (?P<table>\w+))$")


def doc_blocks() -> list:
    """``(header match, code)`` of every python block of docs/extending.md, in order."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    out = []
    for block in blocks:
        first, _, code = block.partition("\n")
        match = HEADER.fullmatch(first.strip())
        assert match, f"a docs/extending.md block must start with '# <file>.py: new file|add|one entry in T': {first!r}"
        out.append((match, code))
    return out


def apply_block(match, code: str, monkeypatch) -> None:
    """A new file becomes a module in sys.modules; an addition is run in (a copy of) its module's namespace
    and its new names set on the module; an entry is evaluated there and put into the table."""
    path = match["path"]
    name = path[:-3].replace("/", ".")
    if match["new"]:
        module = types.ModuleType(name)
        module.__file__ = str(ROOT / path)
        monkeypatch.setitem(sys.modules, name, module)
        exec(compile(code, path, "exec"), module.__dict__)
        return
    module = importlib.import_module(name)
    namespace = dict(vars(module))
    if match["add"]:
        exec(compile(code, path, "exec"), namespace)
        for key, value in namespace.items():
            if key not in vars(module) and not key.startswith("__"):
                monkeypatch.setattr(module, key, value, raising=False)
        return
    entry = eval(code.strip().rstrip(","), namespace)
    monkeypatch.setitem(getattr(module, match["table"]), entry.name, entry)


@pytest.fixture
def extended(monkeypatch):
    """Every block of docs/extending.md applied (undone after the test)."""
    from train import losses

    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))  # register_loss adds to a copy
    for match, code in doc_blocks():
        apply_block(match, code, monkeypatch)


def test_the_doc_covers_every_registry():
    tables = {m["table"] for m, _ in doc_blocks() if m["table"]}
    assert tables == {"BACKBONES", "METHODS", "FORMATS", "METRICS"}


def test_backbone_example(extended, tmp_path):
    import torch
    import torchvision

    from extract.registry import create
    from pipeline.config import load_config

    cfg = load_config(None, ("dataset.format=videolt", "extract.backbone=mobilenet_v3_small"))
    assert (cfg.extract.backbone, cfg.extract.resize, cfg.extract.crop) == ("mobilenet_v3_small", 256, 224)
    reference = torchvision.models.mobilenet_v3_small(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    model = create("mobilenet_v3_small", weights=str(tmp_path / "weights.pth"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model(x)
        expected = reference.avgpool(reference.features(x)).flatten(1)
    assert features.shape == (2, 576) and torch.allclose(features, expected, atol=1e-5)
    assert model.weights_id == "file:weights.pth" and len(model.weights_sha256) == 64
    assert create("mobilenet_v3_small", pretrained=False)(x).shape == (2, 576)


def test_method_and_metric_examples(extended, tmp_path, feature_work_dir, capsys):
    from evaluate import metrics
    from pipeline.cli import main
    from pipeline.config import load_config

    assert load_config(None, ("train.method=[baseline,logit_adjusted+aggregators]",)).train.methods()[1] \
        == "logit_adjusted+aggregators"
    args = feature_work_dir(tmp_path / "work")
    fast = ["--set", "train.method=logit_adjusted", "--set", "train.loss.logit_adjusted.tau=0.5",
            "--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "train.hidden=32",
            "--set", "train.train_frames=6", "--set", "train.eval_frames=10", "--set", "train.lr=0.003",
            "--set", "evaluate.test_profiles=[as_is,uniform]", "-q", "--no-progress"]
    for stage in ("train", "evaluate"):
        assert main(["run", "--stage", stage, *args, *fast]) == 0
    run = tmp_path / "work"
    train = json.loads((run / "train" / "logit_adjusted" / "manifest.json").read_text())
    assert train["config"]["loss"] == {"logit_adjusted": {"tau": 0.5}}
    document = json.loads((run / "evaluate" / "logit_adjusted" / "metrics.json").read_text())
    assert document["run"]["method"] == "logit_adjusted"
    predictions = np.load(run / "train" / "logit_adjusted" / "predictions.npz")
    scores, targets = predictions["scores"], split_targets(run, predictions["video_ids"])
    assert document["metrics"]["acc10"] == pytest.approx(metrics.top_k_hits(scores, targets, 10).mean())
    assert set(document["profiles"]["uniform"]) >= {"acc10", "mAP"}
    assert "Acc@10" in (run / "evaluate" / "logit_adjusted" / "results.md").read_text()
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "Acc@10" in (tmp_path / "report" / "report.md").read_text()


def test_the_metric_breaks_ties_toward_the_lower_class():
    from evaluate import metrics
    from evaluate.registry import METRICS

    assert "acc10" not in METRICS  # the fixture's entry is undone
    namespace = {}
    match, code = next((m, c) for m, c in doc_blocks() if m["path"] == "evaluate/registry.py" and m["add"])
    exec(code, namespace)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(40, 25)).astype(np.float32)  # many ties
    targets = (rng.random((40, 25)) < 0.1).astype(np.uint8)
    assert namespace["acc10"](scores, targets, None, 0, 0) == pytest.approx(metrics.top_k_hits(scores, targets, 10).mean())


def test_format_example(extended, tmp_path):
    from pipeline.cli import main
    from pipeline.config import group_thresholds, load_config

    path = tmp_path / "videos.jsonl"
    rows = [{"id": f"v{i:03d}", "labels": [["cat", "dog", "eel"][i % 3]] + (["ant"] if i % 7 == 0 else []),
             "split": ["train", "train", "val", "test"][i % 4]} for i in range(60)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cfg = load_config(None, ("dataset.format=jsonl", f"dataset.root={path}"))
    assert group_thresholds(cfg) == (100, 20)
    work = tmp_path / "work"
    args = ["--set", "dataset.format=jsonl", "--set", f"dataset.root={path}", "--work-dir", str(work)]
    assert main(["run", "-q", "--stage", "split", *args]) == 0
    summary = json.loads((work / "split" / "manifest.json").read_text())["summary"]
    assert summary["thresholds"] == {"head": 100, "tail": 20} and summary["num_classes"] == 4
    assert summary["videos"] == {"train": 30, "val": 15, "test": 15}
    path.write_text(json.dumps({"id": "x", "labels": ["cat"], "split": "dev"}) + "\n")
    assert main(["run", "-q", "--stage", "ingest", *args]) == 2


def apply_to_file(match, code: str, root: Path) -> None:
    """What a developer does with a block: write the new file; put an addition's imports at the top and
    its definitions above the file's table (or at its end); put an entry as the table's last line."""
    path = root / match["path"]
    text = path.read_text() if path.exists() else ""
    if match["new"]:
        text = code
    elif match["add"]:
        imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
        body = "\n".join(line for line in code.splitlines() if line not in imports).strip("\n") + "\n\n\n"
        future = "from __future__ import annotations\n"
        text = text.replace(future, future + "\n" + "\n".join(imports) + "\n", 1)
        table = re.search(r"^[A-Z]+: dict\[", text, flags=re.M)
        text = text[:table.start()] + body + text[table.start():] if table else text + "\n\n" + body
    else:
        end = re.search(rf"^{match['table']}\b.*?\n(\)\}})", text, flags=re.S | re.M).start(1)
        text = text[:end] + code.strip("\n") + "\n" + text[end:]
    path.write_text(text)


def test_the_doc_applied_to_the_files_works(tmp_path):
    """The blocks written into a copy of the code as files: the new names are valid, without torch."""
    import shutil
    import subprocess

    for package in ("pipeline", "train", "extract", "evaluate", "manifests"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    for match, code in doc_blocks():
        apply_to_file(match, code, tmp_path)
    check = ("import sys; from pipeline.config import load_config, group_thresholds; "
             "cfg = load_config(None, ('dataset.format=jsonl', 'dataset.root=x', 'train.method=logit_adjusted', "
             "'extract.backbone=mobilenet_v3_small')); from evaluate.registry import METRICS; "
             "assert group_thresholds(cfg) == (100, 20) and 'acc10' in METRICS and 'torch' not in sys.modules; "
             "from train.registry import recipe_class; print(recipe_class('logit_adjusted').loss_name)")
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "logit_adjusted"


def test_names_in_help_and_docs_come_from_the_registries(capsys):
    from pipeline.cli import main
    from pipeline.formats import FORMATS
    from train.registry import METHODS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(METHODS) in text and ", ".join(FORMATS) in text
    readme_methods = (ROOT / "README.md").read_text().split("## Methods")[1].split("\n## ")[0]
    formats_table = (ROOT / "docs" / "formats.md").read_text().split("## Work directory")[0]
    assert all(f"`{name}`" in readme_methods for name in METHODS)
    assert all(f"`{name}`" in formats_table for name in FORMATS)


def test_unknown_names_list_the_registered_ones(extended, capsys):
    from pipeline.cli import main

    assert main(["config", "--set", "train.method=nope"]) == 2
    assert "logit_adjusted" in capsys.readouterr().err
    assert main(["config", "--set", "dataset.format=nope"]) == 2
    assert "'csv' or 'jsonl'" in capsys.readouterr().err


def split_targets(run: Path, video_ids) -> np.ndarray:
    """(N, C) 0/1 targets of the split's test videos in the order of ``video_ids``."""
    from manifests import tables
    from manifests.datasets import multi_hot

    videos = tables.read_split_videos(run / "split").set_index("video_id")
    classes = tables.read_classes(run / "split")
    return multi_hot(list(videos.loc[list(video_ids)].labels), len(classes))
