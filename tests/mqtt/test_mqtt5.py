"""MQTT 5 properties against a real broker with a real MQTT 5 subscriber: content types,
heartbeat expiry, and request/response for config/set; and the same calls under 3.1.1,
where none of these exist and everything still works."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edged.contracts.events import ConfigResult
from edged.mqtt.publisher import Publisher
from edged.mqtt.router import ConfigRequest
from tests.mqtt.payloads import attrs, event, heartbeat
from tests.mqtt.test_publishing import BASE, has_payload, make_settings, start
from tests.mqtt_helpers import MosquittoBroker, MqttRecorder
from tests.schema_helpers import assert_valid

REPLIES = "operator/replies"


def _props_of(rec: MqttRecorder, topic: str) -> object:
    return next(p for t, p in rec.properties if t == topic)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_config_result_echoes_the_request_id_and_under_mqtt5_answers_on_the_response_topic(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher], protocol: str
) -> None:
    got: list[ConfigRequest] = []
    arrived = threading.Event()

    def hook(request: ConfigRequest) -> None:
        got.append(request)
        arrived.set()

    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, protocol=protocol)
    rec.wait_subscribed()
    try:
        settings = make_settings(tmp_path, mqtt_broker, protocol=protocol)
        pub = start(publishers, settings, on_config_request=hook)
        rec.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
        props = None
        if protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = REPLIES
            props.CorrelationData = b"req-42"
        body = b'{"id": "r-1", "smoothing": {"alpha": 0.5}}'
        for _ in range(50):  # until the subscription made on connect has certainly landed
            rec.client.publish(f"{BASE}/config/set", body, qos=1, properties=props)
            if arrived.wait(0.2):
                break
        request = got[0]
        assert (request.payload, request.request_id) == (body, "r-1")
        result = ConfigResult.now(False, "smoothing.alpha: bad", request.request_id)
        assert pub.publish_config_result(
            result,
            response_topic=request.response_topic,
            correlation_data=request.correlation_data,
        )
        answer_topic = REPLIES if protocol == "5" else f"{BASE}/config/result"
        msgs = rec.wait_for(lambda m: any(x.topic == answer_topic for x in m), what="answer")
        answer = next(m for m in msgs if m.topic == answer_topic)
        assert_valid("config-result", answer.payload)
        assert json.loads(answer.payload)["id"] == "r-1" and not answer.retain
        if protocol == "5":
            assert (request.response_topic, request.correlation_data) == (REPLIES, b"req-42")
            reply_props = _props_of(rec, REPLIES)
            assert reply_props.CorrelationData == b"req-42"  # type: ignore[attr-defined]
            assert reply_props.ContentType == "application/json"  # type: ignore[attr-defined]
            assert not rec.on(f"{BASE}/config/result")
        else:
            assert (request.response_topic, request.correlation_data) == (None, None)
    finally:
        rec.close()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_payloads_carry_content_types_and_heartbeats_expire_under_mqtt5(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher], protocol: str
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, protocol="5")  # reads properties
    rec.wait_subscribed()
    try:
        pub = start(publishers, make_settings(tmp_path, mqtt_broker, protocol=protocol))
        rec.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
        pub.publish_discovery(["door"])
        pub.publish_camera_status("door", True)
        pub.publish_state("door", "happy", attrs(1, (1, "happy", 0.9)))
        pub.publish_event("door", event(1))
        assert pub.publish_heartbeat(heartbeat())
        assert pub.publish_config_result(True, None)  # the older (ok, error) form
        expected = {
            f"{BASE}/status": "text/plain",
            f"{BASE}/door/status": "text/plain",
            f"{BASE}/door/emotion": "text/plain",
            f"{BASE}/door/attributes": "application/json",
            f"{BASE}/door/event": "application/json",
            f"{BASE}/heartbeat": "application/json",
            f"{BASE}/config/result": "application/json",
            "homeassistant/device/edged_dev1_door/config": "application/json",
        }
        rec.wait_for(lambda m: set(expected) <= {x.topic for x in m}, what="every topic")
        types = {t: getattr(_props_of(rec, t), "ContentType", None) for t in expected}
        expiry = getattr(_props_of(rec, f"{BASE}/heartbeat"), "MessageExpiryInterval", None)
        if protocol == "5":
            assert types == expected
            assert expiry is not None and 0 < expiry <= 60  # 2 x heartbeat_s (30 s)
        else:
            assert set(types.values()) == {None} and expiry is None
        result = json.loads(rec.payloads(f"{BASE}/config/result")[-1])
        assert (result["ok"], result["id"]) == (True, None)
    finally:
        rec.close()
