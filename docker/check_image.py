"""Check a built image's root filesystem for what the build must not leave behind.

    python check_image.py ROOT --host-ca FILE

ROOT is the image's file tree (e.g. `buildah mount`), FILE the CA bundle the build was given as the
secret `pip_cert`. Checked: no pip configuration, no /run/secrets file and no site CA added for
update-ca-certificates in the image; no certificate of FILE that is in neither the image's system
bundle nor a certifi bundle (a proxy's or a private CA) anywhere in its files; /work and /opt/vltr
owned by uid 1000. Prints one line per check; exit 1 if any fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)
PIP_CONFIGS = ("etc/pip.conf", "etc/xdg/pip/pip.conf", "root/.config/pip/pip.conf", "root/.pip/pip.conf",
               "home/pipeline/.config/pip/pip.conf", "home/pipeline/.pip/pip.conf")
SYSTEM_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
ADDED_CAS = "usr/local/share/ca-certificates"  # where update-ca-certificates takes a site's own CAs from
SKIPPED = {"proc", "sys", "dev"}
CHUNK = 1 << 24


def certificate_bodies(pem: bytes) -> set:
    """The base64 bodies of the PEM certificates in ``pem``, whitespace removed."""
    return {re.sub(rb"\s", b"", body) for body in PEM.findall(pem)}


def image_files(root: Path):
    """Every regular file of the tree under ``root``, without /proc, /sys and /dev."""
    for top, dirs, files in os.walk(root):
        if Path(top) == root:
            dirs[:] = [d for d in dirs if d not in SKIPPED]
        for name in files:
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                yield path


def public_bundles(root: Path) -> set:
    """Certificate bodies of the public CA bundles the image ships: the system's and certifi's."""
    paths = [root / SYSTEM_BUNDLE]
    paths += [path for path in image_files(root) if path.name == "cacert.pem" and path.parent.name == "certifi"]
    return set().union(*(certificate_bodies(path.read_bytes()) for path in paths if path.is_file()))


def files_containing(root: Path, needles: list) -> list:
    """Files under ``root`` that contain any of ``needles`` (read in chunks, overlapping)."""
    found = []
    overlap = max(map(len, needles)) - 1
    for path in image_files(root):
        with open(path, "rb") as handle:
            tail = b""
            while chunk := handle.read(CHUNK):
                window = tail + chunk
                if any(needle in window for needle in needles):
                    found.append(path)
                    break
                tail = window[-overlap:]
    return found


def listing(directory: Path) -> list:
    """The files under ``directory`` relative to it, sorted; [] when it does not exist."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) \
        if directory.is_dir() else []


def check(root: Path, host_ca: Path) -> list:
    """(ok, message) for each check of the image tree ``root``."""
    configs = [name for name in PIP_CONFIGS if (root / name).exists()]
    secrets, added = listing(root / "run" / "secrets"), listing(root / ADDED_CAS)
    results = [(not configs, f"pip configuration files in the image: {configs or 'none'}"),
               (not secrets, f"files under /run/secrets: {secrets or 'none'}"),
               (not added, f"CA certificates added in /{ADDED_CAS}: {added or 'none'}")]
    private = certificate_bodies(host_ca.read_bytes()) - public_bundles(root)
    # the third 64-character line of each PEM body: past the common header, present in any PEM copy
    needles = [body[128:192] for body in private]
    leaks = [str(p.relative_to(root)) for p in files_containing(root, needles)] if needles else []
    results.append((not leaks, f"{len(private)} certificate(s) of {host_ca} in no public bundle of the "
                               f"image; files containing one: {leaks or 'none'}"))
    for directory in ("work", "opt/vltr"):
        uid = (root / directory).stat().st_uid
        results.append((uid == 1000, f"/{directory} owned by uid {uid}"))
    return results


def main(argv: list) -> int:
    """Run the checks and print them; 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--host-ca", type=Path, required=True)
    args = parser.parse_args(argv)
    results = check(args.root, args.host_ca)
    for ok, message in results:
        print(("ok    " if ok else "FAIL  ") + message)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
