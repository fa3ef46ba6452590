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
from collections.abc import Callable
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
        if max_events < 1 or max_bytes < 1:
            raise SpoolError(f"spool {path}: max_events and max_bytes must be positive")
        self.path = path
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sync: str | None = None
        try:
            self._conn = self._open()
        except _CorruptError as exc:
            if not recover_corrupt:
                raise SpoolError(f"spool {path} is corrupt: {exc.reason}") from exc
            aside = self._move_aside()
            log.error(
                "spool_corrupt_moved_aside",
                path=str(path),
                moved_to=str(aside),
                reason=exc.reason,
                note="events in the corrupt file are not delivered; a fresh spool was started",
            )
            try:
                self._conn = self._open()
            except _CorruptError as again:
                raise SpoolError(f"spool {path}: fresh spool unusable: {again.reason}") from again
        self._count, self._bytes, self._dropped = self._load_counts()
        self._expired = self._load_meta("expired")
        log.info(
            "spool_opened",
            path=str(path),
            pending=self._count,
            bytes=self._bytes,
            dropped=self._dropped,
        )
        # Bounds may have shrunk since the file was written: enforce them now.
        with self._lock:
            self._txn_enforce_bounds_on_open()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: cannot create directory: {exc}") from exc
        try:
            conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot open: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise SpoolError(f"spool {self.path}: cannot enable WAL (got {mode!r})")
            # Deleted events (acknowledged, expired) are zeroed, not left in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise _CorruptError(f"integrity check failed: {check!r}")
            conn.executescript(_SCHEMA)
            self._sync = None
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_corruption(exc):
                raise _CorruptError(str(exc)) from exc
            raise SpoolError(f"spool {self.path}: cannot initialise: {exc}") from exc
        except (SpoolError, _CorruptError):
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise SpoolError(
                f"spool {self.path} is corrupt and cannot be moved aside: {exc}"
            ) from exc
        return aside

    def _load_counts(self) -> tuple[int, int, int]:
        try:
            count, size = self._conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM({_SIZE_SQL}), 0) FROM events"
            ).fetchone()
            (dropped,) = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'dropped'"
            ).fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot read: {exc}") from exc
        return int(count), int(size), int(dropped)

    def _load_meta(self, key: str) -> int:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot read: {exc}") from exc
        return int(row[0]) if row is not None else 0

    # -- internals -----------------------------------------------------------------------

    def _conn_or_raise(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self, "_conn", None)
        if conn is None:
            raise SpoolError(f"spool {self.path} is closed")
        return conn

    def _set_sync(self, level: str) -> None:
        if self._sync != level:
            self._conn_or_raise().execute(f"PRAGMA synchronous={level}")
            self._sync = level

    def _drop_oldest(self, conn: sqlite3.Connection, keep_id: int | None) -> int:
        """Delete oldest rows until both bounds hold; return how many were dropped.

        Runs inside the caller's transaction and never drops ``keep_id`` (the row just
        inserted, which fits the bounds on its own: ``put`` checked that).
        """
        dropped = 0
        while self._count > self._max_events or self._bytes > self._max_bytes:
            rows = conn.execute(
                f"SELECT id, {_SIZE_SQL} FROM events WHERE id IS NOT ? ORDER BY id LIMIT 512",
                (keep_id,),
            ).fetchall()
            if not rows:
                break
            victims: list[int] = []
            for row_id, size in rows:
                if self._count <= self._max_events and self._bytes <= self._max_bytes:
                    break
                victims.append(int(row_id))
                self._count -= 1
                self._bytes -= int(size)
            conn.executemany("DELETE FROM events WHERE id = ?", [(v,) for v in victims])
            dropped += len(victims)
        if dropped:
            conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
        return dropped

    def _txn_enforce_bounds_on_open(self) -> None:
        conn = self._conn_or_raise()
        count, size = self._count, self._bytes
        try:
            self._set_sync("FULL")
            conn.execute("BEGIN IMMEDIATE")
            dropped = self._drop_oldest(conn, None)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._count, self._bytes = count, size
            raise SpoolError(f"spool {self.path}: cannot apply bounds: {exc}") from exc
        if dropped:
            self._dropped += dropped
            log.warning(
                "spool_dropped_oldest",
                path=str(self.path),
                dropped=dropped,
                dropped_total=self._dropped,
                reason="bounds smaller than the spool on disk",
            )

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    # -- public API ----------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Append a message durably (fsync'ed before returning) and return its id.

        When a bound would be exceeded the oldest rows are dropped and counted in the same
        transaction. A message larger than ``max_bytes`` on its own can never fit: it is
        not stored, it is counted as dropped, and ``0`` is returned (ids start at 1).
        """
        size = _row_size(topic, payload)
        if size > self._max_bytes:
            with self._lock:
                conn = self._conn_or_raise()
                try:
                    self._set_sync("FULL")
                    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped'")
                except sqlite3.Error as exc:
                    raise SpoolError(f"spool {self.path}: cannot write: {exc}") from exc
                self._dropped += 1
            log.warning(
                "spool_dropped_oversize",
                path=str(self.path),
                topic=topic,
                size=size,
                max_bytes=self._max_bytes,
                dropped_total=self._dropped,
            )
            return 0
        with self._lock:
            conn = self._conn_or_raise()
            count, nbytes = self._count, self._bytes
            try:
                self._set_sync("FULL")
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(
                    "INSERT INTO events (topic, payload, qos, retain, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (topic, sqlite3.Binary(payload), int(qos), int(retain), time.time()),
                )
                row_id = int(cur.lastrowid or 0)
                self._count += 1
                self._bytes += size
                dropped = self._drop_oldest(conn, row_id)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._count, self._bytes = count, nbytes
                raise SpoolError(f"spool {self.path}: cannot write: {exc}") from exc
            if dropped:
                self._dropped += dropped
        if dropped:
            log.warning(
                "spool_dropped_oldest",
                path=str(self.path),
                dropped=dropped,
                dropped_total=self._dropped,
                max_events=self._max_events,
                max_bytes=self._max_bytes,
            )
        return row_id

    def peek(self, limit: int, after: int = 0) -> list[SpoolRow]:
        """Up to ``limit`` oldest rows with ``id > after``, in FIFO order; nothing removed."""
        if limit <= 0:
            return []
        with self._lock:
            conn = self._conn_or_raise()
            try:
                rows = conn.execute(
                    "SELECT id, topic, payload, qos, retain FROM events WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: cannot read: {exc}") from exc
        return [SpoolRow(int(i), str(t), bytes(p), int(q), bool(r)) for i, t, p, q, r in rows]

    def ack(self, row_id: int) -> bool:
        """Remove one acknowledged row; ``False`` when it was already gone (dropped/acked)."""
        return self.ack_many([row_id]) == 1

    def ack_many(self, row_ids: list[int]) -> int:
        """Remove acknowledged rows in one transaction; returns how many existed."""
        if not row_ids:
            return 0
        with self._lock:
            conn = self._conn_or_raise()
            count, nbytes = self._count, self._bytes
            try:
                self._set_sync("NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                removed = 0
                for row_id in row_ids:
                    row = conn.execute(
                        f"DELETE FROM events WHERE id = ? RETURNING {_SIZE_SQL}", (row_id,)
                    ).fetchone()
                    if row is not None:
                        removed += 1
                        self._count -= 1
                        self._bytes -= int(row[0])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._count, self._bytes = count, nbytes
                raise SpoolError(f"spool {self.path}: cannot delete: {exc}") from exc
        return removed

    def expire(self, max_age_s: float, now: float | None = None) -> int:
        """Drop rows put more than ``max_age_s`` seconds ago (by the wall clock); returns
        how many. They are counted as dropped (the heartbeat's figure) and as expired."""
        if max_age_s <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - max_age_s
        with self._lock:
            conn = self._conn_or_raise()
            count, nbytes = self._count, self._bytes
            try:
                self._set_sync("FULL")
                conn.execute("BEGIN IMMEDIATE")
                sizes = conn.execute(
                    f"DELETE FROM events WHERE created < ? RETURNING {_SIZE_SQL}", (cutoff,)
                ).fetchall()
                gone = len(sizes)
                if gone:
                    self._count -= gone
                    self._bytes -= sum(int(r[0]) for r in sizes)
                    conn.execute(
                        "UPDATE meta SET value = value + ? WHERE key IN ('dropped', 'expired')",
                        (gone,),
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._count, self._bytes = count, nbytes
                raise SpoolError(f"spool {self.path}: cannot expire: {exc}") from exc
            if gone:
                self._dropped += gone
                self._expired += gone
        if gone:  # info, not warning: this is the configured behaviour, not a fault
            log.info(
                "spool_expired",
                path=str(self.path),
                expired=gone,
                max_age_s=max_age_s,
                expired_total=self._expired,
            )
        return gone

    def rewrite(self, shape: Callable[[SpoolRow], bytes | None]) -> tuple[int, int]:
        """Re-shape every waiting row in one transaction: ``shape`` returns the new payload
        (the same bytes: unchanged) or ``None`` to drop the row, counted as dropped.
        Returns ``(rewritten, dropped)``. For privacy settings that tightened while events
        waited: they leave under the settings in force when they are sent."""
        rewritten = dropped = 0
        with self._lock:
            conn = self._conn_or_raise()
            count, nbytes = self._count, self._bytes
            try:
                self._set_sync("FULL")
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(
                    "SELECT id, topic, payload, qos, retain FROM events ORDER BY id"
                ).fetchall()
                for i, t, p, q, r in rows:
                    row = SpoolRow(int(i), str(t), bytes(p), int(q), bool(r))
                    new = shape(row)
                    if new is None:
                        conn.execute("DELETE FROM events WHERE id = ?", (row.id,))
                        self._count -= 1
                        self._bytes -= _row_size(row.topic, row.payload)
                        dropped += 1
                    elif new != row.payload:
                        conn.execute(
                            "UPDATE events SET payload = ? WHERE id = ?",
                            (sqlite3.Binary(new), row.id),
                        )
                        self._bytes += len(new) - len(row.payload)
                        rewritten += 1
                if dropped:
                    conn.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,)
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._count, self._bytes = count, nbytes
                raise SpoolError(f"spool {self.path}: cannot rewrite: {exc}") from exc
            except BaseException:  # ``shape`` failed: change nothing
                self._rollback(conn)
                self._count, self._bytes = count, nbytes
                raise
            self._dropped += dropped
        return rewritten, dropped

    def get_value(self, key: str) -> str | None:
        """A small piece of publisher state kept beside the events (``None`` if unset)."""
        with self._lock:
            conn = self._conn_or_raise()
            try:
                row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: cannot read: {exc}") from exc
        return None if row is None else str(row[0])

    def set_value(self, key: str, value: str) -> None:
        """Store publisher state (e.g. which retained topics it owns) across restarts."""
        with self._lock:
            conn = self._conn_or_raise()
            try:
                self._set_sync("NORMAL")
                conn.execute(
                    "INSERT INTO kv (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: cannot write: {exc}") from exc

    def pending(self) -> int:
        """Rows waiting for an acknowledgement."""
        return self._count

    def pending_bytes(self) -> int:
        """Bytes (topic + payload) of the waiting rows, as the ``max_bytes`` bound counts them."""
        return self._bytes

    def dropped(self) -> int:
        """Rows dropped by the bounds since the spool file was created (persisted)."""
        return self._dropped

    def expired(self) -> int:
        """Rows dropped for their age since the spool file was created (persisted; also
        included in :meth:`dropped`)."""
        return self._expired

    def set_limits(self, *, max_events: int, max_bytes: int) -> None:
        """Change the bounds (config reload); an over-full spool is trimmed at once."""
        if max_events < 1 or max_bytes < 1:
            raise SpoolError(f"spool {self.path}: max_events and max_bytes must be positive")
        with self._lock:
            self._max_events = max_events
            self._max_bytes = max_bytes
            self._txn_enforce_bounds_on_open()

    @property
    def closed(self) -> bool:
        return getattr(self, "_conn", None) is None

    def close(self) -> None:
        """Close the database; idempotent. Later calls raise :class:`SpoolError`."""
        with self._lock:
            conn = getattr(self, "_conn", None)
            if conn is None:
                return
            try:
                conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - close only fails on misuse
                log.warning("spool_close_failed", path=str(self.path), error=str(exc))
            self._conn = None  # type: ignore[assignment]


class _CorruptError(Exception):
    """Internal: the file exists but is not a usable SQLite database."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text
