"""No Docker engine runs here: check the Dockerfile and compose file against the README instead."""

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list:
    """The shell commands in the README's fenced bash blocks under "Two commands"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.strip()]


def dockerfile_instructions() -> list:
    """(INSTRUCTION, argument) pairs with line continuations joined."""
    joined = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_readme_has_exactly_two_commands_and_ci_runs_them():
    install, test = readme_commands()
    assert install == "pip install -e '.[dev]' && python -m pipeline run"
    assert test == "python -m pytest"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert install.split(" && ")[0] in ci and test in ci


def test_dockerfile_installs_as_the_readme_and_enters_the_cli():
    instructions = dockerfile_instructions()
    kinds = [k for k, _ in instructions]
    assert instructions[0][0] == "FROM" and re.match(r"nvidia/cuda:\S+-runtime-", instructions[0][1])
    install = readme_commands()[0].split(" && ")[0]
    runs = [arg for kind, arg in instructions if kind == "RUN"]
    assert any(install in arg for arg in runs)
    assert any("python -m pipeline run" in arg for arg in runs)  # the demo is the image's smoke test
    users = [arg for kind, arg in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    entry = dict(instructions)["ENTRYPOINT"]
    assert yaml.safe_load(entry) == ["python", "-m", "pipeline"]
    assert yaml.safe_load(dict(instructions)["VOLUME"]) == ["/work"]


def test_compose_defines_a_ray_cluster_with_gpu_workers():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert services["ray-head"]["entrypoint"][:3] == ["ray", "start", "--head"]
    worker = services["ray-worker"]
    assert "--address=ray-head:6379" in worker["entrypoint"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"]
    extract = services["extract"]["command"]
    assert "extract.runner=ray" in extract and "extract.ray_address=ray-head:6379" in extract


def test_entry_command_runs_outside_docker():
    import subprocess
    import sys

    entry = yaml.safe_load(dict(dockerfile_instructions())["ENTRYPOINT"])
    assert entry[0] == "python"
    result = subprocess.run([sys.executable, *entry[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: python -m pipeline" in result.stdout
    assert shlex.split(dict(dockerfile_instructions())["CMD"].strip("[]").replace('"', "")) == ["run"]
