"""What every command group shares: the option types, settings loading, logging set-up, and
turning an :class:`~edged.errors.EdgedError` into a message and exit code 1.

Help texts are plain text (the Typer apps run with ``rich_markup_mode=None``): config
sections are written as ``[models]`` and must reach the reader as such. Commands import
:mod:`edged.cli.render` (rich) and the package inside their bodies, so ``edged --help``
loads neither.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edged.errors import EdgedError

if TYPE_CHECKING:
    from edged.config import Settings


def group(help_text: str) -> typer.Typer:
    """A command group with the conventions of every edged command."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(str, enum.Enum):
    auto = "auto"
    json = "json"
    console = "console"


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
LogLevelOpt = Annotated[LogLevel, typer.Option("--log-level", help="Log level.")]
LogFormatOpt = Annotated[
    LogFormat, typer.Option("--log-format", help="auto (JSON when not a TTY), json, console.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


@contextmanager
def errors() -> Iterator[None]:
    """Print an EdgedError as a clean message and exit 1; anything else is a bug."""
    try:
        yield
    except EdgedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def setup_logging(level: LogLevel = LogLevel.warning, fmt: LogFormat = LogFormat.auto) -> None:
    from edged.logs import configure_logging

    configure_logging(level.value, fmt.value)


def load(config: Path | None) -> Settings:
    """The settings of ``config`` (or the default search), errors as a clean exit."""
    from edged.config import load_settings

    with errors():
        settings, _ = load_settings(config)
    return settings


def admin_settings(config: Path | None) -> Settings:
    """The start of an admin command (models, cameras): warnings-only logging, then the
    settings of ``config``, errors as a clean exit."""
    setup_logging()
    return load(config)


def models_dir_of(settings: Settings, models_dir: Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else Path(settings.models.dir)


def exit_with(ok: bool) -> None:
    """End a command that reported its problems itself: exit 1 unless ``ok``."""
    if not ok:
        raise typer.Exit(1)
