"""What the container image of one service installs, read from the pyproject files (the single
Dockerfile calls it; no list is kept by hand):

    python tools/image_requirements.py registry            # third-party requirements, one per line
    python tools/image_requirements.py registry --local    # the repo's distributions to install (paths)
    python tools/image_requirements.py trainer --needs-torch && echo yes

A service depends on `flywheel-common` (libs/) and maybe `flywheel-predictive` (libs/predictive), with
extras (e.g. `flywheel-predictive[scoring]` brings torch); those are installed from the repo, their own
third-party dependencies (and the requested extras') from the package index.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBS = {"flywheel-common": ROOT / "libs", "flywheel-predictive": ROOT / "libs" / "predictive"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?")


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _split(requirement: str) -> tuple[str, list[str]]:
    match = REQUIREMENT.match(requirement)
    if match is None:
        raise ValueError(f"cannot read the requirement {requirement!r}")
    extras = [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
    return match.group(1).lower(), extras


def resolve(service: str) -> tuple[list[Path], list[str]]:
    """(the repo's distributions the service needs, in install order; their third-party requirements)."""
    folder = ROOT / "services" / service
    if not (folder / "pyproject.toml").is_file():
        known = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
        raise SystemExit(f"no service {service!r}; services: {', '.join(known)}")
    local: list[Path] = []
    third_party: list[str] = []

    def visit(path: Path, extras: list[str]) -> None:
        project = _project(path)
        wanted = list(project.get("dependencies", []))
        for extra in extras:
            wanted += project.get("optional-dependencies", {}).get(extra, [])
        for requirement in wanted:
            name, sub_extras = _split(requirement)
            if name in LIBS:
                visit(LIBS[name], sub_extras)
            elif requirement not in third_party:
                third_party.append(requirement)
        if path not in local:
            local.append(path)

    visit(folder, [])
    local.sort(key=lambda p: list(LIBS.values()).index(p) if p in LIBS.values() else len(LIBS))
    return local, third_party


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/image_requirements.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("service", help="a folder under services/")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--local", action="store_true", help="print the repo's distributions (paths) instead")
    what.add_argument("--needs-torch", action="store_true", help="exit 0 when the image needs torch, else 1")
    args = parser.parse_args(argv)
    local, third_party = resolve(args.service)
    if args.needs_torch:
        return 0 if any(_split(r)[0] == "torch" for r in third_party) else 1
    for line in ([str(p.relative_to(ROOT)) for p in local] if args.local else third_party):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
