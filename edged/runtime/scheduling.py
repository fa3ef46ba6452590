"""Which tracked faces to classify on this frame: the least work that keeps the events.

A tracked face's emotion changes over seconds, not frames, so re-classifying every face on
every frame is mostly repeated work (DeepStream's ``secondary-reinfer-interval`` and DL
Streamer's ``reclassify-interval`` skip it the same way). :class:`ClassifySchedule` decides per
track; a face is classified when

* its track is **new** (never classified),
* ``reclassify_interval_s`` has passed since its last classification,
* its box **changed** by more than ``reclassify_box_change`` (as ``1 - IoU`` against the box
  it was last classified at: a face that came closer, turned or moved), or
* its emotion is **unsettled**: not yet established, or another label is on top while the
  hysteresis dwell runs (:meth:`edged.runtime.tracking.Tracker.unsettled`). The dwell and
  confidence rules are applied to fresh evidence only, so a pending change is decided on
  real classifications, exactly when the every-frame path would decide it.

Otherwise the track **reuses** its last probabilities: the frame's face carries them (for
callers that show them), but the tracker is fed the face *without scores*, so smoothing
does not count a repeated distribution as a new observation (an EMA fed the same vector
again would drift toward it and shorten dwell times artificially). The box and the track's
last sighting are still updated, so matching and ``track_timeout_s`` work as before.

Pure and deterministic: time comes in as arguments, like the tracker's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.config import PipelineSettings
from edged.runtime.tracking import iou_matrix

Box = tuple[float, float, float, float]


@dataclass
class _Classified:
    ts: float
    box: Box
    probs: npt.NDArray[np.float32]


class ClassifySchedule:
    """Per-track record of the last classification, and the decision for the next frame."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.interval_s = settings.reclassify_interval_s
        self.box_change = settings.reclassify_box_change
        self._last: dict[int, _Classified] = {}

    def configure(self, settings: PipelineSettings) -> None:
        """New thresholds (a reload); what each track was last classified as is kept."""
        self.interval_s = settings.reclassify_interval_s
        self.box_change = settings.reclassify_box_change

    @property
    def every_frame(self) -> bool:
        """True when scheduling is off: every face is classified on every frame."""
        return self.interval_s <= 0 or self.box_change <= 0

    def due(self, track_id: int, box: Sequence[float], ts: float, unsettled: bool) -> bool:
        """Whether the face of ``track_id`` at ``box`` must be classified at ``ts``."""
        last = self._last.get(track_id)
        if self.every_frame or last is None or unsettled:
            return True
        if ts - last.ts >= self.interval_s - 1e-6:
            return True
        change = 1.0 - float(iou_matrix([last.box], [tuple(box[:4])])[0, 0])
        return change > self.box_change

    def classified(
        self, track_id: int, box: Sequence[float], ts: float, probs: npt.NDArray[np.float32]
    ) -> None:
        """Record a fresh classification of a track."""
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        self._last[track_id] = _Classified(ts, (x1, y1, x2, y2), probs)

    def last_probs(self, track_id: int) -> npt.NDArray[np.float32] | None:
        """The probabilities a skipped face reuses (None for a track never classified)."""
        last = self._last.get(track_id)
        return last.probs if last is not None else None

    def retain(self, live: Iterable[int]) -> None:
        """Forget tracks that ended (ids only grow, so a forgotten id never returns)."""
        keep = set(live)
        for tid in [t for t in self._last if t not in keep]:
            del self._last[tid]
