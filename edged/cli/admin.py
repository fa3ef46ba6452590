"""Operator commands behind ``edged models ...`` and ``edged cameras probe``.

The CLI parses arguments and hands over here; these functions print tables (rich) and
return an exit code. They never exit themselves and raise :class:`~edged.errors.EdgedError`
subclasses for problems that stop the whole command (an unknown model name); problems with
one model or one camera among several are reported in the table and turn into exit code 1,
so an operator sees everything that is wrong in one run.

The state of the models directory is computed by :func:`catalogue_status` as plain data,
so ``models list --json``, the tests and anything else read the same facts the table shows.
Heavy imports (ONNX Runtime, OpenCV) happen inside the commands that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.markup import escape
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

from edged.errors import EdgedError, FetchError, ModelError
from edged.models.catalog import CATALOG, PHASES, ModelSpec, PhaseSpec
from edged.models.fetch import (
    ChecksumStore,
    FetchResult,
    fetch_model,
    fsync_dir,
    model_sources,
    models_dir_lock,
    os_error_message,
    sha256_file,
)

log = structlog.get_logger(__name__)

#: Checksum states of one installed file.
#: ok: matches the hash recorded at install or the catalogue's; mismatch: it does not;
#: unrecorded: no reference hash (placed by hand); shipped: part of the edged package;
#: missing: not installed.
CHECKSUM_STATES = ("ok", "mismatch", "unrecorded", "shipped", "missing")


def _console(stderr: bool = False) -> Console:
    """A console for tables; not on a terminal (a pipe, the journal, a test) rich would
    assume 80 columns and fold every path, so give it room instead."""
    # soft_wrap: message lines are never broken (paths and commands stay copy-pastable).
    con = Console(highlight=False, stderr=stderr, soft_wrap=True)
    if not con.is_terminal:
        con = Console(highlight=False, stderr=stderr, soft_wrap=True, width=200)
    return con


def _models_dir(settings: Any, models_dir: Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else Path(settings.models.dir)


# --------------------------------------------------------------------------- status


def _phases_of(name: str, phases: Mapping[str, PhaseSpec]) -> list[str]:
    return [p.name for p in phases.values() if name in p.detectors or name in p.classifiers]


def file_status(
    spec: ModelSpec, index: int, models_dir: Path, records: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Installed?, size, hash and checksum state of file ``index`` of ``spec``."""
    rel = spec.files[index]
    path = spec.paths(models_dir)[index]
    out: dict[str, Any] = {
        "file": rel,
        "path": str(path),
        "installed": path.is_file(),
        "size": None,
        "sha256": None,
        "checksum": "missing",
        "expected_sha256": None,
    }
    if not out["installed"]:
        return out
    out["size"] = path.stat().st_size
    out["sha256"] = actual = sha256_file(path)
    if spec.shipped:
        out["checksum"] = "shipped"
        return out
    source = spec.sources[index] if index < len(spec.sources) else None
    # The record wins: it is what was verified and placed here (an imported own model may
    # legitimately differ from the upstream file the catalogue hash describes).
    recorded = records.get(rel, {}).get("sha256", "")
    expected = recorded or (source.sha256 if source is not None else "")
    out["expected_sha256"] = expected or None
    out["checksum"] = "unrecorded" if not expected else ("ok" if actual == expected else "mismatch")
    return out


def catalogue_status(
    models_dir: Path,
    catalog: Mapping[str, ModelSpec] = CATALOG,
    phases: Mapping[str, PhaseSpec] = PHASES,
) -> dict[str, Any]:
    """What is installed in ``models_dir`` and which phases can run, as plain data.

    A model is *usable* when all its files are installed and none has a checksum mismatch;
    a phase is usable when at least one model of its detector chain and one of its emotion
    chain are usable (the loader falls back along the chains).
    """
    records = ChecksumStore(models_dir).load()
    models: list[dict[str, Any]] = []
    usable: dict[str, bool] = {}
    for spec in catalog.values():
        files = [file_status(spec, i, models_dir, records) for i in range(len(spec.files))]
        installed = all(f["installed"] for f in files)
        states = {f["checksum"] for f in files}
        checksum = next(
            (s for s in ("mismatch", "missing", "unrecorded", "shipped") if s in states), "ok"
        )
        usable[spec.name] = installed and checksum != "mismatch"
        models.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "description": spec.description,
                "phases": _phases_of(spec.name, phases),
                "files": files,
                "installed": installed,
                "usable": usable[spec.name],
                "checksum": checksum,
                "size": sum(f["size"] or 0 for f in files) if installed else None,
                "size_hint": spec.size_hint or None,
                "shipped": spec.shipped,
                "downloadable": bool(spec.sources) and not spec.shipped,
                "license": spec.license,
            }
        )
    phase_rows: dict[str, dict[str, Any]] = {}
    for ph in phases.values():
        det = next((n for n in ph.detectors if usable.get(n)), None)
        cls = next((n for n in ph.classifiers if usable.get(n)), None)
        phase_rows[ph.name] = {
            "usable": det is not None and cls is not None,
            "detector": det,
            "classifier": cls,
            "detectors": list(ph.detectors),
            "classifiers": list(ph.classifiers),
        }
    return {
        "models_dir": str(models_dir),
        "models": models,
        "phases": phase_rows,
        "usable_phases": [n for n, row in phase_rows.items() if row["usable"]],
    }


def _read_status(models_dir: Path) -> dict[str, Any]:
    """:func:`catalogue_status`, with an unreadable directory said plainly (``0750
    edged:edged`` under /var/lib is not readable by other users)."""
    try:
        return catalogue_status(models_dir)
    except OSError as exc:
        raise ModelError(
            f"cannot read {exc.filename or models_dir}: {exc.strerror}; run as the user that "
            f"owns {models_dir} (e.g. `sudo -u edged edged models ...`)"
        ) from exc


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


def models_list(settings: Any, *, models_dir: Path | None, as_json: bool) -> int | None:
    """``edged models list``: the catalogue, what is installed, which phases can run."""
    mdir = _models_dir(settings, models_dir)
    status = _read_status(mdir)
    if as_json:
        status["configured_phase"] = settings.pipeline.phase
        print(json.dumps(status, indent=2))
        return 0
    con = _console()
    table = Table(title=f"Models in {mdir}", title_justify="left")
    for col in ("name", "kind", "phases", "file (seed layout)", "size", "installed", "checksum"):
        table.add_column(col, overflow="fold")
    for m in status["models"]:
        files = "\n".join(
            ("(edged package) " if m["shipped"] else "") + f["file"] for f in m["files"]
        )
        size = _size(m["size"]) if m["installed"] else _size(m["size_hint"], approx=True)
        if m["installed"]:
            inst = "[green]yes[/]"
        elif m["shipped"]:
            inst = "[red]no (missing from the package)[/]"
        elif m["downloadable"]:
            inst = "no → fetch"
        else:
            inst = "no → import"
        table.add_row(
            m["name"],
            m["kind"],
            ", ".join(m["phases"]) or "-",
            escape(files),
            size,
            inst,
            _CHECK_STYLE[m["checksum"]],
        )
    con.print(table)
    ptable = Table(title="Phases", title_justify="left")
    for col in ("phase", "usable", "detector (chain)", "emotion model (chain)"):
        ptable.add_column(col, overflow="fold")
    for name, row in status["phases"].items():
        mark = " (configured)" if name == settings.pipeline.phase else ""
        ptable.add_row(
            name + mark,
            "[green]yes[/]" if row["usable"] else "[red]no[/]",
            _chain(row["detectors"], row["detector"]),
            _chain(row["classifiers"], row["classifier"]),
        )
    con.print(ptable)
    con.print(
        "install: [bold]edged models fetch NAME[/] (or --phase P, --mirror URL) · "
        "[bold]edged models import FILE --as NAME[/] for models with no public download"
    )
    if any(m["checksum"] == "mismatch" for m in status["models"]):
        con.print("[bold red]checksum mismatch:[/] run `edged models verify` for details")
    return 0


def _chain(names: Sequence[str], chosen: str | None) -> str:
    return " → ".join(f"[bold green]{n}[/]" if n == chosen else f"[dim]{n}[/]" for n in names)


# --------------------------------------------------------------------------- fetch


class _RichProgress:
    """:class:`edged.models.fetch.ProgressSink` drawing a rich download bar (on stderr)."""

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


def _fetchable(spec: ModelSpec, mirror: str) -> bool:
    try:
        model_sources(spec, mirror)
    except FetchError:
        return False
    return True


def plan_phase(
    phase: str, models_dir: Path, mirror: str, catalog: Mapping[str, ModelSpec] = CATALOG
) -> list[list[str]]:
    """For each chain of ``phase``: the models worth trying to fetch, in chain order.

    A chain whose model is already usable (or shipped and present) needs nothing; models
    that cannot be downloaded (no source, no mirror) are left out, so the chain falls back
    to the next one, as the loader would at run time.
    """
    if phase not in PHASES:
        raise FetchError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
    status = {m["name"]: m for m in catalogue_status(models_dir, catalog)["models"]}
    ph = PHASES[phase]
    plans: list[list[str]] = []
    for chain in (ph.detectors, ph.classifiers):
        if any(status[n]["usable"] for n in chain if n in status):
            # The first usable model is what runs; nothing more to fetch for this chain
            # unless a better model earlier in the chain can be fetched.
            first_usable = next(i for i, n in enumerate(chain) if status[n]["usable"])
            better = [n for n in chain[:first_usable] if _fetchable(catalog[n], mirror)]
            plans.append(better[:1])
            continue
        plans.append([n for n in chain if _fetchable(catalog[n], mirror)])
    return plans


def models_fetch(
    settings: Any,
    *,
    names: Sequence[str],
    phase: str | None,
    mirror: str | None,
    models_dir: Path | None,
    timeout: float,
    catalog: Mapping[str, ModelSpec] = CATALOG,
) -> int | None:
    """``edged models fetch``: named models, or what a phase needs (default: configured).

    For a phase, each chain (detectors, emotion models) is fetched in order until one model
    installs, mirroring the loader's fallback: a mirror without EfficientViT still gives
    ``sota_phase3`` a working EfficientNet-B2.
    """
    mdir = _models_dir(settings, models_dir)
    base = mirror or settings.models.mirror or ""
    try:
        mdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(os_error_message(exc, mdir)) from exc
    con = _console()
    err = _console(stderr=True)
    failures: list[str] = []
    warnings: list[str] = []
    done: list[FetchResult] = []
    ph = phase or settings.pipeline.phase
    plans = [] if names else plan_phase(ph, mdir, base, catalog)  # raises on an unknown phase
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=con,  # messages printed on `con` meanwhile appear above the bars
        transient=False,
    ) as progress:
        sink = _RichProgress(progress)

        def one(name: str, errors: list[str]) -> bool:
            spec = catalog.get(name)
            if spec is None:
                errors.append(f"{name}: unknown model; known: {', '.join(sorted(catalog))}")
                return False
            if spec.shipped:
                if all(p.is_file() for p in spec.paths(mdir)):
                    con.print(f"{name}: ships with edged, nothing to fetch")
                    return True
                errors.append(f"{name}: ships with edged but is missing from this install")
                return False
            try:
                results = fetch_model(
                    name, mdir, catalog=catalog, mirror=base, timeout=timeout, progress=sink
                )
            except FetchError as exc:
                errors.append(f"{name}: {exc}")
                return False
            done.extend(results)
            return True

        if names:
            for name in names:
                one(name, failures)
        else:
            con.print(f"fetching the models of phase [bold]{ph}[/] into {mdir}")
            spec_ph = PHASES[ph]
            for chain, plan in zip((spec_ph.detectors, spec_ph.classifiers), plans, strict=True):
                errors: list[str] = []
                for name in plan:
                    if one(name, errors):
                        break
                usable = catalogue_status(mdir, catalog)["models"]
                if any(m["usable"] for m in usable if m["name"] in chain):
                    # A fallback in the chain works: the daemon runs; say what was missed.
                    warnings.extend(errors)
                else:
                    failures.extend(errors)
                    failures.append(
                        f"phase {ph}: no model of the chain {' → '.join(chain)} is installed; "
                        + _chain_hint(chain, catalog)
                    )
    for r in done:
        verb = "downloaded" if r.downloaded else "already installed"
        how = {"catalogue": "catalogue hash", "recorded": "recorded hash", "new": "hash recorded"}
        con.print(
            f"[green]✓[/] {r.name}: {r.file} {verb} ({_size(r.size)}, sha256 {r.sha256[:16]}…, "
            f"{how[r.verified_by]})"
        )
    for line in warnings:
        err.print(f"[yellow]![/] {escape(line)} (a fallback of the phase is installed)")
    for line in failures:
        err.print(f"[bold red]✗[/] {escape(line)}")
    return 1 if failures else 0


def _chain_hint(chain: Sequence[str], catalog: Mapping[str, ModelSpec]) -> str:
    from edged.models.fetch import no_source_message

    spec = catalog[chain[0]]
    if spec.shipped:
        from edged.models.loader import install_hint

        return f"{spec.name}: {install_hint(spec)}"
    if spec.sources:
        return f"run `edged models fetch {spec.name}` (or use --mirror)"
    return no_source_message(spec)


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyRow:
    name: str
    checksum: str
    load: str
    provider: str
    ok: bool


def _cpu_factory() -> Any:
    from edged.models.providers import SessionFactory

    return SessionFactory(providers=["cpu"])


def check_model(spec: ModelSpec, models_dir: Path, settings: Any) -> tuple[str, str]:
    """Load ``spec`` through the loader on CPU and run it once; ``(result, provider)``.

    The loader validates I/O against the spec; one inference on a blank input proves the
    graph runs (a classifier warms up at load; a detector is called here).
    """
    from edged.models import loader

    factory = _cpu_factory()
    if spec.kind == "detector":
        import numpy as np

        det = loader.load_detector(spec, models_dir, factory, settings.pipeline)
        det(np.zeros((480, 640, 3), np.uint8))
        return "ok", det.provider
    cls = loader.load_classifier(spec, models_dir, factory)
    return "ok", cls.provider


def models_verify(settings: Any, *, names: Sequence[str], models_dir: Path | None) -> int | None:
    """``edged models verify``: checksum + load + I/O check of each installed model.

    Without names every installed model is checked; a named model that is not installed is
    a failure. Exit code 1 when anything fails.
    """
    mdir = _models_dir(settings, models_dir)
    status = {m["name"]: m for m in _read_status(mdir)["models"]}
    for name in names:
        if name not in CATALOG:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    todo = list(names) or [n for n, m in status.items() if m["installed"]]
    rows: list[VerifyRow] = []
    for name in todo:
        m = status[name]
        spec = CATALOG[name]
        if not m["installed"]:
            missing = ", ".join(f["path"] for f in m["files"] if not f["installed"])
            rows.append(VerifyRow(name, "missing", f"not installed: {missing}", "-", False))
            continue
        checksum = m["checksum"]
        if checksum == "mismatch":
            bad = [f for f in m["files"] if f["checksum"] == "mismatch"]
            checksum = "; ".join(
                f"MISMATCH {f['file']}: expected {f['expected_sha256']}, got {f['sha256']}"
                for f in bad
            )
        try:
            load, provider = check_model(spec, mdir, settings)
        except EdgedError as exc:
            load, provider = f"FAILED: {exc}", "-"
        ok = m["checksum"] != "mismatch" and load == "ok"
        rows.append(VerifyRow(name, checksum, load, provider, ok))
    con = _console()
    if not rows:
        con.print(f"no models installed in {mdir}: see `edged models list`")
        return 1
    table = Table(title=f"Verify {mdir}", title_justify="left")
    for col in ("model", "checksum", "load + I/O + inference (CPU)", "provider", "result"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.name,
            escape(r.checksum),
            escape(r.load),
            r.provider,
            "[green]ok[/]" if r.ok else "[bold red]FAIL[/]",
        )
    con.print(table)
    if any(r.checksum == "unrecorded" for r in rows):
        con.print(
            "[yellow]unrecorded[/]: no reference hash for a file placed by hand; "
            "`edged models import FILE --as NAME` records one"
        )
    return 0 if all(r.ok for r in rows) else 1


# --------------------------------------------------------------------------- import


@contextlib.contextmanager
def _staging(models_dir: Path) -> Iterator[Path]:
    """A scratch directory inside ``models_dir`` (same filesystem: the final move is a
    rename), removed afterwards whatever happens."""
    models_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".import-", dir=models_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with src.open("rb") as fin, dst.open("wb") as fout:
            for block in iter(lambda: fin.read(1024 * 1024), b""):
                digest.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise ModelError(f"cannot copy {src} into {dst.parent}: {exc}") from exc
    return digest.hexdigest()


def import_model(
    file: Path, name: str, models_dir: Path, settings: Any, *, part: int = 0
) -> tuple[Path, str, str]:
    """Check ``file`` against catalogue model ``name`` (file ``part``), then place it.

    The file is copied into a staging directory inside the models directory and checked
    there: the loader's I/O validation always; the full loader build (detector/classifier
    object, one inference) when every other file of the model is present. Only a file that
    passes is renamed into the layout, so a failed import leaves the layout untouched.
    Returns ``(destination, sha256, note)``.
    """
    from edged.models import loader

    spec = CATALOG.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    if spec.shipped:
        raise ModelError(f"{name} ships with edged; there is nothing to import")
    if not 0 <= part < len(spec.files):
        raise ModelError(
            f"{name} has {len(spec.files)} file(s); --part must be 0"
            + (f"..{len(spec.files) - 1}" if len(spec.files) > 1 else "")
        )
    if not file.is_file():
        raise ModelError(f"{file} does not exist or is not a file")
    rel = spec.files[part]
    dest = models_dir / rel
    with models_dir_lock(models_dir), _staging(models_dir) as stage:
        staged = stage / rel
        digest = _copy_hashing(file, staged)
        session, _provider = _cpu_factory().create(staged)
        loader.validate_session(spec, part, staged, session)
        del session
        others = [i for i in range(len(spec.files)) if i != part]
        complete = all((models_dir / spec.files[i]).is_file() for i in others)
        if complete:
            for i in others:
                link = stage / spec.files[i]
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((models_dir / spec.files[i]).resolve())
            check_model(spec, stage, settings)
            note = "loaded and ran once on CPU"
        else:
            note = (
                "I/O checked; the full load check runs once the other part(s) are imported "
                "(`edged models verify " + name + "`)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)
        fsync_dir(dest.parent)
        ChecksumStore(models_dir).record(
            rel, digest, dest.stat().st_size, f"import:{file.resolve()}"
        )
    upstream = spec.sources[part].sha256 if part < len(spec.sources) else ""
    if upstream and upstream != digest:
        note += "; it differs from the catalogue's upstream file (fine for your own weights)"
    log.info("model_imported", model=name, file=str(dest), sha256=digest, source=str(file))
    return dest, digest, note


def models_import(
    settings: Any, *, file: Path, name: str, part: int, models_dir: Path | None
) -> int | None:
    """``edged models import FILE --as NAME [--part N]``."""
    mdir = _models_dir(settings, models_dir)
    try:
        dest, digest, note = import_model(file, name, mdir, settings, part=part)
    except OSError as exc:
        raise ModelError(os_error_message(exc, mdir)) from exc
    _console().print(f"[green]✓[/] {name}: {file} → {dest} (sha256 {digest[:16]}…; {note})")
    return 0


# --------------------------------------------------------------------------- cameras


def cameras_probe(settings: Any, *, devices: bool, timeout: float) -> int | None:
    """``edged cameras probe``: open every configured source (and /dev/video*) once.

    Exit 1 when an *enabled* configured camera fails; extra ``/dev/video*`` nodes are
    informational (a USB camera also exposes a metadata node that never gives frames).
    Sources are shown as capture redacts them (no passwords from RTSP URLs).
    """
    from edged.runtime.capture import list_video_devices, probe

    # (camera id or "-", source, width, height, counts for the exit code)
    targets: list[tuple[str, str, int, int, bool]] = [
        (
            cam.id if cam.enabled else f"{cam.id} (disabled)",
            cam.source,
            cam.width,
            cam.height,
            cam.enabled,
        )
        for cam in settings.cameras
    ]
    configured = {t[1] for t in targets}
    if devices:
        targets += [
            ("-", dev, 0, 0, False) for dev in list_video_devices() if dev not in configured
        ]
    con = _console()
    if not targets:
        con.print("no cameras configured and no /dev/video* devices found")
        return 0
    # Sources are independent and each may take the whole timeout: probe them together.
    with ThreadPoolExecutor(max_workers=min(4, len(targets))) as pool:
        results = list(pool.map(lambda t: probe(t[1], timeout, width=t[2], height=t[3]), targets))
    table = Table(title="Cameras", title_justify="left")
    for col in ("camera", "source", "ok", "resolution", "fps", "first frame", "backend", "reason"):
        table.add_column(col, overflow="fold")
    failed = False
    for (label, _source, _w, _h, counts), res in zip(targets, results, strict=True):
        if res.ok:
            table.add_row(
                label,
                escape(res.source),
                "[green]yes[/]",
                f"{res.width}x{res.height}",
                f"{res.fps:g}" if res.fps else "?",
                f"{res.grab_s * 1000:.0f} ms" if res.grab_s is not None else "-",
                res.backend,
                "",
            )
        else:
            failed = failed or counts
            table.add_row(
                label,
                escape(res.source),
                "[bold red]no[/]",
                "-",
                "-",
                "-",
                res.backend,
                escape(res.error or "failed"),
            )
    con.print(table)
    return 1 if failed else 0
