"""pyproject.toml as integrators read it: every runtime dependency bounded above (a new
major release is adopted after the suite passed on it), the versions this suite runs on
inside the declared ranges, and only real trove classifiers."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from trove_classifiers import classifiers as known_classifiers

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return data["project"]


def runtime_requirements() -> list[Requirement]:
    """The dependencies an installed edged runs with: the core list and the ONNX Runtime
    extras (``cpu``, ``gpu``); dev and train tooling are not shipped to devices."""
    proj = project()
    extras = proj["optional-dependencies"]
    return [Requirement(r) for r in [*proj["dependencies"], *extras["cpu"], *extras["gpu"]]]


def has_upper_bound(req: Requirement) -> bool:
    return any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier)


RUNTIME = runtime_requirements()


def test_runtime_dependencies_are_read() -> None:
    names = {r.name for r in RUNTIME}
    assert {"numpy", "opencv-python-headless", "pydantic", "typer", "onnxruntime"} <= names


@pytest.mark.parametrize("req", RUNTIME, ids=str)
def test_every_runtime_dependency_has_an_upper_bound(req: Requirement) -> None:
    assert has_upper_bound(req), f"{req} has no upper bound"


@pytest.mark.parametrize("req", RUNTIME, ids=str)
def test_installed_version_lies_in_the_declared_range(req: Requirement) -> None:
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"{req.name} is not for this Python")
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        if req.name == "onnxruntime-gpu":  # the GPU wheel is the alternative to onnxruntime
            pytest.skip("onnxruntime-gpu is not installed here (onnxruntime is)")
        raise
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed}"


def test_the_bound_check_fails_on_an_unbounded_requirement() -> None:
    assert not has_upper_bound(Requirement("numpy>=1.24"))
    assert has_upper_bound(Requirement("numpy>=1.24,<3"))


def test_classifiers_are_known_trove_classifiers() -> None:
    listed = project()["classifiers"]
    assert listed and [c for c in listed if c not in known_classifiers] == []


def test_python_classifiers_lie_within_requires_python() -> None:
    proj = project()
    allowed = SpecifierSet(proj["requires-python"])
    prefix = "Programming Language :: Python :: "
    versions = [c[len(prefix) :] for c in proj["classifiers"] if c.startswith(prefix)]
    versions = [v for v in versions if v[:1].isdigit() and "." in v]
    assert versions and [v for v in versions if not allowed.contains(v)] == []
