"""The ``edged`` command line: the root app, ``run`` and ``check-config``, and the command
groups of the sibling modules (``models``, ``config``, ``cameras``) and ``analyze``.

Thin on purpose: a command builds settings, calls into the package, renders what it
returns (:mod:`edged.cli.render`), and turns an :class:`~edged.errors.EdgedError` into a
message and an exit code. This is the only place in edged that exits the process.

Heavy imports (ONNX Runtime, OpenCV) happen inside the commands so ``edged --help`` and
``edged check-config`` stay fast on a Jetson. Help texts are plain text (no rich markup),
so ``[models] dir`` reaches the reader as written.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from edged import __version__
from edged.cli import analyze as analyze_cmd
from edged.cli import cameras, models
from edged.cli import config as config_cmd
from edged.cli.common import (
    ConfigOpt,
    JsonOpt,
    LogFormat,
    LogFormatOpt,
    LogLevel,
    LogLevelOpt,
    errors,
    setup_logging,
)
from edged.cli.schema import schema as schema_command
from edged.errors import EdgedError

app = typer.Typer(
    name="edged",
    help="Edge daemon for real-time facial emotion recognition (cameras in, MQTT out).",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(config_cmd.app, name="config")
app.add_typer(cameras.app, name="cameras")
app.command("schema")(schema_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edged {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Edge daemon for real-time facial emotion recognition."""


@app.command()
def run(
    config: ConfigOpt = None,
    log_level: LogLevelOpt = LogLevel.info,
    log_format: LogFormatOpt = LogFormat.auto,
) -> None:
    """Run the daemon (what systemd starts). SIGTERM stops, SIGHUP reloads the config.

    SIGUSR1 writes every thread's Python stack to stderr (the journal): what a hung daemon
    is doing, without stopping it.
    """
    import faulthandler
    import signal

    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    setup_logging(log_level, log_format)
    with errors():
        from edged.config import load_settings
        from edged.service.daemon import run_daemon

        settings, path = load_settings(config)
        code = run_daemon(settings, path)
    # Everything edged owns is closed by now (spool, MQTT, cameras). Skip the interpreter's
    # teardown: native libraries' threads (FFmpeg, ONNX Runtime) racing their own static
    # destructors can abort a clean stop with "terminate called without an active
    # exception", which systemd would count as a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command("check-config")
def check_config(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Validate the config file; print each error with its key and file; exit non-zero.

    With --json: {"ok": true, "file": PATH or null} or {"ok": false, "error": MESSAGE}.
    """
    from edged.cli import render
    from edged.config import find_config_file, load_settings

    try:
        _settings, path = load_settings(config)
    except EdgedError as exc:
        if as_json:
            render.print_json(
                {"ok": False, "file": str(config) if config else None, "error": str(exc)}
            )
        else:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    found = path or find_config_file(None, {})
    if as_json:
        render.print_json({"ok": True, "file": str(found) if found else None})
    else:
        typer.echo(f"ok: {found or 'no config file found; defaults are valid'}")


app.command("analyze")(analyze_cmd.analyze)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
