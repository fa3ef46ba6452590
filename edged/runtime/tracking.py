"""Face tracking and temporal smoothing: per-frame classifications in, honest events out.

A classifier's output flickers from frame to frame; a subscriber wants to hear that a person
*became* happy, not that one blurry frame looked angry. Each camera has one :class:`Tracker`
that

1. **matches** this frame's faces to existing tracks greedily by IoU (highest overlap first,
   at least ``iou_threshold``); an unmatched face starts a track with the next integer id of
   this camera (ids only grow, so a subscriber never sees one reused);
2. **smooths** each track's class probabilities, by an exponential moving average (``ema``,
   ``alpha`` = weight of the newest frame) or the mean of the last ``window`` frames;
3. applies **hysteresis**: the reported emotion of a track only changes once the top label of
   the *smoothed* distribution has stayed on top for at least ``min_dwell_s`` *and* its
   smoothed probability is at least ``min_confidence``. A single noisy frame can flip the top
   label for one instant only, so it never satisfies the dwell and never makes an event.

Events (the contract's payload, ``schema`` 1, typed as
:class:`~edged.contracts.events.EmotionEvent`):

* ``appeared`` — when a track's *first* emotion is established, i.e. at the first moment its
  smoothed top label satisfies dwell and confidence (not when the box is first seen: a face
  without an established emotion has nothing to report). ``previous`` is ``null``,
  ``duration_s`` is 0.
* ``changed`` — the established emotion changed; ``previous`` is the old one and
  ``duration_s`` is how long the old emotion was held (from its establishment until now).
* ``left`` — the track was unseen for ``track_timeout_s`` (or :meth:`Tracker.flush` ended it);
  carries the last established emotion with its smoothed scores, ``previous`` ``null``,
  ``bbox`` the last box, and ``duration_s`` = the track's lifetime (first to last sighting).
  A track that never established an emotion leaves silently, as it never appeared.

Faces without scores (no classifier) are tracked and counted in :meth:`Tracker.state` but
establish no emotion and so make no events.

With ``smoothing.enabled = false`` (``sota_phase1``, ``current``) the raw per-frame
distribution is used with no dwell; ``min_confidence`` still applies.

The ``[privacy]`` settings shape events and attributes here, where they are built:
``publish_boxes = false`` leaves out every ``bbox``, ``publish_scores = false`` an event's
``scores`` (see :mod:`edged.privacy`).

Everything is deterministic given the inputs: time comes in as arguments (``ts`` monotonic
seconds for dwell/timeouts, ``wall_ts`` epoch seconds for the event's ``ts`` field); only the
event ids are random (uuid4), and ``wall_ts`` defaults to ``time.time()`` when omitted.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edged.config import PrivacySettings, SmoothingSettings
from edged.contracts.events import BoxXYWH, EmotionEvent, EventType, StateAttributes, TrackState
from edged.models.catalog import CANONICAL_LABELS
from edged.privacy import minimise_attributes, minimise_event

FloatVec = npt.NDArray[np.float64]

#: Decimal places of confidences and scores in events (enough to rank, short on the wire).
_ROUND = 4

#: Tolerance of dwell/timeout comparisons, so 4.1 - 3.1 (0.9999999999999996) counts as 1 s.
_EPS_S = 1e-6


class FaceLike(Protocol):
    """What the tracker needs from one classified face of a frame."""

    @property
    def bbox(self) -> Sequence[float]:
        """``x1, y1, x2, y2`` in pixels."""
        ...

    @property
    def scores(self) -> Mapping[str, float]:
        """Canonical label → probability; empty when no classifier ran."""
        ...

    @property
    def score(self) -> float:
        """Detector confidence."""
        ...


@dataclass
class _Track:
    track_id: int
    bbox: tuple[float, float, float, float]
    first_seen: float
    last_seen: float
    #: Smoothed distribution over the tracker's label vector (None until scores arrive).
    smoothed: FloatVec | None = None
    window: deque[FloatVec] = field(default_factory=deque)
    candidate: str | None = None
    candidate_since: float = 0.0
    emotion: str | None = None
    emotion_since: float = 0.0
    confidence: float = 0.0
    #: Top label of the newest fresh scores (not smoothed): when it disagrees with the
    #: established emotion, the track needs fresh evidence on every frame until it settles.
    latest_top: str | None = None


def iso_utc(wall_ts: float) -> str:
    """Epoch seconds → ISO-8601 UTC with millisecond precision and a ``Z``."""
    dt = datetime.fromtimestamp(wall_ts, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatVec:
    """Pairwise IoU of ``x1, y1, x2, y2`` boxes: (N, 4) x (M, 4) → (N, M)."""
    aa = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    bb = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if aa.size == 0 or bb.size == 0:
        return np.zeros((aa.shape[0], bb.shape[0]))
    x1 = np.maximum(aa[:, None, 0], bb[None, :, 0])
    y1 = np.maximum(aa[:, None, 1], bb[None, :, 1])
    x2 = np.minimum(aa[:, None, 2], bb[None, :, 2])
    y2 = np.minimum(aa[:, None, 3], bb[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (aa[:, 2] - aa[:, 0]).clip(0) * (aa[:, 3] - aa[:, 1]).clip(0)
    area_b = (bb[:, 2] - bb[:, 0]).clip(0) * (bb[:, 3] - bb[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    out: FloatVec = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def greedy_match(iou: FloatVec, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by descending IoU, each row and column used once, IoU >= threshold.

    Greedy rather than Hungarian: faces in one frame rarely overlap, where greedy and optimal
    agree, and it needs no SciPy on the device. Ties break by index, so it is deterministic.
    """
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    rows, cols = np.nonzero(iou >= threshold)
    order = sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda rc: (-iou[rc], rc))
    used_r: set[int] = set()
    used_c: set[int] = set()
    for r, c in order:
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


class Tracker:
    """Tracks faces of one camera and turns their smoothed emotions into contract events.

    Not thread-safe: one tracker belongs to one camera's processing path.
    """

    def __init__(
        self,
        settings: SmoothingSettings,
        camera_id: str,
        device_id: str,
        labels: tuple[str, ...] | None = None,
        privacy: PrivacySettings | None = None,
    ) -> None:
        self.camera_id = camera_id
        self.privacy = privacy if privacy is not None else PrivacySettings()
        self.device_id = device_id
        #: Fixed label order of the smoothed vectors; scores for other labels are ignored.
        self.labels: tuple[str, ...] = labels if labels is not None else CANONICAL_LABELS
        self._fixed_labels = labels is not None
        #: Labels any input carried: events report only these (a 7-class model never
        #: reports ``contemptuous``).
        self._seen: set[str] = set(self.labels) if labels is not None else set()
        self._settings = settings
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._last_ts = float("-inf")

    @property
    def settings(self) -> SmoothingSettings:
        return self._settings

    def configure(
        self, settings: SmoothingSettings, privacy: PrivacySettings | None = None
    ) -> None:
        """Apply new smoothing settings (a reload) without losing tracks or their emotions.

        The smoothed state carries over: a window is re-seeded from the current smoothed
        vector, so switching method or window length does not restart the dwell. New
        privacy settings shape the next payload built.
        """
        self._settings = settings
        if privacy is not None:
            self.privacy = privacy
        for track in self._tracks.values():
            if track.smoothed is not None:
                track.window = deque([track.smoothed], maxlen=settings.window)

    @property
    def track_ids(self) -> list[int]:
        """Ids of the live tracks, ascending."""
        return sorted(self._tracks)

    def scores(self, track_id: int) -> dict[str, float]:
        """The smoothed distribution of a live track (empty before any scores arrived)."""
        track = self._tracks.get(track_id)
        if track is None or track.smoothed is None:
            return {}
        return {
            lab: float(track.smoothed[i]) for i, lab in enumerate(self.labels) if lab in self._seen
        }

    def match(self, boxes: Sequence[Sequence[float]], ts: float) -> list[int]:
        """The track id :meth:`update` at ``ts`` would give each box, changing nothing.

        Matched boxes get their track's id, unmatched ones the ids new tracks would get (in
        box order); tracks that would expire at ``ts`` match nothing. A caller that must
        know a face's track *before* classifying it (per-track scheduling) asks here, then
        feeds the same boxes to :meth:`update`.
        """
        ts = max(ts, self._last_ts)
        timeout = self._settings.track_timeout_s
        live = [
            t
            for t in sorted(self._tracks.values(), key=lambda t: t.track_id)
            if ts - t.last_seen < timeout - _EPS_S
        ]
        boxes4 = [_bbox4(b) for b in boxes]
        pairs = greedy_match(
            iou_matrix([t.bbox for t in live], boxes4), self._settings.iou_threshold
        )
        ids = {c: live[r].track_id for r, c in pairs}
        out: list[int] = []
        fresh = self._next_id
        for idx in range(len(boxes4)):
            if idx not in ids:
                ids[idx], fresh = fresh, fresh + 1
            out.append(ids[idx])
        return out

    def unsettled(self, track_id: int) -> bool:
        """True while a live track's emotion is not established or a change is pending.

        Pending: the smoothed top label is another than the established emotion (its dwell
        is running, or its confidence is short), or the newest classification's own top
        label is (one frame moves the smoothed vector only by ``alpha``, so without this a
        changed face would wait a whole reclassify interval per step of smoothing). Such a
        track needs fresh evidence on every
        frame; a settled one can reuse its last classification (see
        :mod:`edged.runtime.scheduling`). An unknown id counts as unsettled.
        """
        track = self._tracks.get(track_id)
        if track is None or track.emotion is None:
            return True
        if track.latest_top is not None and track.latest_top != track.emotion:
            return True  # the newest classification disagrees: one frame is not a change
        return track.candidate is not None and track.candidate != track.emotion

    def update(
        self, faces: Sequence[FaceLike], ts: float, wall_ts: float | None = None
    ) -> list[EmotionEvent]:
        """Feed one processed frame; returns the events it caused (possibly none).

        ``ts`` is the frame's monotonic capture time (dwell and timeouts are measured on it,
        a ``ts`` earlier than one already seen counts as that one, since frames of a batch
        may have been captured before an idle-expiry call); ``wall_ts`` is its epoch time
        for the events' ``ts``.
        Events come ``left`` first, then ``appeared``/``changed`` by ascending track id.
        """
        wall = time.time() if wall_ts is None else wall_ts
        ts = max(ts, self._last_ts)
        self._last_ts = ts
        events = self._expire(ts, wall)

        live = sorted(self._tracks.values(), key=lambda t: t.track_id)
        boxes = [_bbox4(f.bbox) for f in faces]
        pairs = greedy_match(
            iou_matrix([t.bbox for t in live], boxes), self._settings.iou_threshold
        )
        assigned: dict[int, _Track] = {c: live[r] for r, c in pairs}
        for idx, box in enumerate(boxes):
            track = assigned.get(idx)
            if track is None:
                track = _Track(self._next_id, box, first_seen=ts, last_seen=ts)
                self._tracks[track.track_id] = track
                self._next_id += 1
                assigned[idx] = track
            track.bbox = box
            track.last_seen = ts
        for idx in sorted(assigned, key=lambda i: assigned[i].track_id):
            event = self._observe(assigned[idx], faces[idx].scores, ts, wall)
            if event is not None:
                events.append(event)
        return events

    def flush(self, ts: float, wall_ts: float | None = None) -> list[EmotionEvent]:
        """End every track (shutdown, camera removed): ``left`` for each that had appeared."""
        wall = time.time() if wall_ts is None else wall_ts
        events = [
            self._event("left", t, wall, duration_s=t.last_seen - t.first_seen)
            for t in sorted(self._tracks.values(), key=lambda t: t.track_id)
            if t.emotion is not None
        ]
        self._tracks.clear()
        return events

    def live_emotions(self) -> list[str | None]:
        """The established emotion of every live track (``None`` where not yet), by id:
        what aggregate mode counts, without any id or box leaving the tracker."""
        return [self._tracks[tid].emotion for tid in sorted(self._tracks)]

    def state(self) -> tuple[str, StateAttributes]:
        """The camera's retained state: ``(emotion, attributes)``.

        ``emotion`` is the established emotion of the most prominent live face (largest box
        area) among those with an emotion, else ``"none"``. Attributes:
        ``{"faces": n, "tracks": [{"track_id", "emotion", "confidence", "bbox"}]}`` for every
        live track (seen within ``track_timeout_s``), with ``emotion``/``confidence`` ``null``
        until established and ``bbox`` as ``[x, y, w, h]`` (left out when
        ``privacy.publish_boxes`` is false).
        """
        tracks = sorted(self._tracks.values(), key=lambda t: t.track_id)
        with_emotion = [t for t in tracks if t.emotion is not None]
        emotion = "none"
        if with_emotion:
            best = max(with_emotion, key=lambda t: (_area(t.bbox), -t.track_id))
            emotion = best.emotion or "none"
        attributes = StateAttributes(
            faces=len(tracks),
            tracks=tuple(
                TrackState(
                    track_id=t.track_id,
                    emotion=t.emotion,
                    confidence=round(t.confidence, _ROUND) if t.emotion else None,
                    bbox=_xywh(t.bbox),
                )
                for t in tracks
            ),
        )
        return emotion, minimise_attributes(attributes, self.privacy)

    # -- internals ------------------------------------------------------------------------

    def _expire(self, ts: float, wall: float) -> list[EmotionEvent]:
        events: list[EmotionEvent] = []
        timeout = self._settings.track_timeout_s
        for tid in sorted(self._tracks):
            track = self._tracks[tid]
            if ts - track.last_seen >= timeout - _EPS_S:
                del self._tracks[tid]
                if track.emotion is not None:
                    events.append(
                        self._event(
                            "left", track, wall, duration_s=track.last_seen - track.first_seen
                        )
                    )
        return events

    def _vector(self, scores: Mapping[str, float]) -> FloatVec | None:
        if not scores:
            return None
        if not self._fixed_labels:
            self._seen.update(k for k in scores if k in self.labels)
        vec = np.array([float(scores.get(lab, 0.0)) for lab in self.labels], dtype=np.float64)
        return vec if vec.any() else None

    def _observe(
        self, track: _Track, scores: Mapping[str, float], ts: float, wall: float
    ) -> EmotionEvent | None:
        vec = self._vector(scores)
        if vec is None:
            return None
        track.latest_top = self.labels[int(np.argmax(vec))]
        s = self._settings
        if not s.enabled:
            track.smoothed = vec
        elif s.method == "ema":
            track.smoothed = (
                vec if track.smoothed is None else s.alpha * vec + (1 - s.alpha) * track.smoothed
            )
        else:
            if track.window.maxlen != s.window:
                track.window = deque(track.window, maxlen=s.window)
            track.window.append(vec)
            track.smoothed = np.mean(np.stack(track.window), axis=0)
        smoothed = track.smoothed
        top_idx = int(np.argmax(smoothed))
        top, conf = self.labels[top_idx], float(smoothed[top_idx])
        if track.emotion is not None:
            track.confidence = float(smoothed[self.labels.index(track.emotion)])
        if top != track.candidate:
            track.candidate, track.candidate_since = top, ts
        dwell = s.min_dwell_s if s.enabled else 0.0
        if top == track.emotion or conf < s.min_confidence:
            return None
        if ts - track.candidate_since < dwell - _EPS_S:
            return None
        previous, held = track.emotion, ts - track.emotion_since
        track.emotion, track.emotion_since, track.confidence = top, ts, conf
        if previous is None:
            return self._event("appeared", track, wall, duration_s=0.0)
        return self._event("changed", track, wall, duration_s=held, previous=previous)

    def _event(
        self,
        kind: EventType,
        track: _Track,
        wall: float,
        *,
        duration_s: float,
        previous: str | None = None,
    ) -> EmotionEvent:
        smoothed = track.smoothed if track.smoothed is not None else np.zeros(len(self.labels))
        scores = {
            lab: round(float(smoothed[i]), _ROUND)
            for i, lab in enumerate(self.labels)
            if lab in self._seen
        }
        event = EmotionEvent(
            id=uuid.uuid4().hex,
            ts=iso_utc(wall),
            device=self.device_id,
            camera=self.camera_id,
            track_id=track.track_id,
            type=kind,
            emotion=track.emotion,
            confidence=round(track.confidence, _ROUND),
            scores=scores,
            previous=previous,
            bbox=_xywh(track.bbox),
            duration_s=round(max(duration_s, 0.0), 3),
        )
        return minimise_event(event, self.privacy)


def _bbox4(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    return x1, y1, x2, y2


def _area(b: tuple[float, float, float, float]) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def _xywh(b: tuple[float, float, float, float]) -> BoxXYWH:
    x1, y1, x2, y2 = b
    return (round(x1), round(y1), round(max(x2 - x1, 0.0)), round(max(y2 - y1, 0.0)))
