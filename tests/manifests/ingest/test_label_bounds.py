"""Class indices are bounded at the line they appear on, before anything is sized by them."""

from __future__ import annotations

import pytest

from manifests.ingest.readers import MAX_INFERRED_CLASSES, read_generic_csv, read_minikinetics
from manifests.errors import DatasetError

H = "video_id,path,labels,split\n"


def test_without_class_names_the_inferred_count_is_bounded_at_the_line(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text(H + f"a,,0,train\nb,,{MAX_INFERRED_CLASSES - 1},test\n")
    assert read_generic_csv(csv).num_classes == MAX_INFERRED_CLASSES  # the largest index allowed
    csv.write_text(H + f"a,,0,train\nb,,1;{MAX_INFERRED_CLASSES},test\n")
    with pytest.raises(DatasetError, match=rf"l.csv:3: class index {MAX_INFERRED_CLASSES} is beyond the 10,000"):
        read_generic_csv(csv)


def test_with_class_names_any_count_is_allowed_and_indices_are_checked_against_it(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(2 * MAX_INFERRED_CLASSES)))
    csv = tmp_path / "l.csv"
    csv.write_text(H + f"a,,0,train\nb,,{2 * MAX_INFERRED_CLASSES - 1},test\n")
    assert read_generic_csv(csv, names).num_classes == 2 * MAX_INFERRED_CLASSES
    csv.write_text(H + f"a,,0,train\nb,,{2 * MAX_INFERRED_CLASSES},test\n")
    with pytest.raises(DatasetError, match=r"l.csv:3: class index 20000 out of range 0..19999"):
        read_generic_csv(csv, names)


def test_minikinetics_without_names_is_bounded_too(tmp_path):
    (tmp_path / "train.lst").write_text("a 0\nb 99999999999\n")
    (tmp_path / "val.lst").write_text("c 0\n")
    with pytest.raises(DatasetError, match=r"train.lst:2: class index 99999999999 is beyond"):
        read_minikinetics(tmp_path)


def test_a_line_with_many_labels_and_a_long_class_list_read_in_linear_time(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(100_000)))  # duplicates were found in O(n^2)
    csv = tmp_path / "l.csv"
    many = ";".join(map(str, range(20_000)))  # duplicate labels too (was O(n^2) per line)
    csv.write_text(H + f"a,,{many},train\nb,,0,test\n")
    dataset = read_generic_csv(csv, names)
    assert len(dataset.videos.labels[0]) == 20_000
    csv.write_text(H + f"a,,{many};7,train\n")
    with pytest.raises(DatasetError, match=r"l.csv:2: class index 7 listed twice"):
        read_generic_csv(csv, names)


def test_a_field_over_the_csv_limit_is_an_error_at_its_line(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text(H + "a,,0,train\nb,," + "1;" * 70_000 + "1,test\n")
    with pytest.raises(DatasetError, match=r"l.csv:3: not readable as CSV: field larger than field limit"):
        read_generic_csv(csv)
