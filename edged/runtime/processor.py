"""One camera's path from frames to events, doing only the work that changes the events.

The daemon's per-camera path without MQTT and without asyncio, so the daemon and
``tools/bench_video.py`` run exactly the same code. For each frame of a camera
(:class:`CameraFrame`: image + monotonic and wall time) a :class:`CameraProcessor`

1. **detects** faces on every N-th frame (``[pipeline] detect_interval``); on the frames
   between, it carries each track detected last time forward with a constant-velocity prediction of
   its box (and landmarks shifted with it). Only tracks seen by the latest detection are
   carried; one the detector missed is not predicted and leaves after
   ``[smoothing] track_timeout_s`` like any unseen track, never earlier;
2. **matches** the boxes to the tracker's tracks (:meth:`Tracker.match`, no state change),
   so the schedule can decide per track *before* anything is classified;
3. asks the :class:`~edged.runtime.scheduling.ClassifySchedule` which faces are due
   (on predicted frames too, cropped by the carried box and landmarks);
4. classifies only those, in **one** batched call across all cameras of a batch
   (:func:`process_batch`);
5. feeds the tracker (fresh scores for classified faces, none for reused ones; see the
   scheduling module for why) and returns the events.

Not thread-safe: a processor belongs to one camera, and a batch runs on one thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edged.config import PipelineSettings
from edged.contracts.events import EmotionEvent
from edged.models.detection.base import Detections
from edged.pipeline import (
    ClassifyResult,
    Face,
    FrameResult,
    Image,
    Pipeline,
    face_from,
    select,
)
from edged.runtime.scheduling import ClassifySchedule
from edged.runtime.tracking import Tracker

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CameraFrame:
    """One frame of a camera: BGR image, monotonic capture time, epoch time."""

    image: Image
    ts: float
    wall_ts: float | None = None


@dataclass
class ProcessedFrame:
    """What one frame produced: its faces (reused emotions included), the tracker's events,
    whether the detector ran on it and how many of its faces were classified."""

    result: FrameResult
    events: list[EmotionEvent]
    detected: bool
    classified: int

    @property
    def faces(self) -> list[Face]:
        return self.result.faces


@dataclass
class _Motion:
    """A track's box at the latest detection, and its velocity (pixels per second)."""

    ts: float
    box: FloatArray
    landmarks: FloatArray
    score: float
    velocity: FloatArray = field(default_factory=lambda: np.zeros(4, np.float32))


@dataclass
class _Plan:
    """A frame between steps 3 and 5: its faces, their tracks, which are due."""

    frame: CameraFrame
    det: Detections
    track_ids: list[int]
    due: list[int]
    detected: bool
    detect_s: float


@dataclass(frozen=True)
class _Observation:
    """What the tracker is fed for one face (``scores`` empty: no new evidence)."""

    bbox: tuple[float, float, float, float]
    score: float
    scores: dict[str, float]


class CameraProcessor:
    """Detection interval, box prediction, scheduling and the tracker of one camera."""

    def __init__(self, tracker: Tracker, settings: PipelineSettings) -> None:
        self.tracker = tracker
        self.schedule = ClassifySchedule(settings)
        self.detect_interval = max(settings.detect_interval, 1)
        #: Frames since the last detection (the first frame is always detected).
        self._since_detect = self.detect_interval
        self._motion: dict[int, _Motion] = {}

    def configure(self, settings: PipelineSettings) -> None:
        """New scheduling/interval settings (a reload); tracks and their state are kept."""
        self.schedule.configure(settings)
        self.detect_interval = max(settings.detect_interval, 1)

    def process(self, pipeline: Pipeline, frame: CameraFrame) -> ProcessedFrame:
        """One frame of this camera on its own (a batch of one)."""
        return process_batch(pipeline, [(self, frame)])[0]

    # -- steps, driven by process_batch ---------------------------------------------------

    def plan(self, pipeline: Pipeline, frame: CameraFrame) -> _Plan:
        detect = self._since_detect + 1 >= self.detect_interval
        self._since_detect = 0 if detect else self._since_detect + 1
        t = time.perf_counter()
        det = pipeline.detect([frame.image])[0][0] if detect else self._predict(frame.ts)
        detect_s = time.perf_counter() - t if detect else 0.0
        ids = self.tracker.match(det.boxes.tolist(), frame.ts)
        due: list[int] = []
        # Due faces are classified on predicted frames too (cropped by the carried box and
        # landmarks): a new face or a pending change needs evidence on every frame, or its
        # event comes late; a skipped detection must not mean a skipped classification.
        if pipeline.classifier is not None:
            boxes = det.boxes.tolist()
            due = [
                i
                for i, tid in enumerate(ids)
                if self.schedule.due(tid, boxes[i], frame.ts, self.tracker.unsettled(tid))
            ]
        return _Plan(frame, det, ids, due, detect, detect_s)

    def finish(
        self, plan: _Plan, probs: FloatArray | None, labels: Sequence[str]
    ) -> tuple[list[Face], list[EmotionEvent]]:
        """Faces for the frame and the tracker's events; ``probs`` rows follow ``plan.due``."""
        det, ts = plan.det, plan.frame.ts
        fresh = dict(zip(plan.due, probs if probs is not None else [], strict=True))
        boxes, scores = det.boxes.tolist(), det.scores.tolist()
        faces: list[Face] = []
        observed: list[_Observation] = []
        for i, tid in enumerate(plan.track_ids):
            row = fresh.get(i)
            if row is not None:
                self.schedule.classified(tid, boxes[i], ts, row)
            shown = row if row is not None else self.schedule.last_probs(tid)
            face = face_from(boxes[i], scores[i], det.landmarks[i], labels, shown)
            faces.append(face)
            observed.append(
                _Observation(face.bbox, face.score, face.scores if row is not None else {})
            )
        events = self.tracker.update(observed, ts, plan.frame.wall_ts)
        if plan.detected:
            self._remember(det, plan.track_ids, ts)
        self.schedule.retain(self.tracker.track_ids)
        return faces, events

    # -- box prediction -------------------------------------------------------------------

    def _remember(self, det: Detections, ids: Sequence[int], ts: float) -> None:
        """Update each detected track's box and velocity; undetected tracks are not carried."""
        motion: dict[int, _Motion] = {}
        for i, tid in enumerate(ids):
            box = det.boxes[i].astype(np.float32)
            prev = self._motion.get(tid)
            m = _Motion(ts, box, det.landmarks[i].astype(np.float32), float(det.scores[i]))
            if prev is not None and ts > prev.ts:
                m.velocity = ((box - prev.box) / np.float32(ts - prev.ts)).astype(np.float32)
            motion[tid] = m
        self._motion = motion

    def _predict(self, ts: float) -> Detections:
        """Constant-velocity boxes of the tracks seen at the latest detection, at ``ts``."""
        live = set(self.tracker.track_ids)
        items = [m for tid, m in sorted(self._motion.items()) if tid in live]
        if not items:
            return Detections.empty()
        boxes = np.stack([m.box + m.velocity * np.float32(ts - m.ts) for m in items])
        shift = (boxes[:, :2] + boxes[:, 2:]) / 2 - np.stack(
            [(m.box[:2] + m.box[2:]) / 2 for m in items]
        )
        landmarks = np.stack([m.landmarks for m in items]) + shift[:, None, :]
        scores = np.array([m.score for m in items], np.float32)
        return Detections(boxes.astype(np.float32), scores, landmarks.astype(np.float32))


@dataclass
class BatchPlan:
    """A batch after detection and classification, before the trackers are fed."""

    items: list[tuple[CameraProcessor, CameraFrame]]
    plans: list[_Plan]
    classified: ClassifyResult
    labels: tuple[str, ...]


def plan_batch(
    pipeline: Pipeline, items: Sequence[tuple[CameraProcessor, CameraFrame]]
) -> BatchPlan:
    """Steps 1-4 for one frame of each of several cameras: detect (or predict), match,
    schedule, and classify the due faces of all of them in one call.

    The heavy half, for the inference thread: it reads the trackers (no state change) but
    feeds none of them, so trackers are only ever changed on the caller's side
    (:func:`finish_batch`), where the daemon's event loop also flushes and reconfigures them.
    """
    plans = [proc.plan(pipeline, frame) for proc, frame in items]
    subsets = [select(p.det, p.due) for p in plans]
    cls = pipeline.classify_detections([p.frame.image for p in plans], subsets)
    labels = tuple(pipeline.classifier.labels) if pipeline.classifier is not None else ()
    return BatchPlan(list(items), plans, cls, labels)


def finish_batch(pipeline: Pipeline, batch: BatchPlan) -> list[ProcessedFrame]:
    """Step 5: feed each camera's tracker and return each frame's faces and events."""
    clock = time.perf_counter
    cls, plans, items = batch.classified, batch.plans, batch.items
    t = clock()
    offset = 0
    per_frame: list[tuple[list[Face], list[EmotionEvent]]] = []
    for (proc, _), plan in zip(items, plans, strict=True):
        n = len(plan.due)
        rows = cls.probs[offset : offset + n] if cls.probs is not None else None
        offset += n
        per_frame.append(proc.finish(plan, rows, batch.labels))
    t_post = clock() - t
    shared = {"crop": cls.crop_s, "classify": cls.classify_s, "post": t_post}
    out: list[ProcessedFrame] = []
    for plan, (faces, events) in zip(plans, per_frame, strict=True):
        timings = {"detect": plan.detect_s, **shared, "batch_frames": float(len(items))}
        out.append(
            ProcessedFrame(FrameResult(faces, timings), events, plan.detected, len(plan.due))
        )
    pipeline.stats.record(
        len(items),
        sum(len(p.det) for p in plans),
        cls.calls,
        offset,
        {"detect": sum(p.detect_s for p in plans), **shared},
    )
    return out


def process_batch(
    pipeline: Pipeline, items: Sequence[tuple[CameraProcessor, CameraFrame]]
) -> list[ProcessedFrame]:
    """One frame for each of several cameras: the due faces of all classified in one call
    (:func:`plan_batch` then :func:`finish_batch`, on one thread)."""
    return finish_batch(pipeline, plan_batch(pipeline, items))
