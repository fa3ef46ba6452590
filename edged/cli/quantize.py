"""``edged models quantize NAME``: the command's logic, registered by :mod:`edged.cli.models`.

Kept apart so the typer command stays a thin wrapper (options in, exit code out) and this
part (which calibration input a model needs, where the file may go) reads on its own.
It never exits: it returns an exit code or raises :class:`~edged.errors.EdgedError`.
"""

from __future__ import annotations

from pathlib import Path

from edged.config import Settings
from edged.errors import ModelError
from edged.models.catalog import CATALOG, int8_name
from edged.models.loader import session_factory
from edged.models.quantize import output_path, quantize_model


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
    the photos in ``images``; the one the model's kind needs is required. A shipped int8
    variant (``edged_fer_int8``) lives inside the installed package, so making one again
    needs ``out``: the command never overwrites a file edged ships.
    """
    spec = CATALOG.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    if spec.kind == "emotion" and data is None:
        raise ModelError(f"{name} is an emotion model: give --data FER2013.npz (real faces)")
    if spec.kind == "detector" and images is None:
        raise ModelError(f"{name} is a detector: give --images DIR (real photos or frames)")
    mdir = models_dir if models_dir is not None else settings.models.dir
    int8 = CATALOG.get(int8_name(name))
    if int8 is not None and int8.shipped and out is None:
        raise ModelError(
            f"{int8.name} ships with edged ({output_path(spec, mdir)}); give --out DIR "
            "to make another"
        )
    result = quantize_model(
        name,
        mdir,
        fer_npz=data if data is not None else Path(),
        image_dir=images if images is not None else Path(),
        out_dir=out,
        samples=samples,
        factory=session_factory(settings, ["cpu"]),
    )
    print(f"{result.name}: {result.output} ({result.samples} calibration inputs)")
    print(f"sidecar: {Path(result.output).with_suffix('.json').name} beside it")
    return 0
