"""Every payload a recorder receives in an MQTT test is checked against its shipped schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mqtt_helpers import MosquittoBroker, MqttRecorder
from tests.schema_helpers import validated_payloads

__all__ = ["validated_payloads"]


@pytest.fixture(autouse=True)
def _every_payload_follows_its_schema(validated_payloads: list[str]) -> None:
    """Autouse wrapper: the check runs in every test of tests/mqtt."""


@pytest.fixture
def recorder(mqtt_broker: MosquittoBroker) -> Iterator[MqttRecorder]:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    rec.wait_subscribed()
    yield rec
    rec.close()
