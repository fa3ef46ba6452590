"""The models directory as a store: what is installed, what each phase can run, fetching
what a phase needs, verifying and importing files.

Every function returns frozen dataclasses and prints nothing, so ``edged models ...``
renders the same facts as a table or as JSON, and the tests and the daemon read them
without parsing output. Problems that stop a whole operation (an unknown model name, an
unreadable directory) raise :class:`~edged.errors.EdgedError` subclasses; problems with one
model among several are part of the result, so an operator sees everything wrong in one run.

ONNX Runtime is imported only by the operations that load models (verify, import), so
listing the store stays fast on a Jetson.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from edged.errors import EdgedError, FetchError, ModelError
from edged.models.catalog import CATALOG, PHASES, ModelSpec, PhaseSpec
from edged.models.fetch import (
    ChecksumStore,
    FetchResult,
    ProgressSink,
    fetch_model,
    fsync_dir,
    model_sources,
    models_dir_lock,
    no_source_message,
    os_error_message,
    sha256_file,
)

if TYPE_CHECKING:
    from edged.config import PipelineSettings
    from edged.models.providers import SessionFactory

log = structlog.get_logger(__name__)

#: Checksum states of one installed file.
#: ok: matches the hash recorded at install or the catalogue's; mismatch: it does not;
#: unrecorded: no reference hash (placed by hand); shipped: part of the edged package;
#: missing: not installed.
ChecksumState = Literal["ok", "mismatch", "unrecorded", "shipped", "missing"]
CHECKSUM_STATES: tuple[ChecksumState, ...] = ("ok", "mismatch", "unrecorded", "shipped", "missing")


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class FileStatus:
    """One file of a model in the store."""

    file: str
    path: Path
    installed: bool
    size: int | None = None
    sha256: str | None = None
    checksum: ChecksumState = "missing"
    expected_sha256: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """One catalogue model: its files and whether the loader could use it."""

    name: str
    kind: str
    description: str
    phases: tuple[str, ...]
    files: tuple[FileStatus, ...]
    installed: bool
    #: All files installed and none with a checksum mismatch.
    usable: bool
    #: The worst state among the files.
    checksum: ChecksumState
    size: int | None
    size_hint: int | None
    shipped: bool
    downloadable: bool
    license: str


@dataclass(frozen=True)
class PhaseStatus:
    """A phase: the model of each chain the loader would pick (None: none usable)."""

    name: str
    usable: bool
    detector: str | None
    classifier: str | None
    detectors: tuple[str, ...]
    classifiers: tuple[str, ...]


@dataclass(frozen=True)
class StoreStatus:
    """What is installed in a models directory and which phases can run."""

    models_dir: Path
    models: tuple[ModelStatus, ...]
    phases: tuple[PhaseStatus, ...]

    @property
    def usable_phases(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases if p.usable)

    def model(self, name: str) -> ModelStatus:
        """The status of catalogue model ``name`` (KeyError for a name not in it)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def _phases_of(name: str, phases: Mapping[str, PhaseSpec]) -> tuple[str, ...]:
    return tuple(p.name for p in phases.values() if name in p.detectors or name in p.classifiers)


def file_status(
    spec: ModelSpec, index: int, models_dir: Path, records: Mapping[str, Mapping[str, Any]]
) -> FileStatus:
    """Installed?, size, hash and checksum state of file ``index`` of ``spec``."""
    rel = spec.files[index]
    path = spec.paths(models_dir)[index]
    if not path.is_file():
        return FileStatus(rel, path, installed=False)
    size = path.stat().st_size
    actual = sha256_file(path)
    if spec.shipped:
        return FileStatus(rel, path, True, size, actual, "shipped")
    source = spec.sources[index] if index < len(spec.sources) else None
    # The record wins: it is what was verified and placed here (an imported own model may
    # legitimately differ from the upstream file the catalogue hash describes).
    recorded = records.get(rel, {}).get("sha256", "")
    expected = recorded or (source.sha256 if source is not None else "")
    state: ChecksumState = (
        "unrecorded" if not expected else ("ok" if actual == expected else "mismatch")
    )
    return FileStatus(rel, path, True, size, actual, state, expected or None)


def _model_status(
    spec: ModelSpec,
    models_dir: Path,
    records: Mapping[str, Mapping[str, Any]],
    phases: Mapping[str, PhaseSpec],
) -> ModelStatus:
    files = tuple(file_status(spec, i, models_dir, records) for i in range(len(spec.files)))
    installed = all(f.installed for f in files)
    states = {f.checksum for f in files}
    worst: tuple[ChecksumState, ...] = ("mismatch", "missing", "unrecorded", "shipped")
    checksum: ChecksumState = next((s for s in worst if s in states), "ok")
    return ModelStatus(
        name=spec.name,
        kind=spec.kind,
        description=spec.description,
        phases=_phases_of(spec.name, phases),
        files=files,
        installed=installed,
        usable=installed and checksum != "mismatch",
        checksum=checksum,
        size=sum(f.size or 0 for f in files) if installed else None,
        size_hint=spec.size_hint or None,
        shipped=spec.shipped,
        downloadable=bool(spec.sources) and not spec.shipped,
        license=spec.license,
    )


def catalogue_status(
    models_dir: Path,
    catalog: Mapping[str, ModelSpec] = CATALOG,
    phases: Mapping[str, PhaseSpec] = PHASES,
) -> StoreStatus:
    """What is installed in ``models_dir`` and which phases can run.

    A model is *usable* when all its files are installed and none has a checksum mismatch;
    a phase is usable when at least one model of its detector chain and one of its emotion
    chain are usable (the loader falls back along the chains).
    """
    records = ChecksumStore(models_dir).load()
    models = tuple(_model_status(s, models_dir, records, phases) for s in catalog.values())
    usable = {m.name for m in models if m.usable}
    rows: list[PhaseStatus] = []
    for ph in phases.values():
        det = next((n for n in ph.detectors if n in usable), None)
        cls = next((n for n in ph.classifiers if n in usable), None)
        rows.append(
            PhaseStatus(
                ph.name, det is not None and cls is not None, det, cls, ph.detectors, ph.classifiers
            )
        )
    return StoreStatus(models_dir, models, tuple(rows))


def read_status(models_dir: Path) -> StoreStatus:
    """:func:`catalogue_status`, with an unreadable directory said plainly (``0750
    edged:edged`` under /var/lib is not readable by other users)."""
    try:
        return catalogue_status(models_dir)
    except OSError as exc:
        raise ModelError(
            f"cannot read {exc.filename or models_dir}: {exc.strerror}; run as the user that "
            f"owns {models_dir} (e.g. `sudo -u edged edged models ...`)"
        ) from exc


# --------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class FetchReport:
    """The outcome of :func:`fetch_models`.

    ``warnings`` are misses a fallback of the phase covers (the daemon runs); ``failures``
    leave something the operator asked for unusable.
    """

    results: tuple[FetchResult, ...]
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def phase_spec(phase: str) -> PhaseSpec:
    """The catalogue phase ``phase``, or a FetchError naming the known ones."""
    if phase not in PHASES:
        raise FetchError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
    return PHASES[phase]


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
    ph = phase_spec(phase)
    status = {m.name: m for m in catalogue_status(models_dir, catalog).models}
    plans: list[list[str]] = []
    for chain in (ph.detectors, ph.classifiers):
        if any(status[n].usable for n in chain if n in status):
            # The first usable model is what runs; nothing more to fetch for this chain
            # unless a better model earlier in the chain can be fetched.
            first_usable = next(i for i, n in enumerate(chain) if status[n].usable)
            better = [n for n in chain[:first_usable] if _fetchable(catalog[n], mirror)]
            plans.append(better[:1])
            continue
        plans.append([n for n in chain if _fetchable(catalog[n], mirror)])
    return plans


class _Fetcher:
    """One fetch run: collects results, notes and per-model errors while models install."""

    def __init__(
        self,
        models_dir: Path,
        catalog: Mapping[str, ModelSpec],
        mirror: str,
        timeout: float,
        progress: ProgressSink | None,
    ) -> None:
        self.models_dir = models_dir
        self.catalog = catalog
        self.mirror = mirror
        self.timeout = timeout
        self.progress = progress
        self.results: list[FetchResult] = []
        self.notes: list[str] = []

    def one(self, name: str, errors: list[str]) -> bool:
        """Install ``name``; on failure append why to ``errors`` and return False."""
        spec = self.catalog.get(name)
        if spec is None:
            errors.append(f"{name}: unknown model; known: {', '.join(sorted(self.catalog))}")
            return False
        if spec.shipped:
            if all(p.is_file() for p in spec.paths(self.models_dir)):
                self.notes.append(f"{name}: ships with edged, nothing to fetch")
                return True
            errors.append(f"{name}: ships with edged but is missing from this install")
            return False
        try:
            results = fetch_model(
                name,
                self.models_dir,
                catalog=self.catalog,
                mirror=self.mirror,
                timeout=self.timeout,
                progress=self.progress,
            )
        except FetchError as exc:
            errors.append(f"{name}: {exc}")
            return False
        self.results.extend(results)
        return True


def fetch_models(
    models_dir: Path,
    *,
    names: Sequence[str] = (),
    phase: str = "",
    mirror: str = "",
    timeout: float = 30.0,
    progress: ProgressSink | None = None,
    catalog: Mapping[str, ModelSpec] = CATALOG,
) -> FetchReport:
    """Install the named models, or (without names) what ``phase`` needs.

    For a phase, each chain (detectors, emotion models) is fetched in order until one model
    installs, mirroring the loader's fallback: a mirror without EfficientViT still gives
    ``sota_phase3`` a working EfficientNet-B2.
    """
    plans = [] if names else plan_phase(phase, models_dir, mirror, catalog)  # unknown phase
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(os_error_message(exc, models_dir)) from exc
    fetcher = _Fetcher(models_dir, catalog, mirror, timeout, progress)
    failures: list[str] = []
    warnings: list[str] = []
    for name in names:
        fetcher.one(name, failures)
    if not names:
        ph = PHASES[phase]
        for chain, plan in zip((ph.detectors, ph.classifiers), plans, strict=True):
            errors: list[str] = []
            for name in plan:
                if fetcher.one(name, errors):
                    break
            status = catalogue_status(models_dir, catalog)
            if any(m.usable for m in status.models if m.name in chain):
                # A fallback in the chain works: the daemon runs; say what was missed.
                warnings.extend(errors)
            else:
                failures.extend(errors)
                failures.append(
                    f"phase {phase}: no model of the chain {' → '.join(chain)} is installed; "
                    + _chain_hint(chain, catalog)
                )
    return FetchReport(
        tuple(fetcher.results), tuple(fetcher.notes), tuple(warnings), tuple(failures)
    )


def _chain_hint(chain: Sequence[str], catalog: Mapping[str, ModelSpec]) -> str:
    spec = catalog[chain[0]]
    if spec.shipped:
        from edged.models.loader import install_hint

        return f"{spec.name}: {install_hint(spec)}"
    if spec.sources:
        return f"run `edged models fetch {spec.name}` (or use --mirror)"
    return no_source_message(spec)


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyRow:
    """One model checked by :func:`verify_models`."""

    name: str
    checksum: ChecksumState
    #: What is wrong with the checksum ("" when nothing is).
    checksum_detail: str
    #: "ok", "not installed: PATHS" or "FAILED: why".
    load: str
    provider: str
    ok: bool


@dataclass(frozen=True)
class VerifyReport:
    models_dir: Path
    rows: tuple[VerifyRow, ...]

    @property
    def ok(self) -> bool:
        """Something was checked and all of it passed."""
        return bool(self.rows) and all(r.ok for r in self.rows)


def _cpu_factory() -> SessionFactory:
    from edged.models.providers import SessionFactory

    return SessionFactory(providers=["cpu"])


def check_model(spec: ModelSpec, models_dir: Path, pipeline: PipelineSettings) -> str:
    """Load ``spec`` through the loader on CPU and run it once; the provider it ran on.

    The loader validates I/O against the spec; one inference on a blank input proves the
    graph runs (a classifier warms up at load; a detector is called here).
    """
    from edged.models import loader

    factory = _cpu_factory()
    if spec.kind == "detector":
        import numpy as np

        det = loader.load_detector(spec, models_dir, factory, pipeline)
        det(np.zeros((480, 640, 3), np.uint8))
        return det.provider
    return loader.load_classifier(spec, models_dir, factory).provider


def _unknown_model(name: str) -> ModelError:
    return ModelError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")


def _verify_one(m: ModelStatus, models_dir: Path, pipeline: PipelineSettings) -> VerifyRow:
    if not m.installed:
        missing = ", ".join(str(f.path) for f in m.files if not f.installed)
        return VerifyRow(m.name, "missing", "", f"not installed: {missing}", "-", False)
    detail = "; ".join(
        f"MISMATCH {f.file}: expected {f.expected_sha256}, got {f.sha256}"
        for f in m.files
        if f.checksum == "mismatch"
    )
    try:
        provider = check_model(CATALOG[m.name], models_dir, pipeline)
        load = "ok"
    except EdgedError as exc:
        load, provider = f"FAILED: {exc}", "-"
    ok = m.checksum != "mismatch" and load == "ok"
    return VerifyRow(m.name, m.checksum, detail, load, provider, ok)


def verify_models(
    models_dir: Path, pipeline: PipelineSettings, names: Sequence[str] = ()
) -> VerifyReport:
    """Checksum + load + I/O check of each installed model (or of ``names``).

    Without names every installed model is checked; a named model that is not installed is
    a failed row.
    """
    for name in names:
        if name not in CATALOG:
            raise _unknown_model(name)
    status = read_status(models_dir)
    todo = list(names) or [m.name for m in status.models if m.installed]
    rows = tuple(_verify_one(status.model(n), models_dir, pipeline) for n in todo)
    return VerifyReport(models_dir, rows)


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportResult:
    name: str
    source: Path
    dest: Path
    sha256: str
    #: How far the file was checked, and whether it differs from the upstream file.
    note: str


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


def _import_spec(name: str, part: int, file: Path) -> ModelSpec:
    spec = CATALOG.get(name)
    if spec is None:
        raise _unknown_model(name)
    if spec.shipped:
        raise ModelError(f"{name} ships with edged; there is nothing to import")
    if not 0 <= part < len(spec.files):
        raise ModelError(
            f"{name} has {len(spec.files)} file(s); --part must be 0"
            + (f"..{len(spec.files) - 1}" if len(spec.files) > 1 else "")
        )
    if not file.is_file():
        raise ModelError(f"{file} does not exist or is not a file")
    return spec


def _check_staged(
    spec: ModelSpec, part: int, stage: Path, models_dir: Path, pipeline: PipelineSettings
) -> str:
    """Check the staged file ``part``: I/O always; the full load when the model is complete
    (the other parts linked in from the layout). Returns how far it got."""
    from edged.models import loader

    staged = stage / spec.files[part]
    session, _provider = _cpu_factory().create(staged)
    loader.validate_session(spec, part, staged, session)
    del session
    others = [i for i in range(len(spec.files)) if i != part]
    if not all((models_dir / spec.files[i]).is_file() for i in others):
        return (
            "I/O checked; the full load check runs once the other part(s) are imported "
            "(`edged models verify " + spec.name + "`)"
        )
    for i in others:
        link = stage / spec.files[i]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((models_dir / spec.files[i]).resolve())
    check_model(spec, stage, pipeline)
    return "loaded and ran once on CPU"


def import_model(
    file: Path, name: str, models_dir: Path, pipeline: PipelineSettings, *, part: int = 0
) -> ImportResult:
    """Check ``file`` against catalogue model ``name`` (file ``part``), then place it.

    The file is copied into a staging directory inside the models directory and checked
    there, so only a file that passes is renamed into the layout and a failed import leaves
    the layout untouched.
    """
    spec = _import_spec(name, part, file)
    rel = spec.files[part]
    dest = models_dir / rel
    try:
        with models_dir_lock(models_dir), _staging(models_dir) as stage:
            digest = _copy_hashing(file, stage / rel)
            note = _check_staged(spec, part, stage, models_dir, pipeline)
            dest.parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).replace(dest)
            fsync_dir(dest.parent)
            ChecksumStore(models_dir).record(
                rel, digest, dest.stat().st_size, f"import:{file.resolve()}"
            )
    except OSError as exc:
        raise ModelError(os_error_message(exc, models_dir)) from exc
    upstream = spec.sources[part].sha256 if part < len(spec.sources) else ""
    if upstream and upstream != digest:
        note += "; it differs from the catalogue's upstream file (fine for your own weights)"
    log.info("model_imported", model=name, file=str(dest), sha256=digest, source=str(file))
    return ImportResult(name, file, dest, digest, note)
