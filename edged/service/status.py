"""What the daemon says about itself: the heartbeat, the health snapshot, the watchdog.

Built from the components as they are now, as the typed contracts of
:mod:`edged.contracts.status` (one ``to_json()`` each, the wire shapes of CONTRACT.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import structlog

from edged import __version__
from edged.config import PrivacySettings
from edged.contracts.status import (
    CameraHeartbeat,
    HealthSnapshot,
    Heartbeat,
    ModelStatus,
    SpoolStatus,
)
from edged.privacy import per_person_allowed
from edged.runtime.tracking import iso_utc
from edged.service.cameras import Cameras, CameraSlot
from edged.service.scheduler import Components, Scheduler
from edged.service.sdnotify import Notifier
from edged.service.workers import wait_any

log = structlog.get_logger(__name__)

#: A running camera whose newest frame is older than this (or than three of its frame
#: intervals, whichever is longer) is reported offline.
STALE_FRAME_S = 5.0


def faces_shown(faces: int | None, privacy: PrivacySettings) -> int | None:
    """The face count a report may carry. In aggregate mode with ``min_faces`` set, a count
    below the minimum is withheld (``None``): no report leaving the device may describe
    fewer people than that, not even by their presence."""
    if not per_person_allowed(privacy) and 0 < (faces or 0) < privacy.min_faces:
        return None
    return faces


class StatusReporter:
    """Heartbeats on MQTT, snapshots for /health, watchdog pings for systemd."""

    def __init__(
        self,
        components: Components,
        cameras: Cameras,
        scheduler: Scheduler,
        notifier: Notifier,
        stop: asyncio.Event,
    ) -> None:
        self.c = components
        self.cameras = cameras
        self.scheduler = scheduler
        self.notifier = notifier
        self._stop = stop
        #: What each camera's retained ``status`` says now (published on change only).
        self._online: dict[str, bool] = {}
        #: Set (on the loop) each time the publisher has announced itself on a connection.
        self._announced = asyncio.Event()

    def publisher_online(self) -> None:
        """The publisher has just said ``online`` on a new connection: send the heartbeat
        now, not at the loop's next poll (a short connection may end before it)."""
        self._announced.set()

    def camera_produced(self, cam_id: str) -> None:
        """A frame of ``cam_id`` was just processed: if its retained ``status`` does not say
        ``online`` yet, re-evaluate availability now, so the status goes out before the
        frame's events (same connection, published first) rather than at the next poll."""
        if self._online.get(cam_id) is not True and (slot := self.cameras.get(cam_id)) is not None:
            self._announce_availability(cam_id, slot)

    async def heartbeat_loop(self) -> None:
        """Every ``heartbeat_s``, and at once after (re)connecting, so nobody waits 30 s."""
        last = 0.0
        while not self._stop.is_set():
            announced = self._announced.is_set()
            self._announced.clear()
            if self.c.publisher is not None:
                connected = self.c.publisher.connected
                now = time.monotonic()
                due = now - last >= self.c.settings.mqtt.heartbeat_s
                if connected and (due or announced):
                    self.c.publisher.publish_heartbeat(self.heartbeat().to_json())
                    last = now
                self.publish_camera_availability()
            interval = min(self.c.settings.mqtt.heartbeat_s, 0.5)
            await wait_any((self._stop, self._announced), interval)

    def publish_camera_availability(self) -> None:
        """Each camera's retained ``<camera>/status``: ``online`` while it is producing
        frames (running, newest frame younger than :data:`STALE_FRAME_S` or three frame
        intervals), so Home Assistant shows a dead camera's entities as unavailable while
        the others stay. Sent on change; the publisher re-sends it after reconnecting."""
        if self.c.publisher is None:
            return
        slots = dict(self.cameras.items())
        for cam_id in [c for c in self._online if c not in slots]:
            del self._online[cam_id]
        for cam_id, slot in slots.items():
            self._announce_availability(cam_id, slot)

    def _announce_availability(self, cam_id: str, slot: CameraSlot) -> None:
        """Publish ``cam_id``'s availability if it differs from what its retained status
        says (one camera: a frame of one camera re-evaluates only that one)."""
        if self.c.publisher is None:
            return
        st = slot.status()
        age = st.last_frame_age_s
        fps = slot.settings.fps
        online = st.state == "running" and age is not None and age < max(STALE_FRAME_S, 3.0 / fps)
        if self._online.get(cam_id) != online:
            self._online[cam_id] = online
            self.c.publisher.publish_camera_status(cam_id, online)

    async def watchdog_loop(self) -> None:
        """Ping systemd's watchdog only while the loop and the inference thread make progress."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not self._stop.is_set():
            busy_s = self.scheduler.rt.busy_s()
            if busy_s > 4 * interval:
                log.error("watchdog_withheld", reason="inference thread stuck", busy_s=busy_s)
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def inference_busy_s(self) -> float:
        return self.scheduler.rt.busy_s()

    def models(self) -> ModelStatus:
        pipeline = self.c.pipeline
        if pipeline is None:
            return ModelStatus()
        loaded = pipeline.loaded
        fallbacks = [f"{f.kind} {f.name}: {f.reason}" for f in loaded.fallbacks] if loaded else []
        return ModelStatus(dict(pipeline.models), dict(pipeline.providers), tuple(fallbacks))

    def line(self) -> str:
        return f"{len(self.cameras)} camera(s), models {self.models().providers}"

    def heartbeat_camera(self, stats: Mapping[str, Any]) -> dict[str, object]:
        """One camera's heartbeat fields from its figures (as :meth:`heartbeat` writes them)."""
        cam = CameraHeartbeat(
            stats["state"],
            stats["fps_in"],
            stats["fps_processed"],
            faces_shown(stats["faces"], self.c.settings.privacy),
            stats["dropped_frames"],
            stats["last_frame_age_s"],
        )
        return cam.to_json()

    def heartbeat(self) -> Heartbeat:
        mqtt = self.c.publisher.stats() if self.c.publisher else None
        privacy = self.c.settings.privacy
        return Heartbeat(
            ts=iso_utc(time.time()),
            device=self.c.settings.device.id,
            uptime_s=round(time.monotonic() - self.scheduler.rt.started, 1),
            version=__version__,
            phase=self.c.settings.pipeline.phase,
            models=self.models(),
            cameras={
                cid: st.heartbeat(faces_shown(st.faces, privacy))
                for cid, st in self.cameras.status().items()
            },
            spool=SpoolStatus.from_publisher(mqtt),
            mqtt=mqtt,
        )

    def snapshot(self) -> HealthSnapshot:
        """What /health and /metrics read: cheap, taken on the loop, never blocks."""
        mqtt = self.c.publisher.stats() if self.c.publisher else None
        rt = self.scheduler.rt
        return HealthSnapshot(
            uptime_s=time.monotonic() - rt.started,
            version=__version__,
            phase=self.c.settings.pipeline.phase,
            models=self.models(),
            cameras=self.cameras.status(),
            mqtt=mqtt,
            spool=SpoolStatus.from_publisher(mqtt),
            inference_busy_s=rt.busy_s(),
            inference=rt.inference_status(),
        )


__all__ = ["StatusReporter", "faces_shown"]
