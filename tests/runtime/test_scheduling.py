"""Per-track classification scheduling against a real Tracker: who is classified when."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edged.config import PipelineSettings, SmoothingSettings
from edged.runtime.scheduling import ClassifySchedule
from edged.runtime.tracking import Tracker

BOX = (100.0, 100.0, 200.0, 200.0)
HAPPY = {"happy": 0.9, "sad": 0.1}
SAD = {"happy": 0.1, "sad": 0.9}


@dataclass
class F:
    bbox: tuple[float, float, float, float]
    scores: dict[str, float] = field(default_factory=dict)
    score: float = 0.9


def settled_track(interval: float = 1.0) -> tuple[Tracker, ClassifySchedule, int]:
    """A track that established ``happy`` at t=1.0 and was classified then."""
    tracker = Tracker(SmoothingSettings(min_dwell_s=0.5), "cam", "dev")
    sched = ClassifySchedule(PipelineSettings(reclassify_interval_s=interval))
    for t in (0.0, 0.5, 1.0):
        (tid,) = tracker.match([BOX], t)
        tracker.update([F(BOX, HAPPY)], t, 0.0)
        sched.classified(tid, BOX, t, np.array([0.9, 0.1], np.float32))
    assert not tracker.unsettled(tid)
    return tracker, sched, tid


def test_a_new_track_is_classified() -> None:
    tracker = Tracker(SmoothingSettings(), "cam", "dev")
    sched = ClassifySchedule(PipelineSettings())
    (tid,) = tracker.match([BOX], 0.0)
    assert tid == 1
    assert sched.due(tid, BOX, 0.0, tracker.unsettled(tid))


def test_a_settled_track_is_not_reclassified_inside_the_interval_and_is_after_it() -> None:
    tracker, sched, tid = settled_track(interval=1.0)
    for t in (1.1, 1.5, 1.9):
        assert not sched.due(tid, BOX, t, tracker.unsettled(tid))
    assert sched.due(tid, BOX, 2.0, tracker.unsettled(tid))


def test_a_track_whose_box_grew_or_moved_is_reclassified() -> None:
    _, sched, tid = settled_track()
    grown = (90.0, 90.0, 215.0, 215.0)  # 1.56x the area: IoU 0.64
    moved = (135.0, 100.0, 235.0, 200.0)  # a third of its width: IoU 0.48
    jitter = (102.0, 101.0, 202.0, 199.0)
    assert sched.due(tid, grown, 1.2, False)
    assert sched.due(tid, moved, 1.2, False)
    assert not sched.due(tid, jitter, 1.2, False)


def test_a_track_with_a_pending_change_is_reclassified_every_frame() -> None:
    tracker, sched, tid = settled_track()
    tracker.update([F(BOX, SAD)], 1.1, 0.0)
    tracker.update([F(BOX, SAD)], 1.2, 0.0)  # smoothed top is sad now, dwell running
    assert tracker.unsettled(tid)
    assert sched.due(tid, BOX, 1.3, tracker.unsettled(tid))


def test_a_track_without_an_established_emotion_is_unsettled() -> None:
    tracker = Tracker(SmoothingSettings(min_dwell_s=1.0), "cam", "dev")
    tracker.update([F(BOX, HAPPY)], 0.0, 0.0)
    assert tracker.unsettled(1)
    assert tracker.unsettled(99)  # unknown id: nothing to reuse


def test_zero_interval_or_zero_box_change_classifies_every_frame() -> None:
    for settings in (
        PipelineSettings(reclassify_interval_s=0),
        PipelineSettings(reclassify_box_change=0),
    ):
        sched = ClassifySchedule(settings)
        sched.classified(1, BOX, 0.0, np.array([1.0], np.float32))
        assert sched.every_frame
        assert sched.due(1, BOX, 0.01, False)


def test_a_face_fed_without_scores_is_no_new_evidence_for_smoothing() -> None:
    tracker, _, tid = settled_track()
    before = tracker.scores(tid)
    events = tracker.update([F(BOX)], 1.5, 0.0)
    assert events == []
    assert tracker.scores(tid) == before
    assert tracker.track_ids == [tid]


def test_match_predicts_the_ids_update_assigns_without_changing_state() -> None:
    tracker = Tracker(SmoothingSettings(track_timeout_s=2.0), "cam", "dev")
    tracker.update([F(BOX, HAPPY)], 0.0, 0.0)
    other = (300.0, 300.0, 400.0, 400.0)
    assert tracker.match([other, BOX], 1.0) == [2, 1]
    assert tracker.match([other, BOX], 1.0) == [2, 1]  # nothing changed
    assert tracker.match([BOX], 2.5) == [2]  # track 1 would have expired
    tracker.update([F(other), F(BOX)], 1.0, 0.0)
    assert tracker.track_ids == [1, 2]


def test_forgotten_tracks_reuse_nothing() -> None:
    sched = ClassifySchedule(PipelineSettings())
    sched.classified(1, BOX, 0.0, np.array([1.0], np.float32))
    sched.retain([2])
    assert sched.last_probs(1) is None


def test_one_disagreeing_classification_keeps_the_track_classified_every_frame() -> None:
    """A face whose expression changed while it was settled is seen at the next interval;
    one frame moves the smoothed vector only by alpha, so the smoothed top label is still
    the old one. The track must stay unsettled on the newest evidence alone, or the change
    would wait another whole interval per frame of evidence (seen as a late ``changed``)."""
    tracker, sched, tid = settled_track(interval=1.0)
    tracker.update([F(BOX, SAD)], 2.0, 0.0)  # the interval's re-classification: now sad
    assert tracker.unsettled(tid)
    assert sched.due(tid, BOX, 2.1, tracker.unsettled(tid))
    tracker.update([F(BOX, HAPPY)], 2.1, 0.0)  # back to what is established: settled
    assert not tracker.unsettled(tid)
