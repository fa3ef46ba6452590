"""Home Assistant MQTT discovery: the config payloads and their stable unique ids.

One sensor per camera: its smoothed emotion in ``tracks`` mode, its face count in
``aggregate`` mode (no per-person state exists to show then).
"""

from __future__ import annotations

import re

from edged import __version__
from edged.config import PrivacySettings, Settings
from edged.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, topics_for
from edged.privacy import per_person_allowed

#: Home Assistant object ids allow only these characters.
_HA_ID_RE = re.compile(r"[^A-Za-z0-9_-]")


def discovery_unique_id(device_id: str, camera_id: str) -> str:
    """Stable Home Assistant unique id (also the discovery object id) of a camera's sensor."""
    return _HA_ID_RE.sub("_", f"edged_{device_id}_{camera_id}_emotion")


def aggregate_unique_id(device_id: str, camera_id: str) -> str:
    """Home Assistant unique id of a camera's face-count sensor (aggregate mode)."""
    return _HA_ID_RE.sub("_", f"edged_{device_id}_{camera_id}_faces")


def discovery_config(settings: Settings, camera_id: str) -> dict[str, object]:
    """The Home Assistant MQTT discovery payload of one camera's emotion sensor."""
    topics = topics_for(settings)
    device_id = settings.device.id
    return {
        "name": f"{camera_id} emotion",
        "unique_id": discovery_unique_id(device_id, camera_id),
        "state_topic": topics.emotion(camera_id),
        "json_attributes_topic": topics.attributes(camera_id),
        "availability_topic": topics.status,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
        "icon": "mdi:emoticon-outline",
        "device": {
            "identifiers": [_HA_ID_RE.sub("_", f"edged_{device_id}")],
            "name": f"edged {device_id}",
            "model": "edged",
            "sw_version": __version__,
            "manufacturer": "edged",
        },
        "origin": {"name": "edged", "sw_version": __version__},
    }


def aggregate_discovery_config(
    settings: Settings, camera_id: str, privacy: PrivacySettings
) -> dict[str, object]:
    """Aggregate mode's Home Assistant sensor of one camera: the most faces seen at once in
    the last report, with the emotion distribution as attributes. It expires (shows
    unavailable) after three intervals without a report: none comes while fewer than
    ``min_faces`` faces are seen, and an old count must not pass for the present."""
    config = discovery_config(settings, camera_id)
    topic = topics_for(settings).aggregate(camera_id)
    config.update(
        {
            "name": f"{camera_id} faces",
            "unique_id": aggregate_unique_id(settings.device.id, camera_id),
            "state_topic": topic,
            "value_template": "{{ value_json.faces }}",
            "json_attributes_topic": topic,
            "json_attributes_template": "{{ value_json.emotions | tojson }}",
            "state_class": "measurement",
            "expire_after": max(1, round(3 * privacy.aggregate_interval_s)),
            "icon": "mdi:account-group",
        }
    )
    return config


def sensor_unique_id(settings: Settings, privacy: PrivacySettings, camera_id: str) -> str:
    """The camera's sensor under ``privacy``: its emotion, or in aggregate mode its count."""
    if per_person_allowed(privacy):
        return discovery_unique_id(settings.device.id, camera_id)
    return aggregate_unique_id(settings.device.id, camera_id)


def sensor_config(
    settings: Settings, privacy: PrivacySettings, camera_id: str
) -> dict[str, object]:
    """The discovery payload of the sensor :func:`sensor_unique_id` names."""
    if per_person_allowed(privacy):
        return discovery_config(settings, camera_id)
    return aggregate_discovery_config(settings, camera_id, privacy)
