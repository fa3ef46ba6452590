"""``edged analyze FILE``: the pipeline once on an image or video, JSON to stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edged.cli.common import (
    ConfigOpt,
    LogFormat,
    LogLevel,
    LogLevelOpt,
    ModelsDirOpt,
    errors,
    load,
    setup_logging,
)


def analyze(
    path: Annotated[Path, typer.Argument(help="An image or video file.")],
    phase: Annotated[Optional[str], typer.Option(help="Phase (default: [pipeline] phase).")] = None,  # noqa: UP045
    detector: Annotated[Optional[str], typer.Option(help="Detector model name.")] = None,  # noqa: UP045
    classifier: Annotated[Optional[str], typer.Option(help="Emotion model name.")] = None,  # noqa: UP045
    models_dir: ModelsDirOpt = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Write an annotated image/video."),
    ] = None,
    providers: Annotated[Optional[str], typer.Option(help="Comma list, e.g. cuda,cpu.")] = None,  # noqa: UP045
    config: ConfigOpt = None,
    log_level: LogLevelOpt = LogLevel.warning,
    blur: Annotated[
        bool, typer.Option("--blur", help="Pixelate every face in the --out copy (to share it).")
    ] = False,
) -> None:
    """Run the pipeline once on a file and print JSON (one object per frame for a video).

    --detector alone runs detection only. --blur hides the faces in the --out copy (the
    JSON is unchanged).
    """
    from edged.analysis.analyze import analyze_file

    setup_logging(log_level, LogFormat.console)
    settings = load(config)
    with errors():
        analyze_file(
            settings,
            path,
            phase=phase,
            detector=detector,
            classifier=classifier,
            models_dir=models_dir,
            out=out,
            providers=providers.split(",") if providers else None,
            emit=lambda obj: typer.echo(json.dumps(obj)),
            blur=blur,
        )
