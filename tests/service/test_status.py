"""The typed status contracts write the wire shapes CONTRACT.md pins (heartbeat, /health)."""

from __future__ import annotations

import json

from edged.contracts.publisher import PublisherStatus
from edged.contracts.status import (
    CameraStatus,
    HealthSnapshot,
    Heartbeat,
    InferenceStatus,
    ModelStatus,
    SpoolStatus,
)
from edged.service.health import evaluate_health

CAM = CameraStatus(
    state="running",
    fps_in=25.0,
    fps_processed=5.0,
    faces=2,
    frames_in=100,
    frames_processed=20,
    frames_failed=0,
    dropped_frames=80,
    last_frame_age_s=0.04,
    reconnects=0,
    last_error=None,
)
MODELS = ModelStatus(
    {"detector": "yunet", "classifier": "enet_b2_7"}, {"yunet": "cpu", "enet_b2_7": "cpu"}
)


def publisher_status(**kw: object) -> PublisherStatus:
    """A publisher status with zero counts, connected unless told otherwise."""
    base: dict[str, object] = {
        "connected": True, "spool_pending": 0, "spool_dropped": 0, "spool_expired": 0,
        "events_published": 0, "events_rejected": 0, "inflight": 0, "reconnects": 0,
        "last_error": None,
    }  # fmt: skip
    return PublisherStatus(**{**base, **kw})  # type: ignore[arg-type]


def test_heartbeat_carries_the_contract_fields_and_only_the_per_camera_subset() -> None:
    hb = Heartbeat(
        ts="2026-01-01T00:00:00Z",
        device="dev",
        uptime_s=1.5,
        version="0.1.0",
        phase="sota_phase2",
        models=MODELS,
        cameras={"door": CAM.heartbeat(None)},
        spool=SpoolStatus.from_publisher(publisher_status(spool_pending=3, spool_dropped=1)),
    ).to_json()
    assert list(hb) == [
        "schema", "ts", "device", "uptime_s", "version", "phase",
        "models", "providers", "fallbacks", "cameras", "spool", "mqtt",
    ]  # fmt: skip
    assert hb["mqtt"] == {"connected": False, "reconnects": 0}  # no publisher given
    assert hb["schema"] == 1 and hb["spool"] == {"pending": 3, "dropped": 1}
    assert hb["models"] == {"detector": "yunet", "classifier": "enet_b2_7"}
    assert hb["providers"] == {"yunet": "cpu", "enet_b2_7": "cpu"}
    assert hb["cameras"] == {
        "door": {
            "state": "running",
            "fps_in": 25.0,
            "fps_processed": 5.0,
            "faces": None,  # withheld by the caller's privacy rule
            "dropped_frames": 80,
            "last_frame_age_s": 0.04,
            "inference_ms": None,  # no frame processed yet
        }
    }
    json.dumps(hb)


def test_a_health_snapshot_is_judged_as_its_json_form() -> None:
    snap = HealthSnapshot(
        uptime_s=3.0,
        version="0.1.0",
        phase="sota_phase2",
        models=MODELS,
        cameras={"door": CAM},
        mqtt=publisher_status(connected=False, last_error="tls handshake failed"),
        spool=SpoolStatus(),
        inference_busy_s=0.0,
        inference=InferenceStatus(),
    )
    data = snap.to_json()
    assert data["models"] == {"yunet": "cpu", "enet_b2_7": "cpu"}
    assert data["roles"] == {"detector": "yunet", "classifier": "enet_b2_7"}
    typed, plain = evaluate_health(snap, 5.0), evaluate_health(data, 5.0)
    assert typed == plain
    assert typed.status == "degraded"
    assert typed.reasons == ["mqtt disconnected: tls handshake failed"]
    assert typed.body["cameras"]["door"]["producing"] is True
