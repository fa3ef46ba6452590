"""The shipped JSON Schemas against what edged really produces: every contract's
``to_json()`` (in every privacy shape) validates, every property a schema declares is
produced by some shape, the daemon's heartbeat and /health body validate, and
``edged schema`` prints the shipped files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from edged.cli.app import app
from edged.config import Settings, build_settings
from edged.contracts.events import AggregateReport, ConfigResult
from edged.schemas import SCHEMAS, load_schema, schema_text
from edged.service.daemon import Daemon
from edged.service.health import evaluate_health
from tests.mqtt.payloads import attrs, event, heartbeat
from tests.schema_helpers import assert_valid, schema_for_topic

REPO = Path(__file__).resolve().parent.parent

#: Each schema of a contract this repo owns -> payloads in every shape it is produced in.
PRODUCED: dict[str, list[dict[str, Any]]] = {
    "event": [
        event(1).to_json(),
        event(2, type="changed", previous="happy", emotion="sad").to_json(),
        event(3, scores=None, bbox=None).to_json(),  # [privacy] withholds them
        event(4, type="left", emotion=None).to_json(),
    ],
    "attributes": [
        attrs(2, (1, "happy", 0.9), (2, None, None)).to_json(),
        attrs(0).to_json(),
    ],
    "aggregate": [
        AggregateReport(
            "2026-01-01T00:00:00.000Z", "dev", "door", 60.0, 10, 2, 1.5, {"happy": 1.0}
        ).to_json(),
    ],
    "config-result": [
        ConfigResult.now(True, None).to_json(),
        ConfigResult.now(False, "smoothing.alpha: bad", "r-1").to_json(),
    ],
    "config-set": [
        {"id": "r-1", "token": "t", "smoothing": {"alpha": 0.5}},
        {"cameras": [{"id": "door", "source": "0"}], "privacy": {"mode": "aggregate"}},
        {"pipeline": {"phase": "lite"}, "mqtt": {"heartbeat_s": 10}, "health": {}},
        # well-formed, and refused by the daemon with an answer (never changeable remotely)
        {"device": {"state_dir": "/tmp"}, "models": {"dir": "/tmp"}},
    ],
}


def properties(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path a schema declares (nested objects and array items too)."""
    out: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        out.add(prefix + key)
        out |= properties(sub, f"{prefix}{key}.")
        if isinstance(sub.get("items"), dict):
            out |= properties(sub["items"], f"{prefix}{key}[].")
    return out


def produced(payloads: Iterable[Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for p in payloads:
        if isinstance(p, dict):
            for key, value in p.items():
                out.add(prefix + key)
                out |= produced([value], f"{prefix}{key}.")
        elif isinstance(p, list):
            out |= produced(p, prefix.rstrip(".") + "[].")
    return out


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_shipped_schema_is_a_valid_draft_2020_12_schema_with_its_version(
    name: str,
) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    if name != "config-set":  # accepted, not published: the one payload without a version
        assert schema["properties"]["schema"] == {  # type: ignore[index]
            "const": 1,
            "description": "payload schema version; a breaking change increments it",
        }


@pytest.mark.parametrize("name", list(PRODUCED))
def test_contract_payloads_validate_and_produce_every_declared_property(name: str) -> None:
    for payload in PRODUCED[name]:
        assert_valid(name, payload)
    assert properties(load_schema(name)) <= produced(PRODUCED[name])


def test_config_set_schema_names_every_config_section() -> None:
    declared = set(load_schema("config-set")["properties"])  # type: ignore[arg-type]
    assert declared - {"id", "token"} == set(Settings.model_fields)


def test_the_daemons_heartbeat_and_health_body_follow_their_schemas(tmp_path: Path) -> None:
    daemon = Daemon(build_settings({"device": {"id": "dev", "state_dir": str(tmp_path)}}), None)
    assert_valid("heartbeat", daemon.heartbeat().to_json())
    assert_valid("heartbeat", heartbeat())  # the tests' stand-in has the daemon's shape
    report = evaluate_health(daemon.snapshot(), 10.0)
    assert_valid("health", report.body)


def test_topics_map_to_their_schemas() -> None:
    assert schema_for_topic("edged/dev/door/event") == "event"
    assert schema_for_topic("edged/dev/heartbeat") == "heartbeat"
    assert schema_for_topic("edged/dev/config/result") == "config-result"
    assert schema_for_topic("edged/dev/door/emotion") is None  # plain text
    assert schema_for_topic("homeassistant/device/x/config") is None


def test_edged_schema_prints_one_shipped_schema_or_all_of_them() -> None:
    runner = CliRunner()
    one = runner.invoke(app, ["schema", "event"])
    assert one.exit_code == 0 and one.output == schema_text("event")
    every = runner.invoke(app, ["schema"])
    assert every.exit_code == 0 and set(json.loads(every.output)) == set(SCHEMAS)
    bad = runner.invoke(app, ["schema", "nope"])
    assert bad.exit_code == 1 and "no schema 'nope'" in bad.output


def test_the_asyncapi_document_refers_to_every_shipped_schema() -> None:
    text = (REPO / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    assert text.startswith("asyncapi: 3.0.0")
    for name in SCHEMAS:
        if name != "health":  # HTTP, not a topic
            assert f"edged/schemas/{name}.schema.json" in text, name
