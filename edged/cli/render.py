"""Output of the ``edged`` commands: rich tables for people, JSON for programs, TOML for
``config show``. Functions here take the typed results the package returns and print them;
they decide nothing.

JSON goes to stdout as one document (``json.loads`` of the whole output works); tables and
messages go through a rich console whose width follows ``$COLUMNS`` or the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

if TYPE_CHECKING:  # the command modules import this one: keep OpenCV and ORT out of --help
    from edged.models.fetch import FetchResult
    from edged.models.store import (
        FetchReport,
        ImportResult,
        ModelStatus,
        StoreStatus,
        VerifyReport,
    )
    from edged.runtime.probe import CameraProbe, ProbeReport


def console(stderr: bool = False) -> Console:
    """A console for tables and messages.

    Width: ``$COLUMNS`` when set, else the terminal's; not on a terminal (a pipe, the
    journal, a test) rich would assume 80 columns and wrap every path, so give it room.
    """
    # soft_wrap: message lines are never broken (paths and commands stay copy-pastable).
    con = Console(highlight=False, stderr=stderr, soft_wrap=True)
    if not con.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        con = Console(highlight=False, stderr=stderr, soft_wrap=True, width=200)
    return con


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and paths as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(_plain(data), indent=2) + "\n")
    sys.stdout.flush()


def _size(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "-"
    text = f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} KB"
    return f"~{text}" if approx else text


_CHECK_STYLE = {
    "ok": "[green]ok[/]",
    "mismatch": "[bold red]MISMATCH[/]",
    "unrecorded": "[yellow]unrecorded[/]",
    "shipped": "[green]shipped[/]",
    "missing": "[dim]-[/]",
}


# --------------------------------------------------------------------------- models list


def status_json(status: StoreStatus, configured_phase: str) -> dict[str, Any]:
    """``models list --json``: the store status, phases keyed by name."""
    phases = {p.name: {k: v for k, v in _plain(p).items() if k != "name"} for p in status.phases}
    return {
        "models_dir": str(status.models_dir),
        "models": _plain(status.models),
        "phases": phases,
        "usable_phases": list(status.usable_phases),
        "configured_phase": configured_phase,
    }


def _installed_cell(m: ModelStatus) -> str:
    if m.installed:
        return "[green]yes[/]"
    if m.shipped:
        return "[red]no (missing from the package)[/]"
    return "no → fetch" if m.downloadable else "no → import"


def _files_cell(m: ModelStatus) -> str:
    prefix = "(edged package) " if m.shipped else ""
    return escape("\n".join(prefix + f.file for f in m.files))


def _models_table(status: StoreStatus, with_files: bool) -> Table:
    """The models table; ``with_files`` adds the phases and file columns (wide consoles)."""
    table = Table(title=f"Models in {status.models_dir}", title_justify="left")
    # Names and paths are never wrapped: an operator copies them into commands.
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    if with_files:
        table.add_column("phases")
        table.add_column("file (seed layout)", no_wrap=True)
    for col in ("size", "installed", "checksum"):
        table.add_column(col)
    for m in status.models:
        size = _size(m.size) if m.installed else _size(m.size_hint, approx=True)
        wide = [", ".join(m.phases) or "-", _files_cell(m)] if with_files else []
        table.add_row(m.name, m.kind, *wide, size, _installed_cell(m), _CHECK_STYLE[m.checksum])
    return table


def _files_table(status: StoreStatus) -> Table:
    table = Table(title="Files (seed layout)", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("file", no_wrap=True)
    for m in status.models:
        table.add_row(m.name, _files_cell(m))
    return table


def _chain(names: Sequence[str], chosen: str | None) -> str:
    return " → ".join(f"[bold green]{n}[/]" if n == chosen else f"[dim]{n}[/]" for n in names)


def _phases_table(status: StoreStatus, configured_phase: str) -> Table:
    table = Table(title="Phases", title_justify="left")
    table.add_column("phase")
    table.add_column("usable")
    table.add_column("detector (chain)")
    table.add_column("emotion model (chain)")
    for p in status.phases:
        mark = " (configured)" if p.name == configured_phase else ""
        table.add_row(
            p.name + mark,
            "[green]yes[/]" if p.usable else "[red]no[/]",
            _chain(p.detectors, p.detector),
            _chain(p.classifiers, p.classifier),
        )
    return table


def models_list(status: StoreStatus, configured_phase: str) -> None:
    """``edged models list``: one table where it fits unwrapped, else a narrower models
    table and the files on their own, so no name or path is ever broken."""
    con = console()
    wide = _models_table(status, with_files=True)
    unbounded = con.options.update_width(1 << 16)  # measure the natural width, not clamped
    if Measurement.get(con, unbounded, wide).maximum <= con.width:
        con.print(wide)
    else:
        con.print(_models_table(status, with_files=False))
        con.print(_files_table(status))
    con.print(_phases_table(status, configured_phase))
    con.print(
        "install: [bold]edged models fetch NAME[/] (or --phase P, --mirror URL) · "
        "[bold]edged models import FILE --as NAME[/] for models with no public download"
    )
    if any(m.checksum == "mismatch" for m in status.models):
        con.print("[bold red]checksum mismatch:[/] run `edged models verify` for details")


# --------------------------------------------------------------------------- fetch


class _RichProgress:
    """:class:`edged.models.fetch.ProgressSink` drawing a rich download bar."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}

    def begin(self, label: str, total: int | None, done: int) -> None:
        # A resumed attempt continues the same bar instead of drawing a new one.
        task = self._tasks.get(label)
        if task is None:
            task = self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.reset(task, total=total, completed=done)
        self._task = task

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def end(self) -> None:
        if self._task is not None:
            self._progress.stop_task(self._task)
            self._task = None


@contextmanager
def fetch_progress(heading: str = "") -> Iterator[_RichProgress]:
    """Download bars for the duration of a fetch, under an optional heading."""
    con = console()
    if heading:
        con.print(heading)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=con, transient=False) as progress:
        yield _RichProgress(progress)


_VERIFIED_BY = {"catalogue": "catalogue hash", "recorded": "recorded hash", "new": "hash recorded"}


def _fetched(r: FetchResult) -> str:
    verb = "downloaded" if r.downloaded else "already installed"
    return (
        f"[green]✓[/] {r.name}: {r.file} {verb} ({_size(r.size)}, sha256 {r.sha256[:16]}…, "
        f"{_VERIFIED_BY[r.verified_by]})"
    )


def fetch_report(report: FetchReport) -> None:
    con = console()
    err = console(stderr=True)
    for note in report.notes:
        con.print(escape(note))
    for r in report.results:
        con.print(_fetched(r))
    for line in report.warnings:
        err.print(f"[yellow]![/] {escape(line)} (a fallback of the phase is installed)")
    for line in report.failures:
        err.print(f"[bold red]✗[/] {escape(line)}")


# --------------------------------------------------------------------------- verify


def verify_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "models_dir": str(report.models_dir),
        "ok": report.ok,
        "models": _plain(report.rows),
    }


def verify_report(report: VerifyReport) -> None:
    con = console()
    if not report.rows:
        con.print(f"no models installed in {report.models_dir}: see `edged models list`")
        return
    table = Table(title=f"Verify {report.models_dir}", title_justify="left")
    for col in ("model", "checksum", "load + I/O + inference (CPU)", "provider", "result"):
        table.add_column(col, overflow="fold")
    for r in report.rows:
        table.add_row(
            r.name,
            escape(r.checksum_detail or r.checksum),
            escape(r.load),
            r.provider,
            "[green]ok[/]" if r.ok else "[bold red]FAIL[/]",
        )
    con.print(table)
    if any(r.checksum == "unrecorded" for r in report.rows):
        con.print(
            "[yellow]unrecorded[/]: no reference hash for a file placed by hand; "
            "`edged models import FILE --as NAME` records one"
        )


def import_result(r: ImportResult) -> None:
    console().print(
        f"[green]✓[/] {r.name}: {escape(str(r.source))} → {escape(str(r.dest))} "
        f"(sha256 {r.sha256[:16]}…; {escape(r.note)})"
    )


# --------------------------------------------------------------------------- cameras


def _camera_label(p: CameraProbe) -> str:
    if p.camera_id is None:
        return "-"
    return p.camera_id if p.enabled else f"{p.camera_id} (disabled)"


def probe_json(report: ProbeReport) -> dict[str, Any]:
    return {
        "ok": not report.failed,
        "cameras": [
            {"camera": p.camera_id, "enabled": p.enabled, "counts": p.counts, **p.result.as_dict()}
            for p in report.probes
        ],
    }


def probe_report(report: ProbeReport) -> None:
    con = console()
    if not report.probes:
        con.print("no cameras configured and no /dev/video* devices found")
        return
    table = Table(title="Cameras", title_justify="left")
    for col in ("camera", "source", "ok", "resolution", "fps", "first frame", "backend", "reason"):
        table.add_column(col, overflow="fold")
    for p in report.probes:
        res = p.result
        if res.ok:
            cells = [
                "[green]yes[/]",
                f"{res.width}x{res.height}",
                f"{res.fps:g}" if res.fps else "?",
                f"{res.grab_s * 1000:.0f} ms" if res.grab_s is not None else "-",
                res.backend,
                "",
            ]
        else:
            cells = ["[bold red]no[/]", "-", "-", "-", res.backend, escape(res.error or "failed")]
        table.add_row(escape(_camera_label(p)), escape(res.source), *cells)
    con.print(table)


# --------------------------------------------------------------------------- config


def _toml_ready(value: Any) -> Any:
    """TOML has no null: an unset optional (a path) is written as ``""``, which the config
    reads back as unset."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return {k: _toml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_toml_ready(v) for v in value]
    return value


def to_toml(data: Mapping[str, Any]) -> str:
    """Settings data as a TOML document, through a real TOML writer (every string escaped
    as TOML requires, control characters included)."""
    import tomli_w

    return tomli_w.dumps(_toml_ready(data))
