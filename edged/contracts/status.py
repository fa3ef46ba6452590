"""What the daemon reports about itself: the heartbeat and the health snapshot.

Frozen dataclasses instead of dicts assembled in several places, so the heartbeat and
``/health`` cannot disagree on a field, and each has one ``to_json()`` that writes the wire
shape of the contract (``/work/shared/CONTRACT.md``: heartbeat fields, ``/health`` body).
The publisher's figures come typed from :mod:`edged.contracts.publisher`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from edged.contracts.publisher import PublisherStatus

#: Version of the heartbeat payload.
HEARTBEAT_SCHEMA = 1

Json = dict[str, object]


def _fields_json(record: CameraStatus | CameraHeartbeat) -> Json:
    """Every field under its own name: the wire shape *is* the dataclass, so a field added
    to the record is in its JSON without a second list to keep in step."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass(frozen=True)
class CameraStatus:
    """One camera as the daemon sees it: capture figures and what the loop made of them."""

    state: str | None
    fps_in: float
    fps_processed: float
    faces: int
    frames_in: int
    frames_processed: int
    frames_failed: int
    dropped_frames: int
    #: None before the first frame.
    last_frame_age_s: float | None
    reconnects: int
    last_error: str | None
    #: Mean inference time per processed frame (detection + this frame's share of the
    #: batched crop/classify), milliseconds, smoothed; None before the first frame.
    inference_ms: float | None = None

    def to_json(self) -> Json:
        """The full record (``/health``'s camera entries, the metrics' source)."""
        return _fields_json(self)

    def heartbeat(self, faces_shown: int | None) -> CameraHeartbeat:
        """The heartbeat's subset (:class:`CameraHeartbeat`'s fields, taken from this
        record); ``faces_shown`` is the count privacy lets out."""
        shared = {f.name: getattr(self, f.name) for f in fields(CameraHeartbeat)}
        return CameraHeartbeat(**{**shared, "faces": faces_shown})


@dataclass(frozen=True)
class CameraHeartbeat:
    """The heartbeat's per-camera fields (the contract's list); ``faces`` may be withheld."""

    state: str | None
    fps_in: float
    fps_processed: float
    faces: int | None
    dropped_frames: int
    last_frame_age_s: float | None
    inference_ms: float | None = None

    def to_json(self) -> Json:
        return _fields_json(self)


@dataclass(frozen=True)
class ModelStatus:
    """The loaded models: role → model name, model name → provider, fallbacks taken."""

    roles: Mapping[str, str | None] = field(default_factory=dict)
    providers: Mapping[str, str] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()

    def to_json(self) -> Json:
        """The heartbeat's field names: ``models`` are the roles there."""
        return {
            "models": dict(self.roles),
            "providers": dict(self.providers),
            "fallbacks": list(self.fallbacks),
        }


@dataclass(frozen=True)
class SpoolStatus:
    pending: int = 0
    dropped: int = 0

    @classmethod
    def from_publisher(cls, stats: PublisherStatus | None) -> SpoolStatus:
        """The spool part of the publisher's status (empty without a publisher)."""
        if stats is None:
            return cls()
        return cls(stats.spool_pending, stats.spool_dropped)

    def to_json(self) -> Json:
        return {"pending": self.pending, "dropped": self.dropped}


@dataclass(frozen=True)
class InferenceStatus:
    """Run-time inference failures: counted, and the newest one for a while."""

    failures: int = 0
    last_error: str | None = None
    last_error_age_s: float | None = None

    def to_json(self) -> Json:
        return {
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_age_s": self.last_error_age_s,
        }


@dataclass(frozen=True)
class Heartbeat:
    """The ``<prefix>/<device>/heartbeat`` payload."""

    ts: str
    device: str
    uptime_s: float
    version: str
    phase: str
    models: ModelStatus
    cameras: Mapping[str, CameraHeartbeat]
    spool: SpoolStatus
    #: The publisher's connection figures (Home Assistant's reconnect diagnostic).
    mqtt: PublisherStatus | None = None

    def to_json(self) -> Json:
        models = self.models.to_json()
        return {
            "schema": HEARTBEAT_SCHEMA,
            "ts": self.ts,
            "device": self.device,
            "uptime_s": self.uptime_s,
            "version": self.version,
            "phase": self.phase,
            "models": models["models"],
            "providers": models["providers"],
            "fallbacks": models["fallbacks"],
            "cameras": {cid: cam.to_json() for cid, cam in self.cameras.items()},
            "spool": self.spool.to_json(),
            "mqtt": {
                "connected": self.mqtt.connected if self.mqtt else False,
                "reconnects": self.mqtt.reconnects if self.mqtt else 0,
            },
        }


@dataclass(frozen=True)
class HealthSnapshot:
    """What ``/health`` and ``/metrics`` read: taken on the loop, cheap, never blocking."""

    uptime_s: float
    version: str
    phase: str
    models: ModelStatus
    cameras: Mapping[str, CameraStatus]
    #: ``Publisher.stats()`` as it is (``connected``, ``last_error``, counts); None
    #: without a publisher (reported as not connected).
    mqtt: PublisherStatus | None
    spool: SpoolStatus
    inference_busy_s: float
    inference: InferenceStatus

    def to_json(self) -> Json:
        """The snapshot as ``/health`` extends it (``models`` is model → provider here)."""
        return {
            "uptime_s": self.uptime_s,
            "version": self.version,
            "phase": self.phase,
            "models": dict(self.models.providers),
            "roles": dict(self.models.roles),
            "fallbacks": list(self.models.fallbacks),
            "cameras": {cid: cam.to_json() for cid, cam in self.cameras.items()},
            "mqtt": self.mqtt.to_json() if self.mqtt is not None else {"connected": False},
            "spool": self.spool.to_json(),
            "inference_busy_s": self.inference_busy_s,
            "inference": self.inference.to_json(),
        }


__all__ = [
    "HEARTBEAT_SCHEMA",
    "CameraHeartbeat",
    "CameraStatus",
    "HealthSnapshot",
    "Heartbeat",
    "InferenceStatus",
    "ModelStatus",
    "SpoolStatus",
]
