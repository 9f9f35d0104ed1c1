"""One run per work dir: a second run gets one line naming the holder; a dead holder never blocks."""

import os
import subprocess
import sys

from pipeline.cli import main
from pipeline.run import LOCK, work_dir_lock


def split_args(videolt_dir, work):
    return ["run", "-q", "--stage", "split", "--set", "dataset.format=videolt", "--set", f"dataset.root={videolt_dir}",
            "--work-dir", str(work)]


def test_second_run_is_refused_while_the_first_holds_the_work_dir(videolt_dir, tmp_path, capsys):
    work = tmp_path / "work"
    with work_dir_lock(work):
        assert main(split_args(videolt_dir, work)) == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {os.getpid()} on " in err and "another --work-dir" in err
        assert len(err.strip().splitlines()) == 1
        assert not (work / "split").exists()
    assert main(split_args(videolt_dir, work)) == 0  # released


def test_a_killed_holder_leaves_no_stale_lock(videolt_dir, tmp_path):
    work = tmp_path / "work"
    code = f"from pipeline.run import work_dir_lock\nfrom pathlib import Path\nimport os\n" \
           f"with work_dir_lock(Path({str(work)!r})):\n    os._exit(9)\n"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 9  # died holding it
    assert "pid" in (work / LOCK).read_text()
    assert main(split_args(videolt_dir, work)) == 0
