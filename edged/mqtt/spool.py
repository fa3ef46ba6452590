"""A durable, bounded, FIFO on-disk spool for MQTT events (SQLite, stdlib only).

Why SQLite: it gives atomic, crash-safe appends and deletes without a server, in one file
under the state directory, and it is in the standard library on every target (JetPack's
Python included).

Durability choices:

* ``journal_mode=WAL``: a writer never blocks readers, and a commit is one append to the
  write-ahead log instead of rewriting pages.
* :meth:`Spool.put` commits with ``synchronous=FULL``: the WAL is fsync'ed before ``put``
  returns, so an event that ``put`` acknowledged survives ``kill -9`` of the daemon *and* a
  power loss. (WAL with ``NORMAL`` would already survive ``kill -9`` — the data is in the OS
  page cache — but not a power cut, which is what edge boxes on a wall socket see.)
* :meth:`Spool.ack` commits with ``synchronous=NORMAL``: losing an ack on power loss only
  means the broker gets that event once more, which at-least-once delivery allows, and it
  keeps the MQTT network thread away from fsync. The next FULL commit syncs it anyway.

Bounds: ``max_events`` rows and ``max_bytes`` of topic+payload. When a put would exceed
either, the *oldest* rows are dropped in the same transaction, and the number dropped is
added to a counter persisted in the same file, so "events lost to the bound" survives
restarts and is reported in heartbeats and metrics.

Age: with ``[privacy] spool_max_age_s`` set, :meth:`Spool.expire` drops rows older than
that (they count as dropped, and separately as expired), so an emotion record does not
outlive its use while the broker is away. :meth:`Spool.rewrite` re-shapes or drops waiting
rows when the privacy settings tighten. ``secure_delete`` is on: a deleted row's bytes are
overwritten in the database file, not left in a free page.

A file that is not a database or fails SQLite's integrity check is moved aside (kept for
inspection as ``spool.sqlite3.corrupt-<UTC timestamp>``) and a fresh spool is started, with
an error log line naming both files. Refusing to start would turn one damaged file into a
daemon that publishes nothing at all, forever; the damaged file's events are unreadable
anyway. A spool that cannot be opened or written for any other reason (permissions, a
missing or read-only directory, a full disk) raises :class:`~edged.errors.SpoolError`
naming the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import structlog

from edged.errors import SpoolError

log = structlog.get_logger(__name__)

#: File name of the spool inside the state directory.
SPOOL_FILENAME = "spool.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    created REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('expired', 0);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: Row size as the bound counts it: the bytes that would go over the wire, roughly.
_SIZE_SQL = "length(CAST(topic AS BLOB)) + length(payload)"


class SpoolRow(NamedTuple):
    """One spooled message, in FIFO order by ``id``."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


def spool_path(state_dir: Path) -> Path:
    """Where the spool of a daemon with this state directory lives."""
    return state_dir / SPOOL_FILENAME


def _row_size(topic: str, payload: bytes) -> int:
    return len(topic.encode("utf-8")) + len(payload)


# -- the file: connection, lock, counts and the one transaction helper --------------------


def _open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating) the spool file in WAL mode with the schema in place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot create directory: {exc}") from exc
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
    except sqlite3.Error as exc:
        raise SpoolError(f"spool {path}: cannot open: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise SpoolError(f"spool {path}: cannot enable WAL (got {mode!r})")
        # Deleted events (acknowledged, expired) are zeroed, not left in free pages.
        conn.execute("PRAGMA secure_delete=ON")
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise _CorruptError(f"integrity check failed: {check!r}")
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _is_corruption(exc):
            raise _CorruptError(str(exc)) from exc
        raise SpoolError(f"spool {path}: cannot initialise: {exc}") from exc
    except (SpoolError, _CorruptError):
        conn.close()
        raise
    return conn


def _move_aside(path: Path) -> Path:
    """Rename a corrupt spool (and its WAL/SHM side files) out of the way, for inspection."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        path.replace(aside)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.replace(aside.with_name(aside.name + suffix))
    except OSError as exc:
        raise SpoolError(f"spool {path} is corrupt and cannot be moved aside: {exc}") from exc
    return aside


def _connect(path: Path, recover_corrupt: bool) -> sqlite3.Connection:
    """Open the spool; a corrupt file is moved aside and a fresh one started (or refused)."""
    try:
        return _open_connection(path)
    except _CorruptError as exc:
        if not recover_corrupt:
            raise SpoolError(f"spool {path} is corrupt: {exc.reason}") from exc
        aside = _move_aside(path)
        log.error(
            "spool_corrupt_moved_aside",
            path=str(path),
            moved_to=str(aside),
            reason=exc.reason,
            note="events in the corrupt file are not delivered; a fresh spool was started",
        )
        try:
            return _open_connection(path)
        except _CorruptError as again:
            raise SpoolError(f"spool {path}: fresh spool unusable: {again.reason}") from again


class _SpoolFile:
    """The open database, its lock and the in-memory counts kept in step with it.

    Every write goes through :meth:`txn`, so the rules live in one place: the lock is held,
    the counts change in the same critical section as the SQL, and a failed transaction is
    rolled back *and* the counts restored, so memory never disagrees with the file.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, max_events: int, max_bytes: int):
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = conn
        self._sync: str | None = None
        self.count = self.bytes = self.dropped = self.expired = 0
        with self.read("read") as db:
            count, size = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM({_SIZE_SQL}), 0) FROM events"
            ).fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.count, self.bytes = int(count), int(size)
        self.dropped, self.expired = int(meta.get("dropped", 0)), int(meta.get("expired", 0))

    @property
    def closed(self) -> bool:
        return self._conn is None

    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def read(self, verb: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock for a read; an SQLite failure becomes ``cannot <verb>``."""
        with self.lock:
            conn = self.conn()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: cannot {verb}: {exc}") from exc

    @contextlib.contextmanager
    def txn(self, sync: str, verb: str, *, locked: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` at durability ``sync`` (``FULL``/``NORMAL``).

        On any failure (SQLite's, or a caller's callback) the transaction is rolled back
        and the counts are put back as they were; SQLite's failure is raised as
        ``cannot <verb>``. ``locked``: the caller already holds the lock.
        """
        with contextlib.nullcontext() if locked else self.lock:
            conn = self.conn()
            saved = (self.count, self.bytes, self.dropped, self.expired)
            try:
                if self._sync != sync:
                    conn.execute(f"PRAGMA synchronous={sync}")
                    self._sync = sync
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self.count, self.bytes, self.dropped, self.expired = saved
                if isinstance(exc, sqlite3.Error):
                    raise SpoolError(f"spool {self.path}: cannot {verb}: {exc}") from exc
                raise

    def count_dropped(self, conn: sqlite3.Connection, n: int, *, expired: bool = False) -> None:
        """Add ``n`` to the persisted (and in-memory) dropped counter, and expired too."""
        if n <= 0:
            return
        keys = "('dropped', 'expired')" if expired else "('dropped')"
        conn.execute(f"UPDATE meta SET value = value + ? WHERE key IN {keys}", (n,))
        self.dropped += n
        if expired:
            self.expired += n

    def remove(self, conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
        """Run a ``DELETE … RETURNING`` size query and take the rows off the counts."""
        sizes = conn.execute(f"{sql} RETURNING {_SIZE_SQL}", params).fetchall()
        self.count -= len(sizes)
        self.bytes -= sum(int(r[0]) for r in sizes)
        return len(sizes)

    def drop_oldest(self, conn: sqlite3.Connection, keep_id: int | None) -> int:
        """Delete oldest rows until both bounds hold; return how many were dropped.

        Runs inside the caller's transaction and never drops ``keep_id`` (the row just
        inserted, which fits the bounds on its own: ``put`` checked that).
        """
        dropped = 0
        while self.count > self.max_events or self.bytes > self.max_bytes:
            rows = conn.execute(
                f"SELECT id, {_SIZE_SQL} FROM events WHERE id IS NOT ? ORDER BY id LIMIT 512",
                (keep_id,),
            ).fetchall()
            if not rows:
                break
            victims: list[int] = []
            for row_id, size in rows:
                if self.count <= self.max_events and self.bytes <= self.max_bytes:
                    break
                victims.append(int(row_id))
                self.count -= 1
                self.bytes -= int(size)
            conn.executemany("DELETE FROM events WHERE id = ?", [(v,) for v in victims])
            dropped += len(victims)
        self.count_dropped(conn, dropped)
        return dropped

    def log_dropped(self, dropped: int, **why: object) -> None:
        """Say that the bounds dropped the oldest rows (nothing when none were)."""
        if dropped:
            log.warning(
                "spool_dropped_oldest",
                path=str(self.path),
                dropped=dropped,
                dropped_total=self.dropped,
                **why,
            )

    def close(self) -> None:
        with self.lock:
            if self._conn is None:
                return
            try:
                self._conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - close only fails on misuse
                log.warning("spool_close_failed", path=str(self.path), error=str(exc))
            self._conn = None


# -- maintenance: bounds, age and privacy re-shaping ---------------------------------------


class _Maintenance:
    """The spool's housekeeping, apart from the writer's hot path: trimming to the bounds,
    expiring by age and re-shaping waiting rows when privacy settings tighten."""

    def __init__(self, db: _SpoolFile) -> None:
        self._db = db

    def enforce_bounds(self, reason: str, *, locked: bool = False) -> None:
        db = self._db
        with db.txn("FULL", "apply bounds", locked=locked) as conn:
            dropped = db.drop_oldest(conn, None)
        db.log_dropped(dropped, reason=reason)

    def set_limits(self, max_events: int, max_bytes: int) -> None:
        _check_limits(self._db.path, max_events, max_bytes)
        with self._db.lock:
            self._db.max_events, self._db.max_bytes = max_events, max_bytes
            self.enforce_bounds("bounds smaller than the spool on disk", locked=True)

    def expire(self, max_age_s: float, now: float | None) -> int:
        if max_age_s <= 0:
            return 0
        db = self._db
        cutoff = (time.time() if now is None else now) - max_age_s
        with db.txn("FULL", "expire") as conn:
            gone = db.remove(conn, "DELETE FROM events WHERE created < ?", (cutoff,))
            db.count_dropped(conn, gone, expired=True)
        if gone:  # info, not warning: this is the configured behaviour, not a fault
            log.info(
                "spool_expired",
                path=str(db.path),
                expired=gone,
                max_age_s=max_age_s,
                expired_total=db.expired,
            )
        return gone

    def rewrite(self, shape: Callable[[SpoolRow], bytes | None]) -> tuple[int, int]:
        db = self._db
        rewritten = dropped = 0
        with db.txn("FULL", "rewrite") as conn:
            for row in _rows(conn.execute(f"{_ROW_SQL} ORDER BY id")):
                new = shape(row)
                if new is None:
                    dropped += db.remove(conn, "DELETE FROM events WHERE id = ?", (row.id,))
                elif new != row.payload:
                    conn.execute(
                        "UPDATE events SET payload = ? WHERE id = ?", (sqlite3.Binary(new), row.id)
                    )
                    db.bytes += len(new) - len(row.payload)
                    rewritten += 1
            db.count_dropped(conn, dropped)
        return rewritten, dropped


def _check_limits(path: Path, max_events: int, max_bytes: int) -> None:
    if max_events < 1 or max_bytes < 1:
        raise SpoolError(f"spool {path}: max_events and max_bytes must be positive")


_ROW_SQL = "SELECT id, topic, payload, qos, retain FROM events"


def _rows(cursor: sqlite3.Cursor) -> list[SpoolRow]:
    return [SpoolRow(int(i), str(t), bytes(p), int(q), bool(r)) for i, t, p, q, r in cursor]


# -- the spool: what the publisher uses ------------------------------------------------------


class Spool:
    """Durable FIFO of messages waiting for a broker acknowledgement.

    Thread-safe: one SQLite connection guarded by a lock, so the daemon thread can ``put``
    while the MQTT thread ``ack``s. Counts (pending rows and bytes) are kept in memory and
    updated in the same critical section as the SQL, so :meth:`pending` costs nothing.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_events: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        recover_corrupt: bool = True,
    ) -> None:
        _check_limits(path, max_events, max_bytes)
        self.path = path
        self._db = _SpoolFile(path, _connect(path, recover_corrupt), max_events, max_bytes)
        self._lock = self._db.lock
        self._maintenance = _Maintenance(self._db)
        log.info(
            "spool_opened",
            path=str(path),
            pending=self._db.count,
            bytes=self._db.bytes,
            dropped=self._db.dropped,
        )
        # Bounds may have shrunk since the file was written: enforce them now.
        self._maintenance.enforce_bounds("bounds smaller than the spool on disk")

    def put(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Append a message durably (fsync'ed before returning) and return its id.

        When a bound would be exceeded the oldest rows are dropped and counted in the same
        transaction. A message larger than ``max_bytes`` on its own can never fit: it is
        not stored, it is counted as dropped, and ``0`` is returned (ids start at 1).
        """
        db = self._db
        size = _row_size(topic, payload)
        if size > db.max_bytes:
            with db.txn("FULL", "write") as conn:
                db.count_dropped(conn, 1)
            log.warning(
                "spool_dropped_oversize",
                path=str(self.path),
                topic=topic,
                size=size,
                max_bytes=db.max_bytes,
                dropped_total=db.dropped,
            )
            return 0
        with db.txn("FULL", "write") as conn:
            cur = conn.execute(
                "INSERT INTO events (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                (topic, sqlite3.Binary(payload), int(qos), int(retain), time.time()),
            )
            row_id = int(cur.lastrowid or 0)
            db.count += 1
            db.bytes += size
            dropped = db.drop_oldest(conn, row_id)
        db.log_dropped(dropped, max_events=db.max_events, max_bytes=db.max_bytes)
        return row_id

    def peek(self, limit: int, after: int = 0) -> list[SpoolRow]:
        """Up to ``limit`` oldest rows with ``id > after``, in FIFO order; nothing removed."""
        if limit <= 0:
            return []
        with self._db.read("read") as conn:
            return _rows(
                conn.execute(f"{_ROW_SQL} WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
            )

    def ack(self, row_id: int) -> bool:
        """Remove one acknowledged row; ``False`` when it was already gone (dropped/acked)."""
        return self.ack_many([row_id]) == 1

    def ack_many(self, row_ids: list[int]) -> int:
        """Remove acknowledged rows in one transaction; returns how many existed."""
        if not row_ids:
            return 0
        with self._db.txn("NORMAL", "delete") as conn:
            return sum(
                self._db.remove(conn, "DELETE FROM events WHERE id = ?", (row_id,))
                for row_id in row_ids
            )

    def expire(self, max_age_s: float, now: float | None = None) -> int:
        """Drop rows put more than ``max_age_s`` seconds ago (by the wall clock); returns
        how many. They are counted as dropped (the heartbeat's figure) and as expired."""
        return self._maintenance.expire(max_age_s, now)

    def rewrite(self, shape: Callable[[SpoolRow], bytes | None]) -> tuple[int, int]:
        """Re-shape every waiting row in one transaction: ``shape`` returns the new payload
        (the same bytes: unchanged) or ``None`` to drop the row, counted as dropped.
        Returns ``(rewritten, dropped)``. For privacy settings that tightened while events
        waited: they leave under the settings in force when they are sent. If ``shape``
        raises, nothing changes."""
        return self._maintenance.rewrite(shape)

    def set_limits(self, *, max_events: int, max_bytes: int) -> None:
        """Change the bounds (config reload); an over-full spool is trimmed at once."""
        self._maintenance.set_limits(max_events, max_bytes)

    def get_value(self, key: str) -> str | None:
        """A small piece of publisher state kept beside the events (``None`` if unset)."""
        with self._db.read("read") as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_value(self, key: str, value: str) -> None:
        """Store publisher state (e.g. which retained topics it owns) across restarts."""
        with self._db.txn("NORMAL", "write") as conn:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def pending(self) -> int:
        """Rows waiting for an acknowledgement."""
        return self._db.count

    def pending_bytes(self) -> int:
        """Bytes (topic + payload) of the waiting rows, as the ``max_bytes`` bound counts them."""
        return self._db.bytes

    def dropped(self) -> int:
        """Rows dropped by the bounds since the spool file was created (persisted)."""
        return self._db.dropped

    def expired(self) -> int:
        """Rows dropped for their age since the spool file was created (persisted; also
        included in :meth:`dropped`)."""
        return self._db.expired

    @property
    def closed(self) -> bool:
        return self._db.closed

    def close(self) -> None:
        """Close the database; idempotent. Later calls raise :class:`SpoolError`."""
        self._db.close()


class _CorruptError(Exception):
    """Internal: the file exists but is not a usable SQLite database."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text
