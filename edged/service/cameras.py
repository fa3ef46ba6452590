"""The running cameras: one slot per camera with its capture, tracker and counters.

A slot is what the scheduling loop keeps per camera. :class:`Cameras` starts and stops
them (stops in parallel against one deadline), says which ones a settings change
restarts, and reports each as a :class:`~edged.contracts.status.CameraStatus`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from edged import sources
from edged.config import (
    CameraSettings,
    PipelineSettings,
    PrivacySettings,
    Settings,
    SmoothingSettings,
)
from edged.contracts.status import CameraStatus
from edged.privacy import Aggregator
from edged.runtime.capture import Camera, Frame
from edged.runtime.processor import CameraProcessor
from edged.runtime.tracking import Tracker
from edged.service.workers import in_thread

log = structlog.get_logger(__name__)

#: Seconds one camera's thread gets to stop.
CAMERA_STOP_TIMEOUT_S = 5.0


@dataclass
class CameraSlot:
    """A running camera and everything the loop keeps for it."""

    settings: CameraSettings
    camera: Camera
    tracker: Tracker
    next_due: float = 0.0
    frames_processed: int = 0
    fps_processed: float = 0.0
    last_processed: float = 0.0
    faces: int = 0
    #: Frames dropped because inference raised (a model failing at run time).
    frames_failed: int = 0
    #: Smoothed inference milliseconds per processed frame (None before the first).
    inference_ms: float | None = None
    last_state_key: str = ""
    last_state_at: float = 0.0
    #: Aggregate mode only (``[privacy] mode``): the open interval's counts.
    aggregator: Aggregator | None = None
    #: Detection interval and per-track classification schedule around ``tracker``
    #: (:meth:`processor_for` rebuilds it when the tracker was replaced).
    processor: CameraProcessor | None = None

    def processor_for(self, settings: PipelineSettings) -> CameraProcessor:
        """This camera's processor, on ``tracker`` (a classifier with other labels gets a
        new tracker, and with it a new schedule: its old probabilities mean nothing)."""
        if self.processor is None or self.processor.tracker is not self.tracker:
            self.processor = CameraProcessor(self.tracker, settings)
        return self.processor

    def status(self) -> CameraStatus:
        st = self.camera.stats()
        age = st.get("last_frame_age_s")
        return CameraStatus(
            state=st.get("state"),
            fps_in=round(float(st.get("fps_in") or 0.0), 2),
            fps_processed=round(self.fps_processed, 2),
            faces=self.faces,
            frames_in=st.get("frames_in", 0),
            frames_processed=self.frames_processed,
            frames_failed=self.frames_failed,
            dropped_frames=st.get("dropped_frames", 0),
            last_frame_age_s=round(age, 3) if isinstance(age, float) else age,
            reconnects=st.get("reconnects", 0),
            last_error=st.get("last_error"),
            inference_ms=round(self.inference_ms, 2) if self.inference_ms is not None else None,
        )

    def reconfigure(
        self,
        smoothing: SmoothingSettings,
        privacy: PrivacySettings,
        pipeline: PipelineSettings | None = None,
    ) -> None:
        """New smoothing, privacy and scheduling settings, tracks kept."""
        self.tracker.configure(smoothing, privacy)
        if pipeline is not None and self.processor is not None:
            self.processor.configure(pipeline)
        if self.aggregator is not None:
            self.aggregator.configure(privacy)


TrackerFactory = Callable[[str], Tracker]


class Cameras:
    """The camera slots by id, in the order they were added."""

    def __init__(self) -> None:
        self._slots: dict[str, CameraSlot] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, cam_id: str) -> CameraSlot | None:
        return self._slots.get(cam_id)

    def items(self) -> list[tuple[str, CameraSlot]]:
        """A copy: callers await between slots, and a reload may change the set meanwhile."""
        return list(self._slots.items())

    def slots(self) -> list[CameraSlot]:
        return list(self._slots.values())

    def add(self, cam: CameraSettings, tracker: Tracker, wake: Callable[[Frame], None]) -> None:
        camera = Camera(cam, on_frame=wake)
        camera.start()
        self._slots[cam.id] = CameraSlot(cam, camera, tracker)
        log.info("camera_added", camera=cam.id, source=sources.redact(cam.source), fps=cam.fps)

    async def stop(self, ids: list[str]) -> None:
        """Stop cameras in parallel against one deadline, not one timeout after another."""
        slots = [self._slots.pop(i) for i in ids if i in self._slots]
        await asyncio.gather(
            *(in_thread(slot.camera.stop, CAMERA_STOP_TIMEOUT_S) for slot in slots),
            return_exceptions=True,
        )

    def opened(self) -> bool:
        """No camera is still ``starting`` (READY means cameras were opened)."""
        return all(slot.camera.state != "starting" for slot in self._slots.values())

    def status(self) -> dict[str, CameraStatus]:
        return {cam_id: slot.status() for cam_id, slot in self._slots.items()}


def camera_changes(old: Settings, new: Settings) -> tuple[list[str], list[CameraSettings]]:
    """Cameras to stop (gone or changed) and to start (new or changed); the rest keep
    running, their tracks and counters too."""
    before = {c.id: c for c in old.enabled_cameras()}
    after = {c.id: c for c in new.enabled_cameras()}
    removed = [i for i in before if before[i] != after.get(i)]
    added = [c for i, c in after.items() if c != before.get(i)]
    return removed, added


__all__ = ["CameraSlot", "Cameras", "camera_changes"]
