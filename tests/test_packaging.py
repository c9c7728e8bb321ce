"""The declared dependencies are what the installed environment satisfies.

CI installs from scratch with pip's resolver; a requirement that contradicts another package's own pin (nni 3.0 caps
``filelock<3.12``) makes that install impossible while an old environment, installed before the change, still passes
every other test. This check reads ``pyproject.toml`` and asks the installed metadata, so the contradiction shows here.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def _installed_requirements(dist: str) -> list[Requirement]:
    return [Requirement(r) for r in (metadata.requires(dist) or [])]


@pytest.mark.parametrize("req", _declared(), ids=str)
def test_declared_dependency_is_satisfied(req):
    version = metadata.version(req.name)
    assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not satisfy {req}"


def test_declared_ranges_admit_what_the_dependencies_pin():
    """Each declared range overlaps the pins the other dependencies place on the same package."""
    declared = {Requirement(str(r)).name.lower().replace("_", "-"): r for r in _declared()}
    conflicts = []
    for req in _declared():
        for sub in _installed_requirements(req.name):
            if sub.marker is not None and not sub.marker.evaluate({"extra": ""}):
                continue
            name = sub.name.lower().replace("_", "-")
            if name in declared and sub.specifier:
                installed = metadata.version(sub.name)
                if not (sub.specifier.contains(installed, prereleases=True)
                        and declared[name].specifier.contains(installed, prereleases=True)):
                    conflicts.append(f"{req.name} needs {sub}, we declare {declared[name]}, installed {installed}")
    assert not conflicts, conflicts
