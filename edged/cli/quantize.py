"""``edged models quantize NAME``: the command's logic, for the CLI app to register.

Kept out of :mod:`edged.cli.admin` so the command is one small function the app wires up::

    @models_app.command("quantize")
    def models_quantize(name, data=None, images=None, samples=512, out=None, ...):
        _delegate(impl, settings, name=name, data=data, images=images, samples=samples,
                  out=out, models_dir=models_dir)

Like the admin commands it never exits: it returns an exit code or raises
:class:`~edged.errors.EdgedError`.
"""

from __future__ import annotations

from pathlib import Path

from edged.config import Settings
from edged.errors import ModelError
from edged.models.catalog import CATALOG
from edged.models.loader import session_factory
from edged.models.quantize import quantize_model


def models_quantize(
    settings: Settings,
    *,
    name: str,
    data: Path | None,
    images: Path | None,
    samples: int = 512,
    out: Path | None = None,
    models_dir: Path | None = None,
) -> int | None:
    """Quantize ``name`` and print where ``NAME_int8.onnx`` and its sidecar went.

    Emotion models calibrate on ``data`` (a FER2013-layout npz of real faces), detectors on
    the photos in ``images``; the one the model's kind needs is required.
    """
    spec = CATALOG.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    if spec.kind == "emotion" and data is None:
        raise ModelError(f"{name} is an emotion model: give --data FER2013.npz (real faces)")
    if spec.kind == "detector" and images is None:
        raise ModelError(f"{name} is a detector: give --images DIR (real photos or frames)")
    result = quantize_model(
        name,
        models_dir if models_dir is not None else settings.models.dir,
        fer_npz=data if data is not None else Path(),
        image_dir=images if images is not None else Path(),
        out_dir=out,
        samples=samples,
        factory=session_factory(settings, ["cpu"]),
    )
    print(f"{result.name}: {result.output} ({result.samples} calibration inputs)")
    print(f"sidecar: {Path(result.output).with_suffix('.json').name} beside it")
    return 0
