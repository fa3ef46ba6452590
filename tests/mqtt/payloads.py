"""Payloads for publisher tests: an event numbered by its track id, attributes, and a
heartbeat shaped like the daemon's (so the schema checks of every received payload hold)."""

from __future__ import annotations

from edged.contracts.events import EmotionEvent, StateAttributes, TrackState


def event(seq: int, **fields: object) -> EmotionEvent:
    """An ``appeared`` event whose ``track_id`` is ``seq`` (tests order events by it)."""
    base: dict[str, object] = {
        "id": f"ev-{seq}",
        "ts": "2026-01-01T00:00:00.000Z",
        "device": "dev",
        "camera": "door",
        "track_id": seq,
        "type": "appeared",
        "emotion": "happy",
        "confidence": 0.9,
        "scores": {"happy": 0.9, "sad": 0.1},
        "previous": None,
        "bbox": (1, 2, 3, 4),
        "duration_s": 0.0,
    }
    base.update(fields)
    return EmotionEvent(**base)  # type: ignore[arg-type]


def attrs(faces: int, *tracks: tuple[int, str | None, float | None]) -> StateAttributes:
    """Retained attributes with one ``(track_id, emotion, confidence)`` per track."""
    return StateAttributes(
        faces=faces,
        tracks=tuple(TrackState(tid, emo, conf, (10, 20, 30, 40)) for tid, emo, conf in tracks),
    )


def heartbeat(**fields: object) -> dict[str, object]:
    """A heartbeat as the daemon sends it (tests/service/test_daemon.py shows the real one)."""
    beat: dict[str, object] = {
        "schema": 1,
        "ts": "2026-01-01T00:00:00.000Z",
        "device": "dev1",
        "uptime_s": 1.0,
        "version": "0.0.0",
        "phase": "lite",
        "models": {"detector": "yunet", "classifier": "edged_fer"},
        "providers": {"yunet": "cpu", "edged_fer": "cpu"},
        "fallbacks": [],
        "cameras": {
            "door": {
                "state": "running",
                "fps_in": 5.0,
                "fps_processed": 4.9,
                "faces": 1,
                "dropped_frames": 0,
                "last_frame_age_s": 0.1,
            }
        },
        "spool": {"pending": 0, "dropped": 0},
    }
    beat.update(fields)
    return beat
