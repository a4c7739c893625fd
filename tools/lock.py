"""requirements.lock: the pins every install uses (``pip install -c requirements.lock ...``).

``scripts/lock`` writes it with uv from pyproject.toml, then passes the result through
:func:`strip`; ``python -m tools.lock`` (and tests/unit/test_lock.py) checks offline that
it still matches pyproject.toml: every requirement, extras included, has a pin that
satisfies it, and nothing is pinned for pyproject.toml that it no longer asks for.

torch is not pinned: it stays a range any GPU user can meet with the build for their
CUDA (or the CPU build), installed before the rest. Nor are the CUDA, NVIDIA and triton
wheels a CUDA build brings, nor sympy and mpmath (torch 2.5 and 2.6 pin sympy exactly).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
UNLOCKED = ("torch", "triton", "nvidia-*", "cuda-*", "sympy", "mpmath")
PROJECT_SOURCE = "(pyproject.toml)"  # how uv names the project in "# via" lines
_VIA = re.compile(r"^\s+#\s+(?:via\s+)?(?P<who>\S.*?)\s*$")


def unlocked(name: str) -> bool:
    return any(fnmatch(canonicalize_name(name), pattern) for pattern in UNLOCKED)


@dataclass
class Pin:
    requirement: Requirement
    line: int
    via: list[str] = field(default_factory=list)

    @property
    def version(self) -> Version:
        return Version(next(iter(self.requirement.specifier)).version)


def parse_lock(text: str) -> tuple[dict[str, list[Pin]], list[str]]:
    """The lock's pins by canonical name (a universal lock may pin one package twice,
    under different markers), and the lines that are not exact pins."""
    pins: dict[str, list[Pin]] = {}
    problems: list[str] = []
    last: Pin | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if last is not None and (via := _VIA.match(line)) and via["who"] != "via":
            last.via.append(via["who"])
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as e:
            problems.append(f"requirements.lock:{number}: not a requirement ({e})")
            continue
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"requirements.lock:{number}: {line.strip()!r} is not one exact pin (name==version)")
            continue
        last = Pin(requirement, number)
        pins.setdefault(canonicalize_name(requirement.name), []).append(last)
    return pins, problems


def project_requirements(pyproject: dict) -> list[Requirement]:
    """Every requirement pyproject.toml declares: dependencies and every extra's."""
    project = pyproject["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    own = canonicalize_name(project["name"])
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != own]


def problems(pyproject_text: str, lock_text: str) -> list[str]:
    """What makes the lock disagree with pyproject.toml; empty when it matches."""
    pins, found = parse_lock(lock_text)
    wanted = project_requirements(tomllib.loads(pyproject_text))
    for name, entries in sorted(pins.items()):
        if unlocked(name):
            found.append(f"requirements.lock:{entries[0].line}: {name} must not be pinned (torch's own stack)")
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if unlocked(name):
            continue
        entries = pins.get(name, [])
        if not entries:
            found.append(f"{requirement} (pyproject.toml) has no pin in requirements.lock")
        for pin in entries:
            if not requirement.specifier.contains(pin.version, prereleases=True):
                found.append(f"{requirement} (pyproject.toml) is not met by {pin.requirement} (line {pin.line})")
    direct = {canonicalize_name(r.name) for r in wanted}
    for name, entries in sorted(pins.items()):
        if name not in direct and any(who.endswith(PROJECT_SOURCE) for pin in entries for who in pin.via):
            found.append(f"{name} is pinned for pyproject.toml, which no longer requires it")
    return found


def strip(text: str) -> str:
    """uv's output without the pins (and their "# via" lines) of :data:`UNLOCKED` packages."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = unlocked(Requirement(line).name)
        elif not line.startswith(" "):
            skipping = False
        if not skipping:
            kept.append(line)
    note = f"# Not pinned, so any torch>=2.4 build installs with these pins: {', '.join(UNLOCKED)}."
    if note not in kept:
        at = 0  # after uv's header
        while at < len(kept) and kept[at].startswith("#"):
            at += 1
        kept.insert(at, note)
    return "\n".join(kept) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check requirements.lock against pyproject.toml, offline.")
    parser.add_argument("--strip", metavar="FILE", help="Rewrite FILE (uv's output) without the unlocked pins.")
    args = parser.parse_args(argv)
    if args.strip:
        path = Path(args.strip)
        path.write_text(strip(path.read_text()))
        return 0
    found = problems((ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text())
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print("requirements.lock does not match pyproject.toml: refresh it with scripts/lock.", file=sys.stderr)
        return 1
    print("requirements.lock matches pyproject.toml.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
