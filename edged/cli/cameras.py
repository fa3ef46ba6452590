"""``edged cameras ...``: the camera sources."""

from __future__ import annotations

from typing import Annotated

import typer

from edged.cli.common import ConfigOpt, JsonOpt, admin_settings, exit_with, group

app = group("Camera sources.")


@app.command("probe")
def cameras_probe(
    config: ConfigOpt = None,
    devices: Annotated[
        bool, typer.Option("--devices/--no-devices", help="Also probe /dev/video*.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a first frame.")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Open every configured source (and /dev/video*): resolution, fps, grab time or why not.

    Exit 1 when an enabled configured camera fails; other /dev/video* nodes are only
    reported (a USB camera also exposes a metadata node that never gives frames).
    """
    from edged.cli import render
    from edged.runtime.probe import probe_cameras

    settings = admin_settings(config)
    report = probe_cameras(settings.cameras, devices=devices, timeout=timeout)
    if as_json:
        render.print_json(render.probe_json(report))
    else:
        render.probe_report(report)
    exit_with(not report.failed)
