"""Home Assistant discovery against a real broker: every config this device retains under
``homeassistant/`` is collected and checked the way Home Assistant's MQTT integration
checks it (``homeassistant/components/mqtt/schemas.py`` DEVICE_DISCOVERY_SCHEMA and the
platform schemas of ``sensor``, ``binary_sensor`` and ``event``), its templates are
rendered with Jinja against real payloads, and per-camera availability is exercised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from edged.models.catalog import CANONICAL_LABELS
from edged.mqtt.homeassistant import EVENT_TYPES, EVENT_VALUE_TEMPLATE
from edged.mqtt.publisher import Publisher
from edged.mqtt.spool import Spool, spool_path
from tests.mqtt.payloads import attrs, event, heartbeat
from tests.mqtt.test_publishing import (
    BASE,
    DEVICE,
    has_payload,
    make_settings,
    retained_snapshot,
    start,
)
from tests.mqtt_helpers import MosquittoBroker, MqttRecorder, wait_until

EDGED_DEVICE = f"edged_{DEVICE}"
SEVEN = ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
PLATFORMS = {"sensor", "binary_sensor", "event"}


def device_topic(object_id: str) -> str:
    return f"homeassistant/device/{object_id}/config"


def collect_configs(broker: MosquittoBroker, count: int) -> dict[str, dict[str, Any]]:
    """What Home Assistant gets when it subscribes: every retained discovery config."""
    live = MqttRecorder(broker.host, broker.port, ["homeassistant/device/+/config"])
    try:  # first until the publisher has sent them all, then as a newcomer sees them
        live.wait_for(lambda m: len({x.topic for x in m if x.payload}) >= count, 10, "sent")
    finally:
        live.close()
    rec = MqttRecorder(broker.host, broker.port, ["homeassistant/device/+/config"])
    try:
        msgs = rec.wait_for(
            lambda m: len({x.topic for x in m if x.payload}) >= count, 10, f"{count} configs"
        )
    finally:
        rec.close()
    assert all(m.retain for m in msgs)
    return {m.topic: json.loads(m.payload) for m in msgs if m.payload}


def ha_problems(config: dict[str, Any]) -> list[str]:
    """What Home Assistant's voluptuous schemas would refuse in one device config."""
    out: list[str] = []
    device, origin = config.get("device", {}), config.get("origin", {})
    if not device.get("identifiers"):
        out.append("device needs identifiers (or connections)")
    if not isinstance(origin.get("name"), str):
        out.append("origin needs a name")
    if config.get("availability_mode", "latest") not in ("all", "any", "latest"):
        out.append("bad availability_mode")
    out += [
        f"availability entry without topic: {a}"
        for a in config["availability"]
        if not a.get("topic")
    ]
    for key, comp in config.get("components", {}).items():
        platform = comp.get("platform")
        if platform not in PLATFORMS:
            out.append(f"{key}: platform {platform!r}")
        if not comp.get("unique_id"):
            out.append(f"{key}: no unique_id")
        if platform == "sensor" and comp.get("device_class") == "enum":
            if not comp.get("options"):
                out.append(f"{key}: enum sensor needs options")
            if "unit_of_measurement" in comp or "state_class" in comp:
                out.append(f"{key}: enum sensor cannot have a unit or state_class")
        if platform == "event" and not comp.get("event_types"):
            out.append(f"{key}: event needs event_types")
        if not comp.get("state_topic", config.get("state_topic")):
            out.append(f"{key}: no state_topic")
    return out


def render(template: str, payload: object) -> str:
    """A value template as Home Assistant renders it (a sandboxed Jinja environment)."""
    return ImmutableSandboxedEnvironment().from_string(template).render(value_json=payload)


def test_every_discovery_config_passes_home_assistants_schema_with_unique_ids_and_linkage(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher]
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door", "hall"], SEVEN)
    configs = collect_configs(mqtt_broker, 3)
    assert set(configs) == {
        device_topic(EDGED_DEVICE),
        device_topic(f"{EDGED_DEVICE}_door"),
        device_topic(f"{EDGED_DEVICE}_hall"),
    }
    for topic, config in configs.items():
        assert ha_problems(config) == [], topic
    uids = [c["unique_id"] for cfg in configs.values() for c in cfg["components"].values()]
    assert len(uids) == len(set(uids)), "unique ids must be unique across all devices"
    edged = configs[device_topic(EDGED_DEVICE)]
    assert edged["device"]["identifiers"] == [EDGED_DEVICE]
    assert set(edged["components"]) == {"spool_pending", "mqtt_reconnects"}
    for camera in ("door", "hall"):
        cfg = configs[device_topic(f"{EDGED_DEVICE}_{camera}")]
        assert cfg["device"]["via_device"] == EDGED_DEVICE  # linked under the edged device
        assert [a["topic"] for a in cfg["availability"]] == [
            f"{BASE}/status",
            f"{BASE}/{camera}/status",
        ]
        assert cfg["availability_mode"] == "all"
        comps = cfg["components"]
        assert comps["emotion"]["options"] == [*SEVEN, "none"]
        assert comps["event"]["event_types"] == ["appeared", "changed", "left"]
        assert comps["presence"]["device_class"] == "occupancy"
        diagnostics = {k for k, c in comps.items() if c.get("entity_category") == "diagnostic"}
        assert diagnostics == {"fps_processed", "dropped_frames", "inference_ms"}


def test_what_each_field_of_a_camera_device_config_is_for(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher]
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door"])  # no labels from the caller: the canonical eight
    cfg = collect_configs(mqtt_broker, 2)[device_topic(f"{EDGED_DEVICE}_door")]
    # device: the HA device this camera is; identifiers make it one device across restarts,
    # via_device draws it under the edged device (the box the camera is attached to).
    assert cfg["device"]["identifiers"] == [f"{EDGED_DEVICE}_door"]
    assert cfg["device"]["via_device"] == EDGED_DEVICE
    # origin: who published the config (HA logs and shows it); name is required.
    assert cfg["origin"]["name"] == "edged"
    # availability + availability_mode all: unavailable when edged is offline (its will)
    # or when this camera produces no frames; payloads are what edged publishes there.
    assert {(a["payload_available"], a["payload_not_available"]) for a in cfg["availability"]} == {
        ("online", "offline")
    }
    # qos: HA subscribes to the state topics at QoS 1, as edged publishes them.
    assert cfg["qos"] == 1
    emotion = cfg["components"]["emotion"]
    # platform: which HA entity type; unique_id: the entity registry key (kept from the
    # per-entity configs of earlier releases, so the entity and its history stay).
    assert (emotion["platform"], emotion["unique_id"]) == ("sensor", f"{EDGED_DEVICE}_door_emotion")
    # device_class enum + options: automations and the UI offer exactly these states.
    assert emotion["device_class"] == "enum"
    assert emotion["options"] == [*CANONICAL_LABELS, "none"]
    # state_topic: the retained plain-string emotion; json_attributes_topic: faces/tracks.
    assert emotion["state_topic"] == f"{BASE}/door/emotion"
    assert emotion["json_attributes_topic"] == f"{BASE}/door/attributes"
    ev = cfg["components"]["event"]
    # event entity: fed by the non-retained event topic (HA ignores retained events);
    # event_types are the edged event types; value_template adds HA's event_type key.
    assert (ev["platform"], ev["state_topic"], ev["event_types"]) == (
        "event",
        f"{BASE}/door/event",
        list(EVENT_TYPES),
    )
    assert ev["value_template"] == EVENT_VALUE_TEMPLATE
    faces, presence = cfg["components"]["faces"], cfg["components"]["presence"]
    # face count and presence: both read "faces" of the retained attributes.
    assert faces["state_topic"] == presence["state_topic"] == f"{BASE}/door/attributes"
    assert faces["state_class"] == "measurement"  # a count HA may graph and keep stats of
    fps = cfg["components"]["fps_processed"]
    # entity_category diagnostic: shown apart from the controls and sensors; fed by the
    # heartbeat's per-camera block.
    assert (fps["entity_category"], fps["state_topic"]) == ("diagnostic", f"{BASE}/heartbeat")


def test_templates_render_home_assistant_payloads_from_real_edged_payloads() -> None:
    from edged.config import build_settings
    from edged.mqtt.homeassistant import camera_discovery, device_discovery

    settings = build_settings({"device": {"id": DEVICE}})
    comps: dict[str, Any] = camera_discovery(
        settings, settings.privacy, "door", CANONICAL_LABELS
    ).config["components"]  # type: ignore[assignment]
    changed = event(3, type="changed", emotion="sad", previous="happy").to_json()
    rendered = json.loads(render(comps["event"]["value_template"], changed))
    assert rendered == {
        "event_type": "changed",
        "emotion": "sad",
        "previous": "happy",
        "confidence": 0.9,
        "track_id": 3,
    }
    assert rendered["event_type"] in comps["event"]["event_types"]
    two, none = attrs(2, (1, "happy", 0.9), (2, None, None)).to_json(), attrs(0).to_json()
    assert render(comps["faces"]["value_template"], two) == "2"
    assert render(comps["presence"]["value_template"], two) == "ON"
    assert render(comps["presence"]["value_template"], none) == "OFF"
    beat = heartbeat()
    assert render(comps["fps_processed"]["value_template"], beat) == "4.9"
    assert render(comps["dropped_frames"]["value_template"], beat) == "0"
    # Not in today's heartbeat: "None", which Home Assistant shows as unknown.
    assert render(comps["inference_ms"]["value_template"], beat) == "None"
    edged = device_discovery(settings).config["components"]
    assert render(edged["spool_pending"]["value_template"], beat) == "0"  # type: ignore[index]


def test_camera_status_is_retained_resent_after_the_broker_lost_it_and_cleared_on_removal(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door", "hall"])
    pub.publish_camera_status("door", True)
    pub.publish_camera_status("hall", False)
    recorder.wait_for(has_payload(f"{BASE}/hall/status", b"offline"), what="hall offline")
    door = retained_snapshot(mqtt_broker, f"{BASE}/door/status")
    assert (door.payload, door.retain) == (b"online", True)
    mqtt_broker.stop()  # no persistence: the broker forgets every retained message
    wait_until(lambda: not pub.connected, what="outage seen")
    pub.publish_camera_status("door", False)  # changed while offline: latest wins
    mqtt_broker.start()
    recorder.wait_for(has_payload(f"{BASE}/door/status", b"offline"), 15, "re-sent")
    assert retained_snapshot(mqtt_broker, f"{BASE}/hall/status").payload == b"offline"
    pub.publish_discovery(["door"])
    for topic in (f"{BASE}/hall/status", device_topic(f"{EDGED_DEVICE}_hall")):
        recorder.wait_for(has_payload(topic, b""), what=f"{topic} emptied")
    pub.publish_camera_status("hall", True)  # no longer configured: ignored
    late = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    try:
        late.wait_for(has_payload(f"{BASE}/door/status", b"offline"), what="retained door")
        assert not [m for m in late.messages if "hall" in m.topic]
    finally:
        late.close()


def test_upgrade_empties_the_per_entity_configs_an_earlier_release_retained(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    old = f"homeassistant/sensor/{EDGED_DEVICE}_door_emotion/config"
    seed = MqttRecorder(mqtt_broker.host, mqtt_broker.port, ["unused/none"])
    seed.wait_subscribed()
    seed.client.publish(old, b'{"name": "door emotion"}', qos=1, retain=True).wait_for_publish(5)
    seed.close()
    spool = Spool(spool_path(tmp_path))  # what the earlier release recorded as owned
    spool.set_value("retained_topics", json.dumps([old]))
    spool.close()
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door"])
    new = device_topic(f"{EDGED_DEVICE}_door")
    recorder.wait_for(has_payload(old, b""), what="old config emptied")
    msgs = recorder.wait_for(lambda m: any(x.topic == new for x in m), what="device config")
    order = [
        (m.topic, m.payload) for m in msgs if m.topic == new or (m.topic, m.payload) == (old, b"")
    ]
    assert order[0] == (old, b""), (
        "the old entity is removed before the device config claims its unique id"
    )


def test_aggregate_mode_camera_device_has_face_count_and_diagnostics_only(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher]
) -> None:
    from edged.config import build_settings
    from tests.mqtt.test_publishing import settings_data

    data = settings_data(tmp_path, mqtt_broker)
    data["privacy"] = {"mode": "aggregate"}
    pub = start(publishers, build_settings(data))
    pub.publish_discovery(["door"])
    cfg = collect_configs(mqtt_broker, 2)[device_topic(f"{EDGED_DEVICE}_door")]
    assert ha_problems(cfg) == []
    comps = cfg["components"]
    assert set(comps) == {"faces", "fps_processed", "dropped_frames", "inference_ms"}
    assert comps["faces"]["state_topic"] == f"{BASE}/door/aggregate"
