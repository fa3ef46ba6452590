"""Every topic this device uses, derived from the settings in one place."""

from __future__ import annotations

from dataclasses import dataclass

from edged.config import Settings
from edged.errors import PublishError

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"


@dataclass(frozen=True)
class Topics:
    """Every topic this device uses, derived once from the settings."""

    base: str
    ha_prefix: str

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    @property
    def config_set(self) -> str:
        return f"{self.base}/config/set"

    @property
    def config_result(self) -> str:
        return f"{self.base}/config/result"

    @property
    def ha_status(self) -> str:
        return f"{self.ha_prefix}/status"

    def event(self, camera_id: str) -> str:
        return f"{self.base}/{camera_id}/event"

    def emotion(self, camera_id: str) -> str:
        return f"{self.base}/{camera_id}/emotion"

    def attributes(self, camera_id: str) -> str:
        return f"{self.base}/{camera_id}/attributes"

    def camera_status(self, camera_id: str) -> str:
        """Retained ``online``/``offline``: is this camera producing frames."""
        return f"{self.base}/{camera_id}/status"

    def aggregate(self, camera_id: str) -> str:
        """Aggregate mode's per-camera report (counts and an emotion distribution)."""
        return f"{self.base}/{camera_id}/aggregate"

    def ha_device_config(self, object_id: str) -> str:
        """Home Assistant device-based discovery: one config per device, all its entities."""
        return f"{self.ha_prefix}/device/{object_id}/config"


def topics_for(settings: Settings) -> Topics:
    """``<topic_prefix>/<device id>`` and the Home Assistant discovery prefix."""
    return Topics(
        base=f"{settings.mqtt.topic_prefix}/{settings.device.id}",
        ha_prefix=settings.mqtt.homeassistant_prefix,
    )


def check_camera_id(camera_id: str) -> str:
    """Camera ids become topic levels: no empty level, no wildcard, no separator."""
    if not camera_id or any(c in camera_id for c in "/+#\0"):
        raise PublishError(f"camera id {camera_id!r} cannot be used as an MQTT topic level")
    return camera_id
