"""The ``edged`` command line. Thin on purpose: build settings, call into the package, and
turn an :class:`~edged.errors.EdgedError` into a message and an exit code. This is the only
place in edged that exits the process.

Heavy imports (ONNX Runtime, OpenCV) happen inside the commands so ``edged --help`` and
``edged check-config`` stay fast on a Jetson.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edged import __version__
from edged.cli.schema import schema as schema_command
from edged.errors import EdgedError

app = typer.Typer(
    name="edged",
    help="Edge daemon for real-time facial emotion recognition (cameras in, MQTT out).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The model catalogue: list, fetch, verify, import.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
cameras_app = typer.Typer(help="Camera sources.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(cameras_app, name="cameras")
app.command("schema")(schema_command)

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $EDGED_CONFIG, /etc/edged/edged.toml, ./config/edged.toml).",
    ),
]
ModelsDirOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--models-dir", help="Models directory (default: [models] dir)."),
]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")]
LogFormatOpt = Annotated[
    str, typer.Option("--log-format", help="auto (JSON when not a TTY), json, console.")
]


@contextmanager
def _errors() -> Iterator[None]:
    """Print an EdgedError as a clean message and exit 1; anything else is a bug."""
    try:
        yield
    except EdgedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _setup_logging(level: str = "warning", fmt: str = "auto") -> None:
    from edged.logs import configure_logging

    configure_logging(level, fmt)  # type: ignore[arg-type]


def _settings(config: Path | None) -> Any:
    from edged.config import load_settings

    settings, _ = load_settings(config)
    return settings


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
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "auto",
) -> None:
    """Run the daemon (what systemd starts). SIGTERM stops, SIGHUP reloads the config.

    SIGUSR1 writes every thread's Python stack to stderr (the journal): what a hung daemon
    is doing, without stopping it.
    """
    import faulthandler
    import signal

    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _setup_logging(log_level, log_format)
    with _errors():
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
def check_config(config: ConfigOpt = None) -> None:
    """Validate the config file; print each error with its key and file; exit non-zero."""
    from edged.config import find_config_file, load_settings

    with _errors():
        settings, path = load_settings(config)
        del settings
        found = path or find_config_file(None, {})
        typer.echo(f"ok: {found or 'no config file found; defaults are valid'}")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON instead of TOML-like text.")
    ] = False,
) -> None:
    """The effective configuration (file + environment + defaults), secrets redacted."""
    with _errors():
        settings = _settings(config)
        data = settings.redacted()
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            from edged.config import to_toml

            typer.echo(to_toml(data))


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="An image or video file.")],
    phase: Annotated[Optional[str], typer.Option(help="Phase (default: [pipeline] phase).")] = None,  # noqa: UP045
    detector: Annotated[Optional[str], typer.Option(help="Detector model name.")] = None,  # noqa: UP045
    classifier: Annotated[Optional[str], typer.Option(help="Emotion model name.")] = None,  # noqa: UP045
    models_dir: ModelsDirOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write an annotated image/video.")
    ] = None,
    providers: Annotated[Optional[str], typer.Option(help="Comma list, e.g. cuda,cpu.")] = None,  # noqa: UP045
    config: ConfigOpt = None,
    log_level: LogLevelOpt = "warning",
    blur: Annotated[
        bool, typer.Option("--blur", help="Pixelate every face in the --out copy (to share it).")
    ] = False,
) -> None:
    """Run the pipeline once on a file and print JSON (one object per frame for a video).

    ``--detector`` alone runs detection only. ``--blur`` hides the faces in the ``--out``
    copy (the JSON is unchanged).
    """
    _setup_logging(log_level, "console")
    with _errors():
        from edged.analysis.analyze import analyze_file

        settings = _settings(config)
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


def _delegate(fn: Callable[..., int | None], *args: Any, **kwargs: Any) -> None:
    with _errors():
        code = fn(*args, **kwargs)
    if code:
        raise typer.Exit(code)


@models_app.command("list")
def models_list(
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every known model: phases, path, size, installed, checksum, usable phases."""
    from edged.cli.admin import models_list as impl

    _setup_logging()
    with _errors():
        settings = _settings(config)
    _delegate(impl, settings, models_dir=models_dir, as_json=as_json)


@models_app.command("fetch")
def models_fetch(
    names: Annotated[
        list[str] | None, typer.Argument(help="Model names (default: the phase's).")
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
    from edged.cli.admin import models_fetch as impl

    _setup_logging()
    with _errors():
        settings = _settings(config)
    _delegate(
        impl,
        settings,
        names=names or [],
        phase=phase,
        mirror=mirror,
        models_dir=models_dir,
        timeout=timeout,
    )


@models_app.command("verify")
def models_verify(
    names: Annotated[Optional[list[str]], typer.Argument()] = None,  # noqa: UP045
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check checksums and load each installed model against its spec."""
    from edged.cli.admin import models_verify as impl

    _setup_logging()
    with _errors():
        settings = _settings(config)
    _delegate(impl, settings, names=names or [], models_dir=models_dir)


@models_app.command("import")
def models_import(
    file: Annotated[Path, typer.Argument(help="A local ONNX file.")],
    as_name: Annotated[str, typer.Option("--as", help="Catalogue name it becomes.")],
    part: Annotated[int, typer.Option(help="For two-file models: which file (0 or 1).")] = 0,
    models_dir: ModelsDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check a local file against a catalogue spec and put it into the layout."""
    from edged.cli.admin import models_import as impl

    _setup_logging()
    with _errors():
        settings = _settings(config)
    _delegate(impl, settings, file=file, name=as_name, part=part, models_dir=models_dir)


@cameras_app.command("probe")
def cameras_probe(
    config: ConfigOpt = None,
    devices: Annotated[
        bool, typer.Option("--devices/--no-devices", help="Also probe /dev/video*.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a first frame.")] = 10.0,
) -> None:
    """Open every configured source (and /dev/video*): resolution, fps, grab time or why not."""
    from edged.cli.admin import cameras_probe as impl

    _setup_logging()
    with _errors():
        settings = _settings(config)
    _delegate(impl, settings, devices=devices, timeout=timeout)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
