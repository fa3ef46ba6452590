"""The durable event spool: FIFO, bounds with counted oldest-first drops, durability across
reopen and ``kill -9``, corrupt-file recovery, and thread safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edged.errors import SpoolError
from edged.mqtt.spool import SPOOL_FILENAME, Spool, spool_path


def _spool(tmp_path: Path, max_events: int = 100_000, max_bytes: int = 1 << 26) -> Spool:
    return Spool(tmp_path / SPOOL_FILENAME, max_events=max_events, max_bytes=max_bytes)


def test_put_peek_ack_is_fifo_by_id(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    ids = [spool.put(f"t/{i}", f"p{i}".encode(), qos=1) for i in range(5)]
    assert ids == sorted(ids)
    rows = spool.peek(10)
    assert [r.id for r in rows] == ids
    assert [r.payload for r in rows] == [f"p{i}".encode() for i in range(5)]
    assert rows[0].topic == "t/0" and rows[0].qos == 1 and rows[0].retain is False
    assert [r.id for r in spool.peek(2, after=ids[1])] == ids[2:4]
    assert spool.ack(ids[0]) is True
    assert spool.ack(ids[0]) is False  # already gone
    assert spool.ack_many([ids[2], ids[3], 999_999]) == 2
    assert [r.id for r in spool.peek(10)] == [ids[1], ids[4]]
    assert spool.pending() == 2
    spool.close()


def test_ids_are_never_reused_after_the_spool_empties(tmp_path: Path) -> None:
    # The publisher's cursor relies on new rows always sorting after acked ones.
    spool = _spool(tmp_path)
    first = spool.put("t", b"a", 1)
    spool.ack(first)
    spool.close()
    spool = _spool(tmp_path)
    assert spool.put("t", b"b", 1) > first
    spool.close()


def test_exceeding_max_events_drops_oldest_first_and_counts_it(tmp_path: Path) -> None:
    spool = _spool(tmp_path, max_events=3)
    for i in range(7):
        spool.put("t", f"e{i}".encode(), 1)
    assert [r.payload for r in spool.peek(10)] == [b"e4", b"e5", b"e6"]
    assert spool.pending() == 3
    assert spool.dropped() == 4


def test_exceeding_max_bytes_drops_oldest_first_and_counts_it(tmp_path: Path) -> None:
    # Each row is 1 (topic) + 99 (payload) = 100 bytes; 350 bytes hold three.
    spool = _spool(tmp_path, max_bytes=350)
    for i in range(6):
        spool.put("t", bytes([65 + i]) * 99, 1)
    rows = spool.peek(10)
    assert [r.payload[:1] for r in rows] == [b"D", b"E", b"F"]
    assert spool.pending_bytes() == 300
    assert spool.dropped() == 3


def test_a_message_larger_than_max_bytes_is_dropped_and_counted_not_stored(
    tmp_path: Path,
) -> None:
    spool = _spool(tmp_path, max_bytes=100)
    keep = spool.put("t", b"small", 1)
    assert spool.put("t", b"x" * 200, 1) == 0
    assert [r.id for r in spool.peek(10)] == [keep]
    assert spool.dropped() == 1


def test_rows_and_drop_counter_survive_reopen(tmp_path: Path) -> None:
    spool = _spool(tmp_path, max_events=2)
    for i in range(4):
        spool.put("t", f"e{i}".encode(), 1, retain=i == 3)
    spool.close()
    again = _spool(tmp_path, max_events=2)
    rows = again.peek(10)
    assert [r.payload for r in rows] == [b"e2", b"e3"]
    assert rows[1].retain is True
    assert again.dropped() == 2
    assert again.pending() == 2
    again.close()


def test_reopening_with_smaller_bounds_trims_oldest_and_counts(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for i in range(5):
        spool.put("t", f"e{i}".encode(), 1)
    spool.close()
    small = _spool(tmp_path, max_events=2)
    assert [r.payload for r in small.peek(10)] == [b"e3", b"e4"]
    assert small.dropped() == 3
    small.set_limits(max_events=1, max_bytes=10_000)
    assert [r.payload for r in small.peek(10)] == [b"e4"]
    assert small.dropped() == 4


def test_put_is_durable_against_kill_9(tmp_path: Path) -> None:
    """A row ``put`` returned for is on disk even if the process dies right after."""
    script = (
        "import sys, os\n"
        "from pathlib import Path\n"
        "from edged.logs import configure_logging\n"
        "from edged.mqtt.spool import Spool\n"
        "configure_logging('warning', 'json')\n"
        "s = Spool(Path(sys.argv[1]))\n"
        "for i in range(100_000):\n"
        "    s.put('t', b'e%d' % i, 1)\n"
        "    print(i, flush=True)\n"
        "sys.stdin.read()\n"  # wait to be killed with the connection still open
    )
    path = tmp_path / SPOOL_FILENAME
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    acknowledged = 0
    for line in proc.stdout:
        acknowledged = int(line) + 1
        if acknowledged == 25:
            break  # kill it mid-stream, while it keeps writing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert proc.stdin is not None
    proc.stdin.close()
    spool = Spool(path)
    payloads = [r.payload for r in spool.peek(100_000)]
    assert len(payloads) >= acknowledged  # maybe more: puts after the last line we read
    assert payloads == [b"e%d" % i for i in range(len(payloads))]
    spool.close()


def test_concurrent_put_and_ack_from_threads_keeps_rows_and_counts_consistent(
    tmp_path: Path,
) -> None:
    spool = _spool(tmp_path, max_events=10_000)
    per_thread = 60
    put_ids: dict[int, list[int]] = {t: [] for t in range(3)}
    acked: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def producer(tag: int) -> None:
        try:
            for i in range(per_thread):
                put_ids[tag].append(spool.put(f"t/{tag}", f"{tag}-{i}".encode(), 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def acker() -> None:
        try:
            while not stop.is_set():
                ids = [r.id for r in spool.peek(7)]
                assert spool.ack_many(ids) == len(ids)  # the only acker: all still there
                acked.extend(ids)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    producers = [threading.Thread(target=producer, args=(t,)) for t in range(3)]
    ack_thread = threading.Thread(target=acker)
    ack_thread.start()
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    stop.set()
    ack_thread.join()
    assert not errors
    remaining = [r.id for r in spool.peek(10_000)]
    every = sorted(i for ids in put_ids.values() for i in ids)
    assert sorted(acked + remaining) == every  # nothing lost, nothing twice
    assert spool.pending() == len(remaining)
    for ids in put_ids.values():  # FIFO: each producer's rows in its own order
        assert ids == sorted(ids)
    db = sqlite3.connect(spool.path)
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == len(remaining)
    db.close()
    spool.close()


def test_corrupt_file_is_moved_aside_and_a_fresh_spool_starts(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILENAME
    path.write_bytes(b"this is not a database" * 100)
    spool = Spool(path)
    assert spool.pending() == 0
    assert spool.put("t", b"x", 1) >= 1
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")
    spool.close()


def test_corrupt_file_raises_spool_error_naming_it_when_recovery_is_off(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILENAME
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(SpoolError, match=str(path)):
        Spool(path, recover_corrupt=False)


def test_unopenable_location_raises_spool_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(SpoolError, match="not-a-dir"):
        Spool(spool_path(blocker))


def test_closed_spool_raises_spool_error(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(SpoolError, match="closed"):
        spool.put("t", b"x", 1)


def test_key_values_survive_reopen_and_are_replaced_on_set(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    assert spool.get_value("retained_topics") is None
    spool.set_value("retained_topics", '["a"]')
    spool.set_value("retained_topics", '["a","b"]')
    spool.close()
    again = _spool(tmp_path)
    assert again.get_value("retained_topics") == '["a","b"]'
    assert again.pending() == 0  # key-values are not events
    again.close()
