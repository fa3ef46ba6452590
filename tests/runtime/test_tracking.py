"""Tracking, smoothing and hysteresis: ids, events and their contract fields."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from edged.config import SmoothingSettings
from edged.contracts.events import EmotionEvent, StateAttributes
from edged.runtime.tracking import Tracker, greedy_match, iou_matrix

SEVEN = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
EVENT_KEYS = {
    "schema",
    "id",
    "ts",
    "device",
    "camera",
    "track_id",
    "type",
    "emotion",
    "confidence",
    "scores",
    "previous",
    "bbox",
    "duration_s",
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
WALL0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Face:
    bbox: tuple[float, float, float, float]
    scores: Mapping[str, float] = field(default_factory=dict)
    score: float = 0.9


def dist(top: str, p: float = 0.9, labels: Sequence[str] = SEVEN) -> dict[str, float]:
    """A distribution with ``p`` on ``top`` and the rest spread evenly."""
    rest = (1.0 - p) / (len(labels) - 1)
    return {lab: (p if lab == top else rest) for lab in labels}


def settings(**kw: Any) -> SmoothingSettings:
    base: dict[str, Any] = {
        "alpha": 0.5,
        "min_dwell_s": 1.0,
        "min_confidence": 0.4,
        "track_timeout_s": 2.0,
    }
    base.update(kw)
    return SmoothingSettings(**base)


def run(tracker: Tracker, frames: Sequence[tuple[float, Sequence[Face]]]) -> list[dict[str, Any]]:
    """The events the frames cause, as they go on the wire (``to_json``)."""
    events: list[dict[str, Any]] = []
    for ts, faces in frames:
        events.extend(e.to_json() for e in tracker.update(faces, ts, WALL0 + ts))
    return events


def state(tracker: Tracker) -> tuple[str, dict[str, Any]]:
    """The retained state with its attributes as they go on the wire."""
    emotion, attrs = tracker.state()
    return emotion, attrs.to_json()


BOX = (100.0, 100.0, 200.0, 220.0)


def steady(emotion: str, t0: float, t1: float, step: float = 0.1, box: Any = BOX) -> list[Any]:
    n = round((t1 - t0) / step)
    return [(round(t0 + i * step, 6), [Face(box, dist(emotion))]) for i in range(n + 1)]


def test_ids_stay_stable_for_two_faces_moving_across_frames() -> None:
    tracker = Tracker(settings(), "door", "dev")
    pairs: set[tuple[int, int]] = set()
    for i in range(30):
        a = Face((10.0 + 6 * i, 50.0, 110.0 + 6 * i, 170.0), dist("happy"))
        b = Face((500.0 - 5 * i, 60.0 + 2 * i, 590.0 - 5 * i, 160.0 + 2 * i), dist("sad"))
        # Detector order varies between frames; the ids must not.
        tracker.update([a, b] if i % 2 else [b, a], ts=i * 0.1, wall_ts=WALL0)
        tracks = state(tracker)[1]["tracks"]
        assert len(tracks) == 2
        by_x = sorted(tracks, key=lambda t: t["bbox"][0])
        pairs.add((by_x[0]["track_id"], by_x[1]["track_id"]))
    assert pairs == {(2, 1)}  # b was listed first in frame 0, so it got id 1
    assert tracker.scores(2)["happy"] > 0.8 and tracker.scores(1)["sad"] > 0.8


def test_a_new_face_after_one_left_gets_a_new_id() -> None:
    tracker = Tracker(settings(track_timeout_s=0.5), "door", "dev")
    tracker.update([Face(BOX)], 0.0, WALL0)
    tracker.update([], 1.0, WALL0)
    tracker.update([Face(BOX)], 1.1, WALL0)
    assert tracker.track_ids == [2]


def test_appeared_is_emitted_when_the_first_emotion_has_dwelled() -> None:
    tracker = Tracker(settings(min_dwell_s=1.0), "door", "dev")
    early = run(tracker, steady("happy", 0.0, 0.9))
    assert early == []
    events = run(tracker, steady("happy", 1.0, 1.5))
    assert [e["type"] for e in events] == ["appeared"]
    ev = events[0]
    assert ev["emotion"] == "happy" and ev["previous"] is None and ev["duration_s"] == 0
    assert ev["ts"] == "2026-01-01T00:00:01.000Z"


def test_face_unseen_for_track_timeout_leaves_with_its_lifetime() -> None:
    tracker = Tracker(settings(track_timeout_s=2.0, min_dwell_s=0.5), "door", "dev")
    run(tracker, steady("happy", 0.0, 3.0))
    assert run(tracker, [(4.9, [])]) == []  # 1.9 s unseen: still there
    assert state(tracker)[1]["faces"] == 1
    events = run(tracker, [(5.0, [])])
    assert len(events) == 1
    left = events[0]
    assert left["type"] == "left"
    assert left["emotion"] == "happy"
    assert left["duration_s"] == pytest.approx(3.0)
    assert left["bbox"] == [100, 100, 100, 120]
    assert state(tracker) == ("none", {"schema": 1, "faces": 0, "tracks": []})


def test_a_track_that_never_established_an_emotion_leaves_silently() -> None:
    tracker = Tracker(settings(min_dwell_s=5.0), "door", "dev")
    run(tracker, steady("happy", 0.0, 1.0))
    assert run(tracker, [(10.0, [])]) == []
    assert tracker.track_ids == []


def test_one_noisy_frame_never_produces_an_event() -> None:
    # alpha 0.9: the noisy frame does flip the smoothed top label for that instant.
    frames = [
        *steady("happy", 0.0, 2.0),
        (2.1, [Face(BOX, dist("angry", 0.95))]),
        *steady("happy", 2.2, 4.0),
    ]
    dwelling = Tracker(settings(alpha=0.9, min_dwell_s=0.5), "door", "dev")
    events = run(dwelling, frames)
    assert [e["type"] for e in events] == ["appeared"]
    # The same frames without a dwell requirement would report it: the test can fail.
    instant = Tracker(settings(alpha=0.9, min_dwell_s=0.0), "door", "dev")
    assert "angry" in [e["emotion"] for e in run(instant, frames)]


def test_sustained_change_makes_exactly_one_changed_after_min_dwell() -> None:
    tracker = Tracker(settings(alpha=0.6, min_dwell_s=1.0), "door", "dev")
    run(tracker, steady("neutral", 0.0, 3.0))  # neutral established at t=1.0
    events = run(tracker, steady("surprised", 3.1, 8.0))
    assert [e["type"] for e in events] == ["changed"]
    changed = events[0]
    assert changed["emotion"] == "surprised" and changed["previous"] == "neutral"
    # surprised becomes the smoothed top at 3.1 (alpha 0.6), so it is reported at 4.1 ...
    assert changed["ts"] == "2026-01-01T00:00:04.100Z"
    # ... after neutral was held from its establishment at 1.0.
    assert changed["duration_s"] == pytest.approx(3.1)
    assert changed["confidence"] >= 0.4


def test_a_change_below_min_confidence_is_not_reported() -> None:
    weak_sad = {**dist("sad", 0.35), "neutral": 0.3}
    frames = [*steady("neutral", 0.0, 2.0)] + [
        (round(2.1 + 0.1 * i, 6), [Face(BOX, weak_sad)]) for i in range(40)
    ]
    strict = Tracker(settings(min_confidence=0.4), "door", "dev")
    assert [e["type"] for e in run(strict, frames)] == ["appeared"]
    assert state(strict)[0] == "neutral"
    lenient = Tracker(settings(min_confidence=0.3), "door", "dev")
    assert [e["type"] for e in run(lenient, frames)] == ["appeared", "changed"]
    assert state(lenient)[0] == "sad"


def test_ema_weights_the_newest_frame_by_alpha() -> None:
    labels = ("neutral", "happy")
    tracker = Tracker(settings(method="ema", alpha=0.3), "door", "dev", labels=labels)
    for ts, top in [(0.0, "neutral"), (0.1, "happy"), (0.2, "happy")]:
        tracker.update([Face(BOX, {top: 1.0})], ts, WALL0)
    # 1 → 0.7 → 0.49 for neutral; happy gets the rest.
    assert tracker.scores(1) == pytest.approx({"neutral": 0.49, "happy": 0.51})


def test_window_is_the_mean_of_the_last_frames() -> None:
    labels = ("neutral", "happy")
    tracker = Tracker(settings(method="window", window=3), "door", "dev", labels=labels)
    seq = ["neutral", "neutral", "neutral", "happy", "happy"]
    for i, top in enumerate(seq):
        tracker.update([Face(BOX, {top: 1.0})], i * 0.1, WALL0)
    assert tracker.scores(1) == pytest.approx({"neutral": 1 / 3, "happy": 2 / 3})


def test_without_smoothing_raw_distribution_changes_at_once_above_min_confidence() -> None:
    tracker = Tracker(settings(enabled=False, min_dwell_s=5.0), "door", "dev")
    events = run(
        tracker,
        [
            (0.0, [Face(BOX, dist("happy"))]),
            (0.1, [Face(BOX, dist("angry"))]),
            (0.2, [Face(BOX, dist("sad", 0.3))]),  # top but below min_confidence
        ],
    )
    assert [(e["type"], e["emotion"]) for e in events] == [
        ("appeared", "happy"),
        ("changed", "angry"),
    ]
    assert events[1]["scores"]["angry"] == pytest.approx(0.9)


def test_events_have_the_contract_fields_and_types() -> None:
    tracker = Tracker(settings(min_dwell_s=0.2, track_timeout_s=0.5), "door", "lobby-01")
    box = (10.4, 20.6, 110.2, 150.9)
    frames = [*steady("happy", 0.0, 1.0, box=box), *steady("sad", 1.1, 3.0, box=box)]
    events = run(tracker, frames) + run(tracker, [(10.0, [])])
    assert [e["type"] for e in events] == ["appeared", "changed", "left"]
    for ev in events:
        assert set(ev) == EVENT_KEYS
        assert ev["schema"] == 1
        assert ev["device"] == "lobby-01" and ev["camera"] == "door"
        assert ev["track_id"] == 1
        assert ISO_UTC.match(ev["ts"]), ev["ts"]
        assert ev["bbox"] == [10, 21, 100, 130]
        assert all(type(v) is int for v in ev["bbox"])
        assert isinstance(ev["confidence"], float) and 0 <= ev["confidence"] <= 1
        assert set(ev["scores"]) == set(SEVEN)  # a 7-class model: no contemptuous
        assert ev["emotion"] in SEVEN
        assert isinstance(ev["duration_s"], float)
        json.dumps(ev)
    assert len({e["id"] for e in events}) == 3
    assert events[0]["previous"] is None and events[1]["previous"] == "happy"
    assert events[2]["previous"] is None and events[2]["emotion"] == "sad"


def test_state_reports_the_largest_face_with_an_emotion() -> None:
    tracker = Tracker(settings(min_dwell_s=0.0), "door", "dev")
    small = Face((0.0, 0.0, 50.0, 50.0), dist("angry"))
    large = Face((200.0, 0.0, 400.0, 200.0), dist("happy"))
    tracker.update([small, large], 0.0, WALL0)
    emotion, attrs = state(tracker)
    assert emotion == "happy"
    assert attrs["faces"] == 2
    assert [(t["track_id"], t["emotion"], t["bbox"]) for t in attrs["tracks"]] == [
        (1, "angry", [0, 0, 50, 50]),
        (2, "happy", [200, 0, 200, 200]),
    ]
    json.dumps(attrs)


def test_faces_without_scores_are_counted_but_make_no_events() -> None:
    tracker = Tracker(settings(min_dwell_s=0.0), "door", "dev")
    assert run(tracker, [(0.0, [Face(BOX)]), (0.1, [Face(BOX)])]) == []
    emotion, attrs = state(tracker)
    assert emotion == "none"
    assert attrs["tracks"][0]["emotion"] is None and attrs["faces"] == 1


def test_flush_ends_every_track_that_appeared() -> None:
    tracker = Tracker(settings(min_dwell_s=0.0), "door", "dev")
    a = Face((0.0, 0.0, 50.0, 50.0), dist("happy"))
    b = Face((200.0, 0.0, 300.0, 100.0), dist("sad"))
    tracker.update([a, b], 0.0, WALL0)
    tracker.update([a, b], 1.5, WALL0)
    events = [e.to_json() for e in tracker.flush(2.0, WALL0 + 2)]
    assert [(e["type"], e["track_id"], e["emotion"]) for e in events] == [
        ("left", 1, "happy"),
        ("left", 2, "sad"),
    ]
    assert events[0]["duration_s"] == pytest.approx(1.5)
    assert tracker.track_ids == []


def test_configure_keeps_tracks_and_their_emotion() -> None:
    tracker = Tracker(settings(min_dwell_s=0.0), "door", "dev")
    run(tracker, steady("happy", 0.0, 0.5))
    tracker.configure(settings(method="window", window=4, min_dwell_s=0.0))
    assert run(tracker, steady("happy", 0.6, 1.0)) == []
    assert state(tracker)[0] == "happy" and tracker.track_ids == [1]


def test_greedy_match_pairs_highest_overlap_first_and_respects_threshold() -> None:
    tracks = [(0, 0, 10, 10), (20, 0, 30, 10)]
    dets = [(21, 0, 31, 10), (1, 0, 11, 10), (100, 100, 110, 110)]
    iou = iou_matrix(tracks, dets)
    assert sorted(greedy_match(iou, 0.3)) == [(0, 1), (1, 0)]
    assert greedy_match(iou, 0.99) == []


def test_a_frame_older_than_the_last_update_does_not_rewind_time() -> None:
    tracker = Tracker(settings(min_dwell_s=1.0, track_timeout_s=2.0), "door", "dev")
    run(tracker, steady("happy", 0.0, 1.0))  # appeared at 1.0
    assert run(tracker, [(3.5, [])])[0]["type"] == "left"  # idle expiry at 3.5
    # A frame captured at 3.4 (before the expiry call) starts a fresh track at 3.5 ...
    run(tracker, [(3.4, [Face(BOX, dist("sad"))])])
    # ... so its dwell runs from 3.5: nothing at 4.4, appeared at 4.5.
    assert run(tracker, [(4.4, [Face(BOX, dist("sad"))])]) == []
    assert [e["type"] for e in run(tracker, [(4.5, [Face(BOX, dist("sad"))])])] == ["appeared"]


def test_events_and_state_are_typed_and_serialise_in_contract_key_order() -> None:
    tracker = Tracker(settings(min_dwell_s=0.0), "door", "dev")
    (event,) = tracker.update([Face(BOX, dist("happy"))], 0.0, WALL0)
    assert isinstance(event, EmotionEvent) and event.type == "appeared"
    assert list(event.to_json()) == [
        "schema", "id", "ts", "device", "camera", "track_id", "type",
        "emotion", "confidence", "scores", "previous", "bbox", "duration_s",
    ]  # fmt: skip
    emotion, attrs = tracker.state()
    assert isinstance(attrs, StateAttributes) and emotion == "happy"
    assert list(attrs.to_json()["tracks"][0]) == ["track_id", "emotion", "confidence", "bbox"]
