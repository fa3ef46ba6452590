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


def wheel_models() -> dict[str, str]:
    """The repository's model files the wheel carries (source path -> path in the wheel)."""
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    included: dict[str, str] = data["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    return included


def shipped_files() -> list[str]:
    from edged.models.catalog import CATALOG

    return sorted({f for spec in CATALOG.values() if spec.shipped for f in spec.files})


@pytest.mark.parametrize("file", shipped_files())
def test_the_wheel_carries_every_file_of_a_shipped_model_with_its_sidecar(file: str) -> None:
    """A shipped model resolves to ``edged/_models`` in an installed wheel: a file missing
    from force-include loads from a checkout and fails (or falls back) on a device."""
    included = wheel_models()
    for path in [f"models/{file}", *sidecar_of(file)]:
        assert included.get(path) == f"edged/_models/{path.removeprefix('models/')}", path
        assert (PYPROJECT.parent / path).is_file(), path


def sidecar_of(file: str) -> list[str]:
    """The JSON beside a model file, where the repository has one (v2's fast graph is
    described inside v2's sidecar)."""
    side = f"models/{Path(file).with_suffix('.json')}"
    return [side] if (PYPROJECT.parent / side).is_file() else []


def test_the_wheel_carries_no_model_file_the_catalogue_does_not_ship() -> None:
    wanted = {f"models/{f}" for f in shipped_files()}
    wanted |= {s for f in shipped_files() for s in sidecar_of(f)}
    assert set(wheel_models()) == wanted
