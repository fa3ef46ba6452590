"""The one way events enter the spool: the privacy gate and the writer thread.

**Privacy is enforced again here** (:mod:`edged.privacy`): events are minimised before
they are encoded, per-person events are refused in aggregate mode, and the events already
waiting in the spool are re-shaped (or dropped) when the settings tighten — what was
recorded under looser settings must not leave under the new ones.

One lock is held from an event's privacy check to its spool write, and while the settings
change with the spool re-shaped, so no event checked under the old settings lands in the
spool after the re-shaping for the new ones. Writes from the event loop go through one
worker thread, so their order is kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import structlog

from edged.config import PrivacySettings, Settings
from edged.contracts.events import EmotionEvent, json_bytes
from edged.errors import SpoolError
from edged.mqtt.spool import Spool, SpoolRow, spool_path
from edged.privacy import minimise_event, minimise_spooled_event, per_person_allowed

log = structlog.get_logger(__name__)

T = TypeVar("T")


def open_spool(settings: Settings) -> Spool:
    """The spool file of these settings, with their bounds."""
    return Spool(
        spool_path(settings.device.state_dir),
        max_events=settings.mqtt.spool_max_events,
        max_bytes=settings.mqtt.spool_max_bytes,
    )


def minimise_spool(spool: Spool, privacy: PrivacySettings) -> None:
    """Re-shape the events waiting in ``spool`` for ``privacy`` (dropped in aggregate mode):
    what was recorded under looser settings must not leave under the new ones."""
    if spool.closed or spool.pending() == 0:
        return
    if per_person_allowed(privacy) and privacy.publish_boxes and privacy.publish_scores:
        return  # nothing an event could lose: do not read the whole spool for nothing

    def shape(row: SpoolRow) -> bytes | None:
        if not row.topic.endswith("/event"):
            return row.payload
        return minimise_spooled_event(row.payload, privacy)

    try:
        rewritten, dropped = spool.rewrite(shape)
    except SpoolError as exc:
        log.error("spool_not_minimised", error=str(exc))
        return
    if rewritten or dropped:
        log.info("spool_minimised", rewritten=rewritten, dropped=dropped, mode=privacy.mode)


class SpoolGate:
    """Owns the spool (opened here unless given), the privacy settings in force and the
    worker thread; ``on_put`` is called after each write (the sender's wake-up)."""

    def __init__(self, settings: Settings, spool: Spool | None, on_put: Callable[[], None]) -> None:
        self._settings = settings
        self._privacy = settings.privacy
        self._lock = threading.Lock()
        self._owns_spool = spool is None
        self.spool = spool if spool is not None else open_spool(settings)
        self._on_put = on_put
        self._executor: ThreadPoolExecutor | None = None

    @property
    def privacy(self) -> PrivacySettings:
        return self._privacy

    def reopen(self) -> bool:
        """Open the spool again if a stop closed it; ``True`` when it did."""
        if not self.spool.closed:
            return False
        self.spool = open_spool(self._settings)
        self._owns_spool = True
        return True

    def minimise(self) -> None:
        """Re-shape what waits in the spool for the settings in force (at start)."""
        minimise_spool(self.spool, self._privacy)

    def update(self, settings: Settings, on_privacy: Callable[[PrivacySettings], None]) -> None:
        """Apply reloaded settings: spool bounds in place; tightened privacy re-shapes the
        spool under the gate's lock, with ``on_privacy`` told first. The spool file stays
        where it was opened: a new ``state_dir`` needs a restart."""
        if settings.device.state_dir != self._settings.device.state_dir:
            log.warning(
                "spool_state_dir_change_ignored",
                running=str(self._settings.device.state_dir),
                configured=str(settings.device.state_dir),
                note="takes effect after a restart",
            )
        self.spool.set_limits(
            max_events=settings.mqtt.spool_max_events, max_bytes=settings.mqtt.spool_max_bytes
        )
        self._settings = settings
        if settings.privacy != self._privacy:
            with self._lock:
                self._privacy = settings.privacy
                on_privacy(settings.privacy)
                minimise_spool(self.spool, settings.privacy)

    def put_event(self, topic: str, camera_id: str, event: EmotionEvent) -> int:
        """Spool an event minimised for the privacy in force; ``0`` in aggregate mode."""
        with self._lock:
            privacy = self._privacy
            if not per_person_allowed(privacy):
                log.debug("event_not_published", camera=camera_id, reason="privacy.mode aggregate")
                return 0
            return self.put(topic, json_bytes(minimise_event(event, privacy).to_json()))

    def put(self, topic: str, payload: bytes) -> int:
        """Spool a payload at QoS 1 (fsync'ed) and wake the sender; returns its spool id."""
        row_id = self.spool.put(topic, payload, qos=1)
        self._on_put()
        return row_id

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run a spool write on the one worker thread, so writes from the loop keep order."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-spool")
        return self._executor.submit(fn, *args)

    def shut_down(self) -> None:
        """Wait for the writes already queued, and take no more on this worker."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def close(self) -> None:
        """Close the spool if this gate opened it (a given spool is its owner's to close)."""
        if self._owns_spool:
            self.spool.close()
