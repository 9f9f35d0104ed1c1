"""Label files and configs as people save them: a UTF-8 BOM is fine, other encodings and empty lists
are one error naming the file (and line)."""

import pytest

from manifests.ingest.readers import read_generic_csv, read_videolt
from manifests.errors import DatasetError, UserError
from pipeline.cli import main
from pipeline.config import load_config


def test_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffvideo_id,path,labels,split\nv1,,0,train\nv2,,1;0,test\n".encode("utf-8"))
    dataset = read_generic_csv(path)
    assert dataset.videos.video_id.tolist() == ["v1", "v2"] and dataset.videos.labels.tolist() == [[0], [1, 0]]


def test_non_utf8_files_name_file_and_line(tmp_path, videolt_dir):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"video_id,path,labels,split\nv1,,0,train\nv\xe9,,0,train\n")
    with pytest.raises(DatasetError, match=r"labels.csv:3: not UTF-8 text \(byte 0xe9\)"):
        read_generic_csv(path)
    (videolt_dir / "test.lst").write_bytes(b"te000 0\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"test.lst:2: not UTF-8"):
        read_videolt(videolt_dir)
    config = tmp_path / "c.yaml"
    config.write_bytes(b"seed: 1\nwork_dir: caf\xe9\n")
    with pytest.raises(UserError, match=r"c.yaml:2: not UTF-8"):
        load_config(str(config))


def test_header_only_csv_is_an_error(tmp_path, capsys):
    path = tmp_path / "labels.csv"
    path.write_text("video_id,path,labels,split\n")
    assert main(["run", "-q", "--stage", "split", "--set", "dataset.format=csv", "--set", f"dataset.root={path}",
                 "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "labels.csv: lists no videos" in err and "Traceback" not in err


def test_ingest_warns_about_listed_videos_without_a_file(tmp_path, caplog):
    (tmp_path / "a.mp4").write_bytes(b"")
    path = tmp_path / "labels.csv"
    path.write_text("video_id,path,labels,split\na,a.mp4,0,train\nb,b.mp4,0,train\nc,,0,test\n")
    assert main(["run", "-q", "--stage", "ingest", "--set", "dataset.format=csv", "--set", f"dataset.root={path}",
                 "--work-dir", str(tmp_path / "w")]) == 0
    assert "2 of 3 listed videos have no video file (e.g. b, c)" in caplog.text
