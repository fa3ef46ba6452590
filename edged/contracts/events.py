"""The payloads about what the cameras see: emotion events, retained attributes,
aggregate reports, and the answer to a remote configuration change.

Each type's ``to_json()`` is the payload's one definition (keys in wire order);
:func:`json_bytes` turns it into the compact UTF-8 bytes that are spooled and published.
A field that ``[privacy]`` withholds is ``None`` here and its key is left out of the JSON,
so a subscriber cannot mistake "not published" for "not known".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from edged.errors import PublishError

#: ``type`` of an emotion event.
EventType = Literal["appeared", "changed", "left"]

#: A box on the wire: ``x, y, w, h`` in whole pixels.
BoxXYWH = tuple[int, int, int, int]


def _json_default(value: object) -> object:
    """numpy scalars and arrays (``.item()``/``.tolist()``) become plain JSON values."""
    for attr in ("tolist", "item"):  # tolist first: item() fails on arrays
        convert = getattr(value, attr, None)
        if callable(convert):
            return convert()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_bytes(value: Mapping[str, object]) -> bytes:
    """Compact UTF-8 JSON of a payload's ``to_json()``; raises PublishError if it cannot be."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"payload is not JSON serialisable: {exc}") from exc
    return text.encode("utf-8")


@dataclass(frozen=True)
class EmotionEvent:
    """``<base>/<camera>/event``: a track's established emotion appeared, changed or left.

    ``bbox`` and ``scores`` are ``None`` when ``[privacy]`` withholds them.
    """

    id: str
    ts: str
    device: str
    camera: str
    track_id: int
    type: EventType
    emotion: str | None
    confidence: float
    scores: Mapping[str, float] | None
    previous: str | None
    bbox: BoxXYWH | None
    duration_s: float
    schema: int = 1

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "schema": self.schema,
            "id": self.id,
            "ts": self.ts,
            "device": self.device,
            "camera": self.camera,
            "track_id": self.track_id,
            "type": self.type,
            "emotion": self.emotion,
            "confidence": self.confidence,
        }
        if self.scores is not None:
            out["scores"] = dict(self.scores)
        out["previous"] = self.previous
        if self.bbox is not None:
            out["bbox"] = list(self.bbox)
        out["duration_s"] = self.duration_s
        return out


@dataclass(frozen=True)
class TrackState:
    """One live track in the retained attributes; ``emotion``/``confidence`` are ``None``
    until established, ``bbox`` ``None`` when ``[privacy] publish_boxes`` is false."""

    track_id: int
    emotion: str | None
    confidence: float | None
    bbox: BoxXYWH | None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "track_id": self.track_id,
            "emotion": self.emotion,
            "confidence": self.confidence,
        }
        if self.bbox is not None:
            out["bbox"] = list(self.bbox)
        return out


@dataclass(frozen=True)
class StateAttributes:
    """``<base>/<camera>/attributes`` (retained): how many faces, and each live track."""

    faces: int
    tracks: tuple[TrackState, ...] = ()
    schema: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "faces": self.faces,
            "tracks": [t.to_json() for t in self.tracks],
        }


@dataclass(frozen=True)
class AggregateReport:
    """What aggregate mode publishes per camera and interval: counts, never a person.

    ``faces`` is the most faces seen at once, ``faces_mean`` the mean over the frames
    described, ``emotions`` the share of the described face sightings per established
    emotion (sums to 1 when any face had one; a face whose emotion is not yet established
    counts in ``faces`` only). ``frames`` says how many processed frames it describes:
    frames with fewer than ``min_faces`` faces are left out.
    """

    ts: str
    device: str
    camera: str
    interval_s: float
    frames: int
    faces: int
    faces_mean: float
    emotions: Mapping[str, float] = field(default_factory=dict)
    schema: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "ts": self.ts,
            "device": self.device,
            "camera": self.camera,
            "interval_s": self.interval_s,
            "frames": self.frames,
            "faces": self.faces,
            "faces_mean": self.faces_mean,
            "emotions": dict(self.emotions),
        }


def utc_now_iso() -> str:
    """Now as the payloads write it: ISO-8601 UTC with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ConfigResult:
    """``<base>/config/result``: whether a ``config/set`` was applied, and if not why.

    ``id`` echoes the request's ``"id"`` (``None`` when it carried none), so an operator
    who sent several changes can tell which one an answer is about.
    """

    ok: bool
    error: str | None
    ts: str
    id: str | None = None
    schema: int = 1

    @classmethod
    def now(cls, ok: bool, error: str | None, request_id: str | None = None) -> ConfigResult:
        """The answer to request ``request_id``, stamped now."""
        return cls(ok=ok, error=error, ts=utc_now_iso(), id=request_id)

    def to_json(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "id": self.id,
            "ok": self.ok,
            "error": self.error,
            "ts": self.ts,
        }


__all__ = [
    "AggregateReport",
    "BoxXYWH",
    "ConfigResult",
    "EmotionEvent",
    "EventType",
    "StateAttributes",
    "TrackState",
    "json_bytes",
    "utc_now_iso",
]
