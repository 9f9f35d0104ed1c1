"""Ray token authentication in docker/entrypoint.sh, run outside Docker with stand-in `ray` and
`python` commands that print what they were given. The real cluster (a head and a worker started by
this script, a driver joining it) is tests/extract/test_extract_ray_cluster.py (-m faults)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "docker" / "entrypoint.sh"
SHOW = 'echo "$@"\necho "mode=${RAY_AUTH_MODE-unset} path=${RAY_AUTH_TOKEN_PATH-unset} token=${RAY_AUTH_TOKEN-unset}"\n'


def run_entry(tmp_path: Path, *args: str, **env) -> subprocess.CompletedProcess:
    """docker/entrypoint.sh with a stand-in `ray` (and a `python` that runs the real one except for
    ``-m pipeline``); RAY_/VLTR_ variables come only from ``env``; VLTR_CPUS=1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ray").write_text("#!/bin/sh\n" + SHOW)
    (bin_dir / "python").write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m pipeline" ]; then\n{SHOW}exit 0\nfi\n'
                                    f'exec "{sys.executable}" "$@"\n')
    for name in ("ray", "python"):
        (bin_dir / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VLTR_", "RAY_"))}
    base.update(PATH=f"{bin_dir}{os.pathsep}{base.get('PATH', '')}", VLTR_CPUS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + base.get("PYTHONPATH", ""))
    return subprocess.run(["sh", str(ENTRY), *args], capture_output=True, text=True, env={**base, **env},
                          cwd=tmp_path, timeout=120)


def test_the_head_writes_a_private_token_once_and_turns_token_mode_on(tmp_path):
    token = tmp_path / "work" / ".ray" / "auth_token"
    first = run_entry(tmp_path, "ray-head", RAY_AUTH_TOKEN_PATH=str(token))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == f"mode=token path={token} token=unset"
    written = token.read_text().strip()
    assert len(written) == 64 and int(written, 16) >= 0 and token.stat().st_mode & 0o777 == 0o600
    assert f"wrote a new Ray authentication token to {token}" in first.stderr
    again = run_entry(tmp_path, "ray-head", RAY_AUTH_TOKEN_PATH=str(token))
    assert again.returncode == 0 and token.read_text().strip() == written  # a restarted head keeps it
    assert not list(token.parent.glob("*.tmp.*"))


def test_a_worker_uses_the_token_file_the_head_wrote(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("abc\n")
    result = run_entry(tmp_path, "ray-worker", RAY_HEAD_ADDRESS="10.0.0.5:6379", RAY_AUTH_TOKEN_PATH=str(token))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["start --address=10.0.0.5:6379 --num-cpus=1 --block",
                                          f"mode=token path={token} token=unset"]


def test_a_worker_without_a_token_stops_with_one_line(tmp_path):
    token = tmp_path / "missing" / "auth_token"
    result = run_entry(tmp_path, "ray-worker", RAY_HEAD_ADDRESS="10.0.0.5:6379", RAY_AUTH_TOKEN_PATH=str(token),
                       RAY_AUTH_WAIT_S="1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: no Ray authentication token at RAY_AUTH_TOKEN_PATH={token} after 1 s")
    assert len(result.stderr.splitlines()) == 1


def test_a_token_in_the_environment_needs_no_file(tmp_path):
    result = run_entry(tmp_path, "ray-worker", RAY_HEAD_ADDRESS="10.0.0.5:6379", RAY_AUTH_TOKEN="s3cret")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "mode=token path=unset token=s3cret"


def test_auth_disabled_needs_no_token(tmp_path):
    result = run_entry(tmp_path, "ray-worker", RAY_HEAD_ADDRESS="10.0.0.5:6379", RAY_AUTH_MODE="disabled",
                       RAY_AUTH_TOKEN_PATH=str(tmp_path / "none"), RAY_AUTH_WAIT_S="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"mode=disabled path={tmp_path / 'none'} token=unset"


def test_a_driver_uses_the_cluster_token_only_when_there_is_one(tmp_path):
    token = tmp_path / "auth_token"
    without = run_entry(tmp_path, "run", "--stage", "extract", RAY_AUTH_TOKEN_PATH=str(token), RAY_AUTH_TOKEN="")
    assert without.returncode == 0, without.stderr  # a local Ray (if any) makes its own token
    assert without.stdout.splitlines() == ["-m pipeline run --stage extract", "mode=unset path=unset token=unset"]
    token.write_text("abc\n")
    given = run_entry(tmp_path, "run", "--stage", "extract", RAY_AUTH_TOKEN_PATH=str(token), RAY_AUTH_TOKEN="")
    assert given.stdout.splitlines()[-1] == f"mode=token path={token} token=unset"


def test_compose_passes_the_token_settings_to_every_service():
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "${RAY_AUTH_MODE:-token}", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "${RAY_AUTH_TOKEN_PATH:-/work/.ray/auth_token}", name
        assert env["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:-}", name


def test_compose_train_runs_job_dispatches_on_the_cluster_through_the_entry_script():
    service = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["train-runs"]
    assert "entrypoint" not in service  # the image's entry script: the driver gets the cluster's token
    command = service["command"]
    assert command[:2] == ["run", "--config"] and "train.parallel=ray" in command
    assert "train.ray_address=${RAY_HEAD_ADDRESS:-127.0.0.1:6379}" in command
