"""The scheduling loop: due frames in, one inference batch at a time, events and state out.

One asyncio loop owns the schedule and everything cheap (tracking, smoothing, building
payloads); inference runs on ONE worker thread (:class:`~edged.service.workers.Worker`):
the loop collects the newest frame of every camera that is due under its fps cap and
hands them over as one batch, and never submits the next batch before the previous one
finished, so there is no queue to grow. Every event goes through the publisher's durable
spool first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from edged.config import Settings
from edged.contracts.events import EmotionEvent
from edged.contracts.status import InferenceStatus
from edged.errors import EdgedError
from edged.mqtt.publisher import Publisher
from edged.pipeline import FrameResult, Pipeline
from edged.privacy import Aggregator, per_person_allowed
from edged.runtime.capture import Frame
from edged.runtime.processor import CameraFrame, ProcessedFrame, finish_batch, plan_batch
from edged.runtime.tracking import iso_utc
from edged.service.cameras import Cameras, CameraSlot
from edged.service.health import Metrics
from edged.service.workers import Worker, wait_event

log = structlog.get_logger(__name__)

#: The loop wakes at least this often without frames (to expire tracks of dead cameras).
IDLE_TICK_S = 0.25


@dataclass
class Components:
    """What a reload swaps: the settings in force and the components built from them."""

    settings: Settings
    pipeline: Pipeline | None = None
    publisher: Publisher | None = None


@dataclass
class Runtime:
    """Inference bookkeeping the watchdog and /health read."""

    started: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    inference_failures: int = 0
    last_inference_error: str | None = None
    last_inference_error_at: float | None = None
    last_inference_log: float = 0.0

    def busy_s(self) -> float:
        busy = self.busy_since
        return time.monotonic() - busy if busy is not None else 0.0

    def inference_status(self) -> InferenceStatus:
        at = self.last_inference_error_at
        return InferenceStatus(
            failures=self.inference_failures,
            last_error=self.last_inference_error,
            last_error_age_s=None if at is None else round(time.monotonic() - at, 3),
        )


class Scheduler:
    """Drives the cameras' frames through the pipeline and the results to the publisher."""

    def __init__(
        self,
        components: Components,
        cameras: Cameras,
        metrics: Metrics,
        stop: asyncio.Event,
        frame_ready: asyncio.Event,
    ) -> None:
        self.c = components
        self.cameras = cameras
        self.metrics = metrics
        self.rt = Runtime()
        self._stop = stop
        self._frame_ready = frame_ready
        self._infer: Worker | None = None
        #: Called on the loop with a camera's id after one of its frames was processed and
        #: before its events and state go out (the daemon: camera availability, so a
        #: recovered camera says ``online`` before its first event, not up to a poll later).
        self.on_frame: Callable[[str], None] | None = None

    def close(self) -> None:
        if self._infer is not None:
            self._infer.close()

    async def run(self) -> None:
        """Collect due frames, run one batch at a time on the inference thread."""
        infer = self._infer = self._infer or Worker("edged-infer")
        while not self._stop.is_set():
            # Cleared before looking, so a frame arriving meanwhile wakes the wait below.
            self._frame_ready.clear()
            now = time.monotonic()
            batch: list[tuple[str, CameraSlot, Frame]] = []
            for cam_id, slot in self.cameras.items():
                if now < slot.next_due:
                    continue
                frame = slot.camera.latest()
                if frame is None:
                    continue
                slot.next_due = max(slot.next_due + 1.0 / slot.settings.fps, now)
                batch.append((cam_id, slot, frame))
            pipeline = self.c.pipeline
            if not batch or pipeline is None:
                await self._expire_idle_tracks()
                await self.publish_aggregates()
                await wait_event(self._frame_ready, self._idle_timeout(now))
                continue
            ps = self.c.settings.pipeline
            items = [
                (slot.processor_for(ps), CameraFrame(f.image, f.ts, f.wall_ts))
                for _, slot, f in batch
            ]
            self.rt.busy_since = time.monotonic()
            try:  # detection + classification of the due faces, off the loop
                planned = await infer.run(plan_batch, pipeline, items)
            except EdgedError as exc:  # a model failing at run time must not kill the loop
                self._inference_failed(str(exc), batch)
                await asyncio.sleep(0.5)
                continue
            finally:
                self.rt.busy_since = None
            # Trackers are fed here, on the loop, where reloads also flush and reconfigure them.
            processed = finish_batch(pipeline, planned)
            self._record_inference(pipeline, [p.result for p in processed])
            for (cam_id, slot, _frame), done in zip(batch, processed, strict=True):
                if self.cameras.get(cam_id) is not slot:  # removed or replaced by a reload
                    continue
                _track_latency(slot, done.result, len(batch))
                await self._after_frame(cam_id, slot, done)
            await self._expire_idle_tracks()
            await self.publish_aggregates()

    def _inference_failed(self, error: str, batch: list[tuple[str, CameraSlot, Frame]]) -> None:
        """The batch's frames are dropped and counted; /health reports the error for a while.

        Logged when the error changes and otherwise at most every 10 s (with the count), so a
        model failing on every frame does not flood the journal.
        """
        now = time.monotonic()
        rt = self.rt
        for _, slot, _ in batch:
            slot.frames_failed += 1
        rt.inference_failures += len(batch)
        repeated = error == rt.last_inference_error and now - rt.last_inference_log < 10.0
        rt.last_inference_error = error
        rt.last_inference_error_at = now
        if not repeated:
            rt.last_inference_log = now
            log.error(
                "inference_failed",
                error=error,
                cameras=[c for c, _, _ in batch],
                frames_failed=rt.inference_failures,
            )

    def _idle_timeout(self, now: float) -> float:
        """Until the next camera is due under its fps cap, at most IDLE_TICK_S."""
        future = [s.next_due - now for s in self.cameras.slots() if s.next_due > now]
        return min([IDLE_TICK_S, *future]) if future else IDLE_TICK_S

    async def _expire_idle_tracks(self) -> None:
        """End the tracks of cameras that stopped delivering frames (dead source, EOF).

        A tracker only learns that time passed when it is fed a frame; a camera without
        frames would otherwise keep its faces forever and never send ``left``.
        """
        now = time.monotonic()
        timeout = self.c.settings.smoothing.track_timeout_s
        for cam_id, slot in self.cameras.items():
            if slot.tracker.track_ids and now - slot.last_processed > timeout:
                events = slot.tracker.update([], now, time.time())
                await self.emit_events(cam_id, events)
                self._publish_state(cam_id, slot)

    async def _after_frame(self, cam_id: str, slot: CameraSlot, done: ProcessedFrame) -> None:
        now = time.monotonic()
        if slot.last_processed:
            inst = 1.0 / max(now - slot.last_processed, 1e-6)
            slot.fps_processed = (
                inst if not slot.fps_processed else 0.8 * slot.fps_processed + 0.2 * inst
            )
        slot.last_processed = now
        slot.frames_processed += 1
        slot.faces = len(done.faces)
        if self.on_frame is not None:
            self.on_frame(cam_id)
        events = done.events
        if not per_person_allowed(self.c.settings.privacy):
            # Aggregate mode: the tracker still smooths each face, but only counts leave.
            if slot.aggregator is None:
                slot.aggregator = Aggregator(
                    cam_id, self.c.settings.device.id, self.c.settings.privacy, now
                )
            slot.aggregator.observe(slot.tracker.live_emotions())
            return
        slot.aggregator = None
        await self.emit_events(cam_id, events)
        self._publish_state(cam_id, slot)

    async def publish_aggregates(self, final: bool = False) -> None:
        """Aggregate mode: close every camera's interval that is due (``final``: every one,
        at a stop) and spool its report (none when no frame had ``min_faces`` faces)."""
        now = time.monotonic()
        for cam_id, slot in self.cameras.items():
            agg = slot.aggregator
            if agg is None or not (final or agg.due(now)) or self.c.publisher is None:
                continue
            report = agg.report(now, iso_utc(time.time()))
            if report is None:
                continue
            try:
                await self.c.publisher.publish_aggregate_async(cam_id, report)
            except EdgedError as exc:
                log.error("aggregate_spool_failed", camera=cam_id, error=str(exc))
                continue
            log.info(
                "aggregate_report",
                camera=cam_id,
                frames=report.frames,
                faces=report.faces,
                faces_mean=report.faces_mean,
            )

    def _publish_state(self, cam_id: str, slot: CameraSlot) -> None:
        """Retained emotion/attributes when what they say changed.

        Boxes move a little on every frame; re-publishing a retained message for each
        jitter would flood subscribers, so boxes alone refresh it at most once per
        heartbeat interval.
        """
        emotion, attrs = slot.tracker.state()
        key = json.dumps(
            [
                emotion,
                [(t.track_id, t.emotion, round(t.confidence or 0.0, 1)) for t in attrs.tracks],
            ]
        )
        now = time.monotonic()
        if (
            key == slot.last_state_key
            and now - slot.last_state_at < self.c.settings.mqtt.heartbeat_s
        ):
            return
        if not per_person_allowed(self.c.settings.privacy):
            return
        if self.c.publisher is not None:
            self.c.publisher.publish_state(cam_id, emotion, attrs)
        slot.last_state_key = key
        slot.last_state_at = now

    async def emit_events(self, cam_id: str, events: list[EmotionEvent]) -> None:
        """Spool (fsync, off the loop, in order) and log each event; none in aggregate mode
        (neither sent nor written to the log: a per-person record either way)."""
        if self.c.publisher is None or not per_person_allowed(self.c.settings.privacy):
            return
        for event in events:
            try:
                await self.c.publisher.publish_event_async(cam_id, event)
            except EdgedError as exc:  # spool unwritable: say so loudly, keep running
                log.error("event_spool_failed", camera=cam_id, id=event.id, error=str(exc))
                continue
            log.info(
                "emotion_event",
                id=event.id,
                camera=cam_id,
                track_id=event.track_id,
                type=event.type,
                emotion=event.emotion,
                confidence=event.confidence,
            )

    def _record_inference(self, pipeline: Pipeline, results: list[FrameResult]) -> None:
        """Per-frame detection times, and the batch's crop/classify/post times once."""
        det = pipeline.detector.name
        for result in results:
            self.metrics.observe_inference(det, "detect", result.timings["detect"])
        shared = results[0].timings if results else {}
        if pipeline.classifier is not None and shared.get("classify"):
            cls = pipeline.classifier.name
            self.metrics.observe_inference(cls, "crop", shared["crop"])
            self.metrics.observe_inference(cls, "classify", shared["classify"])
        if shared:
            self.metrics.observe_inference("pipeline", "post", shared["post"])


#: Weight of the newest frame in a camera's smoothed inference latency.
LATENCY_ALPHA = 0.2


def _track_latency(slot: CameraSlot, result: FrameResult, frames: int) -> None:
    """The frame's own detection time plus its share of the batch's shared stages."""
    t = result.timings
    shared = t.get("crop", 0.0) + t.get("classify", 0.0) + t.get("post", 0.0)
    ms = 1000.0 * (t.get("detect", 0.0) + shared / max(frames, 1))
    prev = slot.inference_ms
    slot.inference_ms = ms if prev is None else prev + LATENCY_ALPHA * (ms - prev)


__all__ = ["Components", "Runtime", "Scheduler"]
