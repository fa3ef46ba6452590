"""The spool sender: one thread that drains the durable spool in id order while connected.

Every event goes to the spool first (:mod:`edged.mqtt.spool`); this thread hands rows to
paho with at most the link's window unacknowledged, and deletes a row only after its
PUBACK. Nothing is ever "sent from memory", so a broker outage, a ``kill -9`` or a reboot
all look the same: the spool still holds every unacknowledged event, and the next
connection sends it. Duplicates are possible (at-least-once); reordering of first
deliveries is not (see :mod:`edged.mqtt.link`). Spooled messages older than
``[privacy] spool_max_age_s`` are dropped before they could be sent.

The thread also does the work the event loop must not wait for: announcing a new
connection and persisting the owned retained topics (SQLite waits on the spool lock that
``put`` holds through an fsync).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from edged.mqtt.link import Link
from edged.mqtt.spool import Spool

log = structlog.get_logger(__name__)


class Sender:
    """Drains ``spool`` through ``link``. Its flags are guarded by ``link.cv``.

    ``announce`` runs first on every new connection, ``rediscover`` when Home Assistant
    asked for discovery again, ``housekeeping`` (persisting the owned topics) every round;
    ``max_age_s`` gives the current ``spool_max_age_s``.
    """

    def __init__(
        self,
        link: Link,
        spool: Spool,
        *,
        announce: Callable[[], None],
        rediscover: Callable[[], None],
        housekeeping: Callable[[], None],
        max_age_s: Callable[[], float],
    ) -> None:
        self.link = link
        self.spool = spool
        self._announce = announce
        self._rediscover = rediscover
        self._housekeeping = housekeeping
        self._max_age_s = max_age_s
        # Held while acknowledged rows leave the spool and their counters move, and by
        # status readers: a drained spool is never seen with its events not yet counted.
        self.ack_lock = threading.Lock()
        self.events_published = 0
        self.events_rejected = 0
        self._stop = False  # guarded by link.cv
        self._discovery_due = False  # guarded by link.cv
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self.link.cv:
            self._stop = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._main, name="edged-mqtt-sender", daemon=True
            )
            self._thread.start()

    def stop(self, deadline: float) -> bool:
        """Stop the thread (waiting until ``deadline``); ``True`` when it has exited."""
        with self.link.cv:
            self._stop = True
            self.link.cv.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():  # pragma: no cover - only if SQLite hangs
                log.warning("mqtt_sender_still_running")
                return False
            self._thread = None
        return True

    def request_discovery(self) -> None:
        with self.link.cv:
            self._discovery_due = True
            self.link.wake = True
            self.link.cv.notify_all()

    def wait_flushed(self, until: float) -> bool:
        """Wait until the spool is empty (all acked) or the connection drops or time is up."""
        link = self.link
        with link.cv:
            link.wake = True
            link.cv.notify_all()
            while True:
                if self.spool.pending() == 0 and not link.acked:
                    return True
                remaining = until - time.monotonic()
                if remaining <= 0 or not link.connected_locked:
                    return False
                link.cv.wait(min(remaining, 0.2))

    def process_acks(self) -> None:
        """Delete acknowledged rows from the spool and count them."""
        acked = self.link.take_acks()
        if not acked:
            return
        rejected = [sid for sid, bad in acked if bad]
        with self.ack_lock:
            self.spool.ack_many([sid for sid, _ in acked])
            with self.link.cv:
                self.events_published += len(acked) - len(rejected)
                self.events_rejected += len(rejected)
                if rejected:
                    self.link.last_error = f"broker rejected {len(rejected)} event(s)"
                self.link.cv.notify_all()
        if rejected:
            log.warning(
                "mqtt_events_rejected",
                count=len(rejected),
                note="the broker refused them (PUBACK reason code); not retried",
            )

    def _main(self) -> None:
        """Drain the spool in order while connected; re-announce state on new connections."""
        link = self.link
        my_gen = -1
        cursor = 0
        while True:
            with link.cv:
                if not link.wake and not self._stop:
                    link.cv.wait(1.0)
                if self._stop:
                    return
                link.wake = False
                gen, connected = link.gen, link.connected_locked
                discovery_due, self._discovery_due = self._discovery_due, False
            try:
                self.process_acks()
                self._expire()
                if connected:
                    if gen != my_gen:
                        my_gen, cursor = gen, 0
                        self._announce()
                    elif discovery_due:
                        self._rediscover()
                    cursor = self._drain(my_gen, cursor)
                self._housekeeping()
            except Exception as exc:  # keep the sender alive through disk/broker trouble
                with link.cv:
                    link.last_error = f"sender: {exc}"
                log.exception("mqtt_sender_error", error=str(exc))
                time.sleep(1.0)

    def _expire(self) -> None:
        """Drop spooled messages older than ``[privacy] spool_max_age_s``."""
        max_age = self._max_age_s()
        if max_age > 0 and self.spool.pending():
            self.spool.expire(max_age)

    def _drain(self, my_gen: int, cursor: int) -> int:
        """Hand spooled rows after ``cursor`` to paho, within the in-flight window."""
        while True:
            with self.link.cv:
                if self._stop:
                    return cursor
            current = self.link.room(my_gen)
            if current is None or current[1] <= 0:
                return cursor
            client, room = current
            self.process_acks()  # keep the spool (and pending count) current while streaming
            self._expire()  # an expired row is never handed to paho
            rows = self.spool.peek(room, after=cursor)
            if not rows:
                return cursor
            for row in rows:
                if not self.link.send_row(client, my_gen, row):
                    return cursor
                cursor = row.id
