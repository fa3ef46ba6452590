"""``edged models ...``: the model store (:mod:`edged.models.store`) from the command line.

Each command builds settings, calls the store, and renders what it returns; exit code 1
when anything the operator asked for failed (every problem is shown first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edged.cli.common import (
    ConfigOpt,
    JsonOpt,
    ModelsDirOpt,
    admin_settings,
    errors,
    exit_with,
    group,
    models_dir_of,
)

app = group("The model catalogue: list, fetch, verify, import.")


@app.command("list")
def models_list(
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every known model: phases, path, size, installed, checksum, usable phases."""
    from edged.cli import render
    from edged.models.store import read_status

    settings = admin_settings(config)
    with errors():
        status = read_status(models_dir_of(settings, models_dir))
    if as_json:
        render.print_json(render.status_json(status, settings.pipeline.phase))
    else:
        render.models_list(status, settings.pipeline.phase)


@app.command("fetch")
def models_fetch(
    names: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Model names (default: the phase's)."),
    ] = None,
    phase: Annotated[Optional[str], typer.Option(help="Fetch what this phase needs.")] = None,  # noqa: UP045
    mirror: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            envvar="EDGED_MODEL_MIRROR",
            help="Mirror base URL serving <mirror>/<file in the layout> (http(s):// or file://); "
            "default: $EDGED_MODEL_MIRROR, then [models] mirror.",
        ),
    ] = None,
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="Network timeout in seconds.")] = 30.0,
) -> None:
    """Download models (checksum, resume, atomic placement, zip members)."""
    from edged.cli import render
    from edged.models.store import fetch_models, phase_spec

    settings = admin_settings(config)
    mdir = models_dir_of(settings, models_dir)
    ph = "" if names else (phase or settings.pipeline.phase)
    with errors():
        heading = ""
        if ph:
            phase_spec(ph)  # an unknown phase is refused before anything is drawn
            heading = f"fetching the models of phase [bold]{ph}[/] into {mdir}"
        with render.fetch_progress(heading) as progress:
            report = fetch_models(
                mdir,
                names=names or [],
                phase=ph,
                mirror=mirror or settings.models.mirror or "",
                timeout=timeout,
                progress=progress,
            )
    render.fetch_report(report)
    exit_with(report.ok)


@app.command("verify")
def models_verify(
    names: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Model names (default: every installed one)."),
    ] = None,
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check checksums and load each installed model against its spec."""
    from edged.cli import render
    from edged.models.store import verify_models

    settings = admin_settings(config)
    with errors():
        report = verify_models(models_dir_of(settings, models_dir), settings.pipeline, names or [])
    if as_json:
        render.print_json(render.verify_json(report))
    else:
        render.verify_report(report)
    exit_with(report.ok)


@app.command("import")
def models_import(
    file: Annotated[Path, typer.Argument(help="A local ONNX file.")],
    as_name: Annotated[str, typer.Option("--as", help="Catalogue name it becomes.")],
    part: Annotated[int, typer.Option(help="For two-file models: which file (0 or 1).")] = 0,
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check a local file against a catalogue spec and put it into the layout."""
    from edged.cli import render
    from edged.models.store import import_model

    settings = admin_settings(config)
    with errors():
        result = import_model(
            file, as_name, models_dir_of(settings, models_dir), settings.pipeline, part=part
        )
    render.import_result(result)


# Commands that transform installed models (e.g. quantisation) register below this line,
# each as a thin command over a function of the models package.


@app.command("quantize")
def models_quantize(
    name: Annotated[str, typer.Argument(help="Catalogue name of a single-file model.")],
    data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Emotion models: FER2013-layout npz of real faces to calibrate on."),
    ] = None,
    images: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Detectors: a folder of real photos or frames to calibrate on."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Emotion models: calibration faces.")] = 512,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write NAME_int8.onnx here (default: the int8 entry's location)."),
    ] = None,
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write NAME_int8.onnx (static int8 QDQ, calibrated on real data) and its sidecar.

    The catalogue knows the result as NAME_int8: set it as [pipeline] detector/classifier.
    A shipped model's int8 variant ships too, so quantizing one needs --out.
    """
    from edged.cli.quantize import models_quantize as impl

    settings = admin_settings(config)
    with errors():
        code = impl(
            settings,
            name=name,
            data=data,
            images=images,
            samples=samples,
            out=out,
            models_dir=models_dir_of(settings, models_dir),
        )
    exit_with(not code)
