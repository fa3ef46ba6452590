"""Validate payloads against the JSON Schemas shipped in ``edged/schemas``.

``schema_for_topic`` says which schema a topic's payload follows; ``payload_problems``
checks a list of received messages; the ``validated_payloads`` fixture checks every JSON
payload any :class:`~tests.mqtt_helpers.MqttRecorder` receives during a test (tests/mqtt
use it for every test; the daemon integration tests can request it by name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from edged.schemas import load_schema
from tests.mqtt_helpers import Message, MqttRecorder

#: Topic (under ``<prefix>/<device>``) -> the schema its payload follows. ``config/set`` is
#: left out: tests send invalid requests on purpose, and the daemon is the one to refuse.
_TOPIC_SCHEMAS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^[^/]+/[^/]+/heartbeat$"), "heartbeat"),
    (re.compile(r"^[^/]+/[^/]+/config/result$"), "config-result"),
    (re.compile(r"^[^/]+/[^/]+/[^/]+/event$"), "event"),
    (re.compile(r"^[^/]+/[^/]+/[^/]+/attributes$"), "attributes"),
    (re.compile(r"^[^/]+/[^/]+/[^/]+/aggregate$"), "aggregate"),
]


@cache
def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_for_topic(topic: str) -> str | None:
    if topic.startswith("homeassistant/"):
        return None
    return next((name for pattern, name in _TOPIC_SCHEMAS if pattern.match(topic)), None)


def problems(name: str, payload: bytes | Mapping[str, Any]) -> list[str]:
    """Why ``payload`` does not follow schema ``name`` (empty: it does)."""
    try:
        data = json.loads(payload) if isinstance(payload, bytes) else payload
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(name).iter_errors(data)
    ]


def assert_valid(name: str, payload: bytes | Mapping[str, Any]) -> None:
    found = problems(name, payload)
    assert not found, f"{name} payload does not follow edged/schemas/{name}.schema.json: {found}"


def payload_problems(messages: Iterable[Message]) -> list[str]:
    """Every received JSON payload checked against its topic's schema (clears skipped)."""
    out: list[str] = []
    for m in messages:
        name = schema_for_topic(m.topic)
        if name is not None and m.payload:
            out += [f"{m.topic} ({name}): {p}" for p in problems(name, m.payload)]
    return out


@pytest.fixture
def validated_payloads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Check every payload every recorder receives in this test; fails the test at teardown
    listing the ones that break their schema. Yields the (live) list of problems."""
    found: list[str] = []
    original = MqttRecorder._on_message

    def checking(self: MqttRecorder, client: Any, userdata: Any, msg: Any) -> None:
        found.extend(payload_problems([Message(msg.topic, bytes(msg.payload), msg.retain)]))
        original(self, client, userdata, msg)

    monkeypatch.setattr(MqttRecorder, "_on_message", checking)
    yield found
    assert not found, "payloads that break their schema:\n" + "\n".join(found[:20])
