"""Typed payloads for publisher tests: an event numbered by its track id, and attributes."""

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
