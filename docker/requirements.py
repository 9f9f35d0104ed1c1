"""Print the requirements declared in pyproject.toml, one per line, for the image's dependency layer.

    python requirements.py PYPROJECT            # dependencies and the dev extra
    python requirements.py PYPROJECT torch ...  # only the named packages (their pinned lines)

The image installs these before it copies the source, so a change to the code does not re-install
torch; the source is then installed with the README's own command, which finds them satisfied.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: tuple = ("dev",)) -> list:
    """The ``[project]`` dependencies followed by those of ``extras``, as written in the file."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    return lines


def package_name(requirement: str) -> str:
    """The normalised distribution name at the start of a requirement line."""
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main(argv: list) -> int:
    """Print the requirements (all, or those of the packages named after the file)."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    lines = requirements(Path(argv[0]))
    wanted = {name.lower() for name in argv[1:]}
    if wanted:
        lines = [line for line in lines if package_name(line) in wanted]
        missing = wanted - {package_name(line) for line in lines}
        if missing:
            print(f"not in {argv[0]}: {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
