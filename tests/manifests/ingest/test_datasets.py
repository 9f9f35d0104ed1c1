"""Dataset readers: canonical tables from each format, and file:line errors for bad input."""

import numpy as np
import pytest

from manifests import datasets
from manifests.errors import DatasetError, UserError
from manifests.ingest import readers


def test_videolt_reader_keeps_file_indices_and_counts(videolt_dir):
    ds = readers.read_videolt(videolt_dir)
    assert ds.class_names == ["river", "beach", "zebra", "soccerJuggling", "apple"]
    assert ds.videos.split.value_counts().to_dict() == {"train": 1202, "test": 12, "val": 7}
    train = ds.videos[ds.videos.split == "train"]
    assert datasets.label_counts(train.labels, 5).tolist() == [501, 500, 101, 100, 3]
    assert ds.declared_train_counts.tolist() == [501.0, 500.0, 101.0, 100.0, 3.0]
    assert ds.warnings == []
    first = ds.videos.iloc[0]
    assert (first.video_id, first.labels, first.split) == ("tr00000", [0, 4], "train")
    assert ds.videos.iloc[-1].labels == [0, 2]  # te900, last line of test.lst
    assert ds.videos.path.isna().all()


def test_videolt_count_mismatch_is_a_warning(videolt_dir):
    text = (videolt_dir / "count-labels-train.lst").read_text().replace("zebra 2 101.0", "zebra 2 99.0")
    (videolt_dir / "count-labels-train.lst").write_text(text)
    assert "declared counts differ" in readers.read_videolt(videolt_dir).warnings[0]


def test_videolt_video_files_are_matched_by_id(videolt_dir, tmp_path):
    videos = tmp_path / "videos" / "sub"
    videos.mkdir(parents=True)
    (videos / "tr00001.mp4").write_bytes(b"x")
    (videos / "notes.txt").write_text("not a video")
    ds = readers.read_videolt(videolt_dir, tmp_path / "videos")
    assert ds.videos.set_index("video_id").path["tr00001"] == str((videos / "tr00001.mp4").resolve())
    assert ds.videos.path.notna().sum() == 1


@pytest.mark.parametrize("line, message", [
    ("tr99999", "expected '<video_id> <labels>' (2 fields), got 1"),
    ("tr99999 1,x", "label 'x' is not a class index"),
    ("tr99999 7", "class index 7 out of range 0..4"),
    ("tr99999 -1", "class index -1 out of range 0..4"),
    ("tr99999 2,2", "class index 2 listed twice"),
    ("../etc 1", "unsafe video id '../etc'"),
    ("a/b 1", "unsafe video id 'a/b'"),
    ("tr00003 1", "video id 'tr00003' listed twice; first at"),
    ("va001 1", "video id 'va001' in two splits (train, val)"),
])
def test_malformed_train_line_names_file_and_line(videolt_dir, line, message):
    path = videolt_dir / "train.lst"
    lines = path.read_text().splitlines()
    lines.insert(9, line)  # becomes line 10
    path.write_text("\n".join(lines) + "\n")
    if "two splits" in message:  # the duplicate is reported where it is seen second: validate.lst line 2
        with pytest.raises(DatasetError, match="two splits") as err:
            readers.read_videolt(videolt_dir)
        assert str(err.value).startswith(f"{videolt_dir / 'validate.lst'}:2:")
        return
    with pytest.raises(DatasetError) as err:
        readers.read_videolt(videolt_dir)
    assert str(err.value).startswith(f"{path}:10: ")
    assert message in str(err.value)


def test_bad_count_file_and_missing_list(videolt_dir):
    path = videolt_dir / "count-labels-train.lst"
    path.write_text(path.read_text() + "extra 9 1.0\n")
    with pytest.raises(DatasetError, match="class indices must be 0..5"):
        readers.read_videolt(videolt_dir)
    path.write_text("river 0\n")
    with pytest.raises(DatasetError, match=r":1: expected '<ClassName> <index> <count>'"):
        readers.read_videolt(videolt_dir)
    (videolt_dir / "test.lst").unlink()
    path.write_text("\n".join(f"c{i} {i} 1.0" for i in range(5)) + "\n")
    with pytest.raises(UserError, match="label file not found: .*test.lst"):
        readers.read_videolt(videolt_dir)


def test_trailing_comma_is_tolerated(videolt_dir):
    path = videolt_dir / "test.lst"
    path.write_text(path.read_text().replace("te900 0,2", "te900 0,2,"))
    assert readers.read_videolt(videolt_dir).videos.iloc[-1].labels == [0, 2]


def test_minikinetics_reader_names_from_csv(tmp_path):
    (tmp_path / "train.lst").write_text("a_000001_000011 1\nb_000002_000012 0\n")
    (tmp_path / "val.lst").write_text("c_000003_000013 1\n")
    (tmp_path / "kinetics_train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\nzumba,a,1,11,train,0\nabseiling,b,2,12,train,0\n")
    ds = readers.read_minikinetics(tmp_path)
    assert ds.class_names == ["abseiling", "zumba"]
    assert ds.videos.to_dict("list") == {"video_id": ["a_000001_000011", "b_000002_000012", "c_000003_000013"],
                                         "path": [None] * 3, "labels": [[1], [0], [1]],
                                         "split": ["train", "train", "val"]}
    (tmp_path / "val.lst").write_text("c_000003_000013 2\n")
    with pytest.raises(DatasetError, match=r"val.lst:1: class index 2 out of range 0..1"):
        readers.read_minikinetics(tmp_path)


def test_minikinetics_without_csv_numbers_classes(tmp_path):
    (tmp_path / "train.lst").write_text("a 0\nb 2\n")
    (tmp_path / "val.lst").write_text("c 1\n")
    assert readers.read_minikinetics(tmp_path).class_names == ["class_000", "class_001", "class_002"]


def test_kinetics_csv_ids_splits_and_unknown_class(tmp_path):
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "b,xyz,5,15,train\na,-q_1,0,10,validate\nb,uvw,3.0,13.0,test\n")
    ds = readers.read_kinetics_csv(csv)
    assert ds.class_names == ["a", "b"]
    assert ds.videos.video_id.tolist() == ["xyz_000005_000015", "-q_1_000000_000010", "uvw_000003_000013"]
    assert ds.videos.split.tolist() == ["train", "val", "test"]
    names = tmp_path / "names.txt"
    names.write_text("b\nc\n")
    with pytest.raises(DatasetError, match=r"k.csv:3: unknown class name 'a'"):
        readers.read_kinetics_csv(csv, names)


def test_generic_csv_paths_labels_and_errors(tmp_path):
    csv = tmp_path / "data" / "labels.csv"
    csv.parent.mkdir()
    csv.write_text("video_id,path,labels,split\nv1,clips/v1.mp4,0;2,train\nv2,,1,test\n")
    ds = readers.read_generic_csv(csv)
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.videos.path.tolist() == [str((csv.parent / "clips/v1.mp4").resolve()), None]
    assert ds.videos.labels.tolist() == [[0, 2], [1]]
    names = tmp_path / "names.txt"
    names.write_text("x\ny\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: class index 2 out of range 0..1"):
        readers.read_generic_csv(csv, names)
    csv.write_text("video_id,path,labels,split\nv1,a.mp4,0,holdout\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: unknown split 'holdout'"):
        readers.read_generic_csv(csv)
    csv.write_text("video_id,labels,split\nv1,0,train\n")
    with pytest.raises(DatasetError, match=r"labels.csv:1: missing column\(s\) \['path'\]"):
        readers.read_generic_csv(csv)


def test_label_counts_count_each_label_of_multilabel_videos():
    assert datasets.label_counts([[0, 2], [2], [1, 0, 2]], 4).tolist() == [2, 1, 3, 0]
    assert np.issubdtype(datasets.label_counts([], 2).dtype, np.integer)
