"""Home Assistant MQTT discovery: one HA device per camera, linked to the edged device.

Device-based discovery (``<ha prefix>/device/<object id>/config``): one retained config
per device holds the device, the origin and every entity (``components``), so a camera
appears, changes and disappears as a whole; an empty retained config removes it.

* **The edged device** (``edged_<device>``): diagnostics from the heartbeat (spool depth,
  MQTT reconnects). Available while ``<base>/status`` says ``online``.
* **One device per camera** (``edged_<device>_<camera>``, ``via_device`` the edged device):
  the smoothed emotion (``device_class: enum`` with the classifier's labels plus ``none``),
  an ``event`` entity, face count, presence, and diagnostics (fps, dropped frames,
  inference latency). Available while both ``<base>/status`` and ``<base>/<camera>/status``
  say ``online`` (``availability_mode: all``): a dead camera shows as unavailable.

**Event types are the event's ``type``** (``appeared``/``changed``/``left``), not one per
emotion: the emotion travels as an attribute, so an automation triggers on "changed" and
reads ``emotion``/``previous``, and the list does not depend on the classifier.

In ``[privacy] mode = "aggregate"`` no per-person entity exists: a camera has its face
count from the aggregate report (with the emotion distribution as attributes) and its
diagnostics only.

Unique ids keep the names of the per-entity configs edged published before (the emotion
sensor stays ``edged_<device>_<camera>_emotion``), so Home Assistant keeps the entities.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from edged import __version__
from edged.config import PrivacySettings, Settings
from edged.contracts.events import EventType
from edged.models.catalog import CANONICAL_LABELS
from edged.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics, topics_for
from edged.privacy import per_person_allowed

#: Home Assistant object ids allow only these characters.
_HA_ID_RE = re.compile(r"[^A-Za-z0-9_-]")

#: The ``event`` entity's event types: the emotion event's ``type`` values.
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

#: The emotion sensor's state when no face is seen.
NO_EMOTION = "none"

#: Renders an edged event as Home Assistant's event payload, which needs ``event_type``.
EVENT_VALUE_TEMPLATE = (
    '{"event_type": {{ value_json.type | tojson }}, '
    '"emotion": {{ value_json.emotion | tojson }}, '
    '"previous": {{ value_json.previous | tojson }}, '
    '"confidence": {{ value_json.confidence | tojson }}, '
    '"track_id": {{ value_json.track_id | tojson }}}'
)

Component = dict[str, object]


def _ha_id(*parts: str) -> str:
    return _HA_ID_RE.sub("_", "_".join(parts))


def edged_device_identifier(device_id: str) -> str:
    """The edged device's Home Assistant identifier (and its discovery object id)."""
    return _ha_id("edged", device_id)


def camera_device_identifier(device_id: str, camera_id: str) -> str:
    """A camera's Home Assistant device identifier (and its discovery object id)."""
    return _ha_id("edged", device_id, camera_id)


def discovery_unique_id(device_id: str, camera_id: str) -> str:
    """Stable Home Assistant unique id of a camera's emotion sensor."""
    return _ha_id("edged", device_id, camera_id, "emotion")


def aggregate_unique_id(device_id: str, camera_id: str) -> str:
    """Home Assistant unique id of a camera's face-count sensor."""
    return _ha_id("edged", device_id, camera_id, "faces")


@dataclass(frozen=True)
class Discovery:
    """One retained discovery config and the topic it goes to."""

    topic: str
    config: dict[str, object]


def heartbeat_template(*path: str) -> str:
    """A template reading ``path`` from the heartbeat; a missing key renders ``None``, which
    Home Assistant shows as "unknown" instead of a template error."""
    expr = "value_json"
    for key in path[:-1]:
        expr += f".get({json.dumps(key)}, {{}})"
    return "{{ " + expr + f".get({json.dumps(path[-1])})" + " }}"


def _availability(topics: Topics, camera_id: str | None) -> dict[str, object]:
    entries = [topics.status] + ([topics.camera_status(camera_id)] if camera_id else [])
    return {
        "availability": [
            {
                "topic": t,
                "payload_available": STATUS_ONLINE,
                "payload_not_available": STATUS_OFFLINE,
            }
            for t in entries
        ],
        "availability_mode": "all",
    }


def _origin() -> dict[str, object]:
    return {"name": "edged", "sw_version": __version__}


def _diagnostic(uid: str, name: str, topic: str, template: str, **extra: object) -> Component:
    return {
        "platform": "sensor",
        "unique_id": uid,
        "name": name,
        "entity_category": "diagnostic",
        "state_topic": topic,
        "value_template": template,
        **extra,
    }


def device_discovery(settings: Settings) -> Discovery:
    """The edged device itself: the spool depth and MQTT reconnects, from the heartbeat."""
    topics = topics_for(settings)
    ident = edged_device_identifier(settings.device.id)
    beat = topics.heartbeat
    components: dict[str, Component] = {
        "spool_pending": _diagnostic(
            f"{ident}_spool_pending",
            "Spool depth",
            beat,
            heartbeat_template("spool", "pending"),
            state_class="measurement",
            icon="mdi:tray-full",
        ),
        "mqtt_reconnects": _diagnostic(
            f"{ident}_mqtt_reconnects",
            "MQTT reconnects",
            beat,
            heartbeat_template("mqtt", "reconnects"),
            state_class="total_increasing",
            icon="mdi:lan-disconnect",
        ),
    }
    config: dict[str, object] = {
        "device": {
            "identifiers": [ident],
            "name": f"edged {settings.device.id}",
            "manufacturer": "edged",
            "model": "edged",
            "sw_version": __version__,
        },
        "origin": _origin(),
        "components": components,
        **_availability(topics, None),
        "qos": 1,
    }
    return Discovery(topics.ha_device_config(ident), config)


def _per_person(
    topics: Topics, device_id: str, camera: str, labels: Sequence[str]
) -> dict[str, Component]:
    """Tracks mode: the emotion, its events, the face count and presence."""
    prefix = camera_device_identifier(device_id, camera)
    return {
        "emotion": {
            "platform": "sensor",
            "unique_id": discovery_unique_id(device_id, camera),
            "name": "Emotion",
            "device_class": "enum",
            "options": [*dict.fromkeys([*labels, NO_EMOTION])],
            "state_topic": topics.emotion(camera),
            "json_attributes_topic": topics.attributes(camera),
            "icon": "mdi:emoticon-outline",
        },
        "event": {
            "platform": "event",
            "unique_id": f"{prefix}_event",
            "name": "Emotion event",
            "event_types": list(EVENT_TYPES),
            "state_topic": topics.event(camera),
            "value_template": EVENT_VALUE_TEMPLATE,
            "icon": "mdi:account-switch",
        },
        "faces": {
            "platform": "sensor",
            "unique_id": aggregate_unique_id(device_id, camera),
            "name": "Faces",
            "state_topic": topics.attributes(camera),
            "value_template": "{{ value_json.faces }}",
            "state_class": "measurement",
            "icon": "mdi:account-multiple",
        },
        "presence": {
            "platform": "binary_sensor",
            "unique_id": f"{prefix}_presence",
            "name": "Presence",
            "device_class": "occupancy",
            "state_topic": topics.attributes(camera),
            "value_template": "{{ 'ON' if value_json.faces > 0 else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        },
    }


def _aggregate(
    topics: Topics, device_id: str, camera: str, privacy: PrivacySettings
) -> dict[str, Component]:
    """Aggregate mode: the most faces seen at once in the last report, the emotion
    distribution as attributes. It expires (unknown) after three intervals without a
    report: none comes while fewer than ``min_faces`` faces are seen, and an old count
    must not pass for the present."""
    topic = topics.aggregate(camera)
    return {
        "faces": {
            "platform": "sensor",
            "unique_id": aggregate_unique_id(device_id, camera),
            "name": "Faces",
            "state_topic": topic,
            "value_template": "{{ value_json.faces }}",
            "json_attributes_topic": topic,
            "json_attributes_template": "{{ value_json.emotions | tojson }}",
            "state_class": "measurement",
            "expire_after": max(1, round(3 * privacy.aggregate_interval_s)),
            "icon": "mdi:account-group",
        }
    }


#: A camera's diagnostic sensors, read from its heartbeat entry: field → (name, extras).
_CAMERA_DIAGNOSTICS: dict[str, tuple[str, dict[str, str]]] = {
    "fps_processed": (
        "Frames processed per second",
        {"unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:speedometer"},
    ),
    "dropped_frames": (
        "Dropped frames",
        {"state_class": "total_increasing", "icon": "mdi:filmstrip-off"},
    ),
    "inference_ms": (
        "Inference latency",
        {"device_class": "duration", "unit_of_measurement": "ms", "state_class": "measurement"},
    ),
}


def _camera_diagnostics(topics: Topics, device_id: str, camera: str) -> dict[str, Component]:
    prefix = camera_device_identifier(device_id, camera)
    return {
        key: _diagnostic(
            f"{prefix}_{key}",
            name,
            topics.heartbeat,
            heartbeat_template("cameras", camera, key),
            **extra,
        )
        for key, (name, extra) in _CAMERA_DIAGNOSTICS.items()
    }


def camera_discovery(
    settings: Settings, privacy: PrivacySettings, camera: str, labels: Sequence[str]
) -> Discovery:
    """One camera's device config under ``privacy``; ``labels`` are the classifier's."""
    topics = topics_for(settings)
    device_id = settings.device.id
    ident = camera_device_identifier(device_id, camera)
    if per_person_allowed(privacy):
        components = _per_person(topics, device_id, camera, labels or CANONICAL_LABELS)
    else:
        components = _aggregate(topics, device_id, camera, privacy)
    components.update(_camera_diagnostics(topics, device_id, camera))
    config: dict[str, object] = {
        "device": {
            "identifiers": [ident],
            "name": f"edged {device_id} {camera}",
            "manufacturer": "edged",
            "model": "edged camera",
            "sw_version": __version__,
            "via_device": edged_device_identifier(device_id),
        },
        "origin": _origin(),
        "components": components,
        **_availability(topics, camera),
        "qos": 1,
    }
    return Discovery(topics.ha_device_config(ident), config)


def discovery_configs(
    settings: Settings, privacy: PrivacySettings, cameras: Sequence[str], labels: Sequence[str]
) -> list[Discovery]:
    """Every config this device announces: the edged device first, then each camera."""
    return [device_discovery(settings)] + [
        camera_discovery(settings, privacy, camera, labels) for camera in cameras
    ]
