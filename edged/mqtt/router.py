"""Inbound MQTT: which topics edged subscribes to and where each message goes.

Handlers are plain callables, so the transport knows nothing of reloads or discovery:
``config/set`` goes to the daemon's hook (a :class:`ConfigRequest`: the raw bytes and,
under MQTT 5, where and how to answer), Home Assistant's birth message
(``<ha prefix>/status`` = ``online``) to whoever re-sends discovery.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import structlog

from edged.contracts.events import ConfigResult
from edged.mqtt.topics import STATUS_ONLINE, Topics

log = structlog.get_logger(__name__)


#: Payloads larger than this are not parsed for their ``id`` (the daemon refuses them).
MAX_ID_PAYLOAD_BYTES = 64 * 1024


def reply_topic(topic: str | None) -> str | None:
    """A response topic we can publish to: no wildcard, no empty or NUL-bearing name."""
    if not topic or any(c in topic for c in "+#\0"):
        return None
    return topic


def sendable_result(result: ConfigResult | bool, error: str | None = None) -> ConfigResult:
    """The answer to a ``config/set`` as it can go out: the older ``(ok, error)`` pair made
    a :class:`ConfigResult`, and an error that echoes what UTF-8 cannot encode escaped."""
    if isinstance(result, bool):
        result = ConfigResult.now(result, error)
    if result.error is not None:
        clean = result.error.encode("utf-8", "backslashreplace").decode("utf-8")
        result = ConfigResult(result.ok, clean, result.ts, result.id, result.schema)
    return result


@dataclass(frozen=True)
class ConfigRequest:
    """One inbound ``config/set``: its payload and the MQTT 5 request/response properties.

    ``response_topic`` and ``correlation_data`` are ``None`` under 3.1.1 or when the sender
    set none; pass both to :meth:`~edged.mqtt.publisher.Publisher.publish_config_result`
    so the answer reaches the sender's reply topic with its correlation data.
    """

    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None

    @property
    def request_id(self) -> str | None:
        """The request's ``"id"`` (a string), echoed in ``config/result``; ``None`` when the
        payload has none or is not a JSON object (the answer then still goes out)."""
        if len(self.payload) > MAX_ID_PAYLOAD_BYTES:
            return None  # refused as too large anyway; not worth parsing for its id
        try:
            data = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is refused
            return None
        rid = data.get("id") if isinstance(data, dict) else None
        return rid if isinstance(rid, str) else None

    @classmethod
    def from_message(cls, msg: mqtt.MQTTMessage) -> ConfigRequest:
        props = getattr(msg, "properties", None)
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        return cls(
            payload=bytes(msg.payload),
            response_topic=topic if isinstance(topic, str) and topic else None,
            correlation_data=bytes(corr) if isinstance(corr, (bytes, bytearray)) else None,
        )


class Router:
    """Subscriptions and dispatch of inbound messages. Called on paho's network thread.

    ``on_config_set`` may be replaced at any time; the subscription to ``config/set``
    exists only while it is set (taken at the next connection).
    """

    def __init__(
        self,
        on_config_set: Callable[[ConfigRequest], None] | None,
        on_homeassistant_online: Callable[[], None],
    ) -> None:
        self.on_config_set = on_config_set
        self._on_ha_online = on_homeassistant_online

    def subscriptions(self, topics: Topics, homeassistant: bool) -> list[tuple[str, int]]:
        """What to subscribe to on a new connection (QoS 1 each)."""
        subs: list[tuple[str, int]] = []
        if self.on_config_set is not None:
            subs.append((topics.config_set, 1))
        if homeassistant:
            subs.append((topics.ha_status, 1))
        return subs

    def dispatch(self, topics: Topics, msg: mqtt.MQTTMessage) -> None:
        """Hand one inbound message to its handler; a faulty handler is logged, not raised
        (paho's thread must survive it)."""
        if msg.topic == topics.ha_status:
            if msg.payload.strip() == STATUS_ONLINE.encode():
                self._on_ha_online()
            return
        if msg.topic != topics.config_set:
            return
        if msg.retain:
            log.warning(
                "config_set_retained_ignored",
                topic=msg.topic,
                note="publish config/set without the retain flag",
            )
            return
        hook = self.on_config_set
        if hook is None:
            return
        try:
            hook(ConfigRequest.from_message(msg))
        except Exception as exc:  # the paho thread must survive a faulty hook
            log.exception("config_set_hook_failed", error=str(exc))
