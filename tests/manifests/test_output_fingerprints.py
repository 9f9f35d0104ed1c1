"""How a manifest remembers its outputs, and how a rebuild learns which of them changed on disk."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from manifests import manifest as mf

BLOCK = mf.SAMPLE_BLOCK_BYTES


@pytest.fixture
def large_file(tmp_path, monkeypatch):
    """A 'large' output: the hash-everything limit lowered so a 4 MiB file counts as large."""
    monkeypatch.setattr(mf, "HASH_OUTPUTS_UP_TO_BYTES", 1 << 20)
    path = tmp_path / "shard-00000.h5"
    path.write_bytes(os.urandom(4 << 20))
    return path


def flip(path, offset, keep_mtime):
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_small_outputs_get_a_full_sha256(tmp_path):
    path = tmp_path / "videos.parquet"
    path.write_bytes(b"abc" * 1000)
    assert mf.output_record(path) == {"size": 3000, "sha256": hashlib.sha256(b"abc" * 1000).hexdigest()}


def test_large_outputs_get_size_mtime_and_a_sampled_hash(large_file):
    record = mf.output_record(large_file)
    assert set(record) == {"size", "mtime_ns", "sampled_sha256"}
    data = large_file.read_bytes()
    last = len(data) - BLOCK
    starts = sorted({round(i * last / (mf.SAMPLE_BLOCKS - 1)) for i in range(mf.SAMPLE_BLOCKS)})
    assert starts[0] == 0 and starts[-1] == last and len(starts) == mf.SAMPLE_BLOCKS
    expected = hashlib.sha256(b"".join(data[s:s + BLOCK] for s in starts)).hexdigest()
    assert record == {"size": len(data), "mtime_ns": large_file.stat().st_mtime_ns, "sampled_sha256": expected}
    assert mf.output_change(large_file, record) is None


def test_a_file_smaller_than_one_block_is_hashed_whole(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"xyz")
    assert mf.sampled_sha256(path) == hashlib.sha256(b"xyz").hexdigest()


def test_a_flipped_byte_in_a_sampled_block_is_caught_even_with_the_mtime_restored(large_file):
    record = mf.output_record(large_file)
    flip(large_file, 0 + 17, keep_mtime=True)  # inside the first sampled block
    assert mf.output_change(large_file, record) == "output changed on disk"


def test_a_flipped_byte_between_samples_is_caught_by_the_modification_time(large_file):
    record = mf.output_record(large_file)
    size = large_file.stat().st_size
    gap = (size - BLOCK) // (mf.SAMPLE_BLOCKS - 1)
    offset = BLOCK + (gap - BLOCK) // 2  # between the first and second sampled blocks
    flip(large_file, offset, keep_mtime=False)
    os.utime(large_file, ns=(record["mtime_ns"] + 10**9, record["mtime_ns"] + 10**9))
    assert mf.output_change(large_file, record) == "output modified on disk since the stage finished"


def test_size_alone_never_certifies(large_file):
    record = mf.output_record(large_file)
    assert mf.output_change(large_file, {"size": record["size"], "sampled_sha256": "0" * 64}) is not None
    large_file.write_bytes(large_file.read_bytes()[:-1])
    assert mf.output_change(large_file, record) == "output changed on disk"


def test_missing_and_unreadable_records(tmp_path):
    assert mf.output_change(tmp_path / "gone", {"size": 1}) == "output missing"
    assert mf.output_change(tmp_path / "gone", ["not", "a", "dict"]) == "output record unreadable"


def test_a_rebuild_keeps_the_previous_manifest_and_lists_changed_outputs(tmp_path):
    stage = tmp_path / "extract"
    stage.mkdir()
    for name in ("a.h5", "b.h5", "c.h5"):
        (stage / name).write_bytes(name.encode() * 100)
    manifest = mf.build_manifest("extract", stage, {"k": 1}, {}, ["a.h5", "b.h5", "c.h5"], {})
    mf.write_manifest(stage, manifest)
    (stage / "b.h5").write_bytes(b"B" * 400)  # same size, other bytes
    (stage / "c.h5").unlink()  # gone: nothing to verify

    mf.retire_manifest(stage)
    assert not mf.manifest_path(stage).exists()
    assert mf.changed_outputs(stage) == ["b.h5"]
    mf.retire_manifest(stage)  # a second rebuild after a crash keeps the same record
    assert mf.changed_outputs(stage) == ["b.h5"]
    assert json.loads((stage / mf.PREVIOUS_MANIFEST_NAME).read_text())["outputs"]["b.h5"]["size"] == 400


def test_no_or_damaged_previous_manifest_lists_nothing(tmp_path):
    assert mf.changed_outputs(tmp_path) == []
    (tmp_path / mf.PREVIOUS_MANIFEST_NAME).write_text("{not json")
    assert mf.changed_outputs(tmp_path) == []
