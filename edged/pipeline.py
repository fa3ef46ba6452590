"""Frames in, faces with emotions out: detection → crop/alignment → one batched classification.

:class:`Pipeline` detects faces in every frame it is given, cuts all faces of all those
frames at the classifier's input size, framed the way that classifier's training faces were
(its :class:`~edged.models.catalog.CropSpec`: a square box window or 5-point alignment, as the
phase's crop mode picks), classifies them in **one** batched call (split only above
``max_batch``), and splits the probabilities back per frame. Batching is the point: an
EfficientNet on a crowd of 150 faces is ~150× cheaper per face as one batch than as 150
calls on a GPU, and still clearly cheaper on a CPU.

The hot path is numpy end to end; the only per-face Python work is building the
:class:`Face` objects the callers consume. Per-stage wall times are kept in
:class:`PipelineStats`, which the daemon reads (from another thread) for its metrics.

The pipeline is synchronous and blocking by design: the daemon runs it in a worker thread
fed by a bounded queue, never on the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from edged.config import Settings
from edged.models.catalog import CropSpec, PhaseCrop
from edged.models.classification import Classifier
from edged.models.crops import face_crops
from edged.models.detection.base import Detections, Detector
from edged.models.detection.common import Limits, OnnxDetector
from edged.models.loader import LoadedModels, resolve
from edged.models.providers import SessionFactory

log = structlog.get_logger(__name__)

Image = npt.NDArray[np.uint8]

#: The stages timed for every :meth:`Pipeline.process` call.
STAGES: tuple[str, ...] = ("detect", "crop", "classify", "post")


@dataclass
class Face:
    """One face: box ``x1, y1, x2, y2`` and 5 landmarks in pixels, and its emotion.

    ``emotion`` is None (and ``scores`` empty) when the pipeline runs detection only.
    """

    bbox: tuple[float, float, float, float]
    score: float
    landmarks: npt.NDArray[np.float32]
    emotion: str | None = None
    confidence: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = self.bbox
        return x1, y1, x2 - x1, y2 - y1

    def to_json(self) -> dict[str, Any]:
        """The contract's face object: ``bbox`` is ``[x, y, w, h]`` in pixels.

        Pixels are rounded to 0.1 and probabilities to 4 decimals: more digits only add
        noise to logs and MQTT payloads.
        """
        x, y, w, h = self.xywh
        classified = self.emotion is not None
        return {
            "bbox": [round(x, 1), round(y, 1), round(w, 1), round(h, 1)],
            "score": round(self.score, 4),
            "landmarks": [[round(float(px), 1), round(float(py), 1)] for px, py in self.landmarks],
            "emotion": self.emotion,
            "confidence": round(self.confidence, 4) if classified else None,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


@dataclass
class FrameResult:
    """The faces of one frame, best detection score first, and the stage times (seconds).

    ``timings["detect"]`` is this frame's own detection time; ``crop``, ``classify`` and
    ``post`` are those of the whole :meth:`Pipeline.process` call the frame was part of
    (those stages run once for all frames), and ``batch_frames`` says how many frames that
    call had.
    """

    faces: list[Face]
    timings: dict[str, float]


@dataclass(frozen=True)
class ClassifyResult:
    """Probabilities of a batch of faces (rows in frame, then face order), calls, times."""

    probs: npt.NDArray[np.float32] | None
    calls: int
    crop_s: float
    classify_s: float


def select(det: Detections, index: Sequence[int]) -> Detections:
    """The faces ``index`` of ``det`` (in that order), e.g. those due for classification."""
    idx = np.asarray(index, dtype=np.intp)
    return Detections(det.boxes[idx], det.scores[idx], det.landmarks[idx])


def face_from(
    box: Sequence[float],
    score: float,
    landmarks: npt.NDArray[np.float32],
    labels: Sequence[str],
    probs: npt.NDArray[np.float32] | None,
) -> Face:
    """One :class:`Face`, with emotion and scores from ``probs`` (None: detection only)."""
    face = Face((float(box[0]), float(box[1]), float(box[2]), float(box[3])), score, landmarks)
    if probs is not None and len(labels):
        top = int(np.argmax(probs))
        face.emotion = labels[top]
        face.confidence = float(probs[top])
        face.scores = dict(zip(labels, probs.tolist(), strict=True))
    return face


class PipelineStats:
    """Counters and per-stage time totals, safe to read from another thread.

    ``classify_calls`` counts classifier invocations (one per ``max_batch`` chunk), so a
    caller can check that a frame's faces really went through in one batch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.frames = 0
        self.faces = 0
        self.classify_calls = 0
        self.classified_faces = 0
        self.largest_batch = 0
        self.totals: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.last: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def record(
        self, frames: int, faces: int, classify_calls: int, batch: int, times: dict[str, float]
    ) -> None:
        with self._lock:
            self.calls += 1
            self.frames += frames
            self.faces += faces
            self.classify_calls += classify_calls
            self.classified_faces += batch if classify_calls else 0
            self.largest_batch = max(self.largest_batch, batch if classify_calls else 0)
            for k, v in times.items():
                self.totals[k] += v
                self.last[k] = v

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter (for metrics and the heartbeat)."""
        with self._lock:
            return {
                "calls": self.calls,
                "frames": self.frames,
                "faces": self.faces,
                "classify_calls": self.classify_calls,
                "classified_faces": self.classified_faces,
                "largest_batch": self.largest_batch,
                "totals_s": dict(self.totals),
                "last_s": dict(self.last),
            }


class Pipeline:
    """Detector + optional classifier + crop mode; see the module docstring.

    ``crop_mode`` picks the classifier's crop of that mode (``model``: its own first one);
    ``crop_margin`` 0 keeps the model's framing, another number grows its window by
    ``1 + 2 * crop_margin`` (for experiments; a model is only right framed its own way).
    """

    def __init__(
        self,
        detector: Detector,
        classifier: Classifier | None,
        crop_mode: PhaseCrop = "model",
        crop_margin: float = 0.0,
        max_batch: int = 64,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.detector = detector
        self.classifier = classifier
        self.crop_mode: PhaseCrop = crop_mode
        self.crop_margin = crop_margin
        self.max_batch = max_batch
        self.stats = PipelineStats()
        #: What :func:`build_pipeline` resolved (phase, fallbacks); None when built directly.
        self.loaded: LoadedModels | None = None

    def reconfigure(self, settings: Settings) -> None:
        """Take the keys applied in place (thresholds, batching) without reloading or
        re-warming a model; the keys that need the models rebuilt are the caller's to check
        (the daemon builds a new pipeline for them)."""
        p = settings.pipeline
        self.crop_margin = p.crop_margin
        self.max_batch = p.max_batch
        if isinstance(self.detector, OnnxDetector):
            default = self.detector.spec.default_threshold
            self.detector.limits = Limits(
                p.det_threshold or default, p.nms_threshold, p.min_face_px, p.max_faces
            )

    @property
    def crop(self) -> CropSpec | None:
        """The classifier's crop for ``crop_mode``, grown by ``crop_margin``; None without one."""
        if self.classifier is None:
            return None
        crop = self.classifier.spec.crop_for(self.crop_mode)
        return crop.zoomed(1 + 2 * self.crop_margin) if self.crop_margin else crop

    @property
    def models(self) -> dict[str, str | None]:
        """``{"detector": name, "classifier": name or None}``."""
        return {
            "detector": self.detector.name,
            "classifier": self.classifier.name if self.classifier is not None else None,
        }

    @property
    def providers(self) -> dict[str, str]:
        """Model name → execution provider actually used."""
        out = {self.detector.name: self.detector.provider}
        if self.classifier is not None:
            out[self.classifier.name] = self.classifier.provider
        return out

    def crops(self, frames: Sequence[Image], dets: Sequence[Detections]) -> Image:
        """All faces of all frames as one (N, S, S, 3) uint8 batch at the classifier's size."""
        crop = self.crop
        assert self.classifier is not None and crop is not None
        size = self.classifier.input_size
        parts: list[Image] = []
        for frame, det in zip(frames, dets, strict=True):
            if len(det) == 0:
                continue
            parts.append(face_crops(frame, det.boxes, det.landmarks, size, crop))
        if not parts:
            return np.zeros((0, size, size, 3), np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def classify(self, crops: Image) -> tuple[npt.NDArray[np.float32], int]:
        """Probabilities for a crop batch, in chunks of at most ``max_batch``; and the calls."""
        assert self.classifier is not None
        n = crops.shape[0]
        if n <= self.max_batch:
            return self.classifier(crops), 1
        chunks = [
            self.classifier(crops[i : i + self.max_batch]) for i in range(0, n, self.max_batch)
        ]
        return np.concatenate(chunks), len(chunks)

    def detect(self, frames: Sequence[Image]) -> tuple[list[Detections], list[float]]:
        """Step 1 of :meth:`process`: the faces of every frame, and each frame's detect time.

        Separate from classification so a caller can decide per face what to classify
        (:mod:`edged.runtime.processor` skips tracked faces whose emotion is settled).
        """
        clock = time.perf_counter
        dets: list[Detections] = []
        times: list[float] = []
        for frame in frames:
            t = clock()
            dets.append(self.detector(frame))
            times.append(clock() - t)
        return dets, times

    def classify_detections(
        self, frames: Sequence[Image], dets: Sequence[Detections]
    ) -> ClassifyResult:
        """Step 2 of :meth:`process`: crop every face of ``dets`` and classify all at once.

        ``dets`` may be any subset of a frame's faces (see :func:`select`); without a
        classifier, or without faces, nothing runs and ``probs`` is None.
        """
        clock = time.perf_counter
        if self.classifier is None or not sum(len(d) for d in dets):
            return ClassifyResult(None, 0, 0.0, 0.0)
        t = clock()
        batch = self.crops(frames, dets)
        t_crop = clock() - t
        t = clock()
        probs, calls = self.classify(batch)
        return ClassifyResult(probs, calls, t_crop, clock() - t)

    def process(self, frames: Sequence[Image]) -> list[FrameResult]:
        """Faces with emotions for every frame, in order (see :class:`FrameResult`)."""
        clock = time.perf_counter
        dets, det_times = self.detect(frames)
        counts = [len(d) for d in dets]
        total = sum(counts)
        cls = self.classify_detections(frames, dets)

        t = clock()
        results = self._faces(dets, counts, cls.probs)
        t_post = clock() - t

        shared = {"crop": cls.crop_s, "classify": cls.classify_s, "post": t_post}
        out = [
            FrameResult(faces, {"detect": dt, **shared, "batch_frames": float(len(frames))})
            for faces, dt in zip(results, det_times, strict=True)
        ]
        self.stats.record(
            len(frames), total, cls.calls, total, {"detect": sum(det_times), **shared}
        )
        return out

    def process_one(self, frame: Image) -> FrameResult:
        return self.process([frame])[0]

    def _faces(
        self,
        dets: Sequence[Detections],
        counts: Sequence[int],
        probs: npt.NDArray[np.float32] | None,
    ) -> list[list[Face]]:
        """Split the batch back into frames and build the Face objects (one pass, lists)."""
        labels = self.classifier.labels if self.classifier is not None else ()
        if probs is not None and len(probs):
            top = probs.argmax(axis=1)
            conf = probs[np.arange(len(probs)), top].tolist()
            emotions = [labels[i] for i in top.tolist()]
            rows = probs.tolist()
        out: list[list[Face]] = []
        offset = 0
        for det, n in zip(dets, counts, strict=True):
            boxes = det.boxes.tolist()
            scores = det.scores.tolist()
            faces: list[Face] = []
            for i in range(n):
                b = boxes[i]
                face = Face((b[0], b[1], b[2], b[3]), scores[i], det.landmarks[i])
                if probs is not None:
                    j = offset + i
                    face.emotion = emotions[j]
                    face.confidence = conf[j]
                    face.scores = dict(zip(labels, rows[j], strict=True))
                faces.append(face)
            offset += n
            out.append(faces)
        return out


def build_pipeline(
    settings: Settings,
    factory: SessionFactory,
    *,
    phase: str | None = None,
    detector: str | None = None,
    classifier: str | None = None,
    models_dir: Path | None = None,
    detect_only: bool = False,
) -> Pipeline:
    """The pipeline the config (and explicit overrides) call for, models resolved with fallback.

    ``pipeline.loaded`` keeps the :class:`~edged.models.loader.LoadedModels` (phase, crop mode,
    smoothing flag, fallbacks taken) for reporting.
    """
    loaded = resolve(
        settings.pipeline,
        models_dir if models_dir is not None else settings.models.dir,
        factory,
        phase=phase,
        detector=detector,
        classifier=classifier,
        with_classifier=not detect_only,
    )
    pipe = Pipeline(
        loaded.detector,
        loaded.classifier,
        crop_mode=loaded.crop,
        crop_margin=settings.pipeline.crop_margin,
        max_batch=settings.pipeline.max_batch,
    )
    pipe.loaded = loaded
    return pipe
