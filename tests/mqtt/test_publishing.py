"""The MQTT publisher against a real Mosquitto broker and a real paho subscriber: status and
last will, ordered QoS 1 events through the spool, retained state, Home Assistant
discovery, heartbeats, remote configuration, broker outages and publisher restarts, both
protocol versions, password files and TLS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edged.config import Settings, build_settings
from edged.errors import ConfigError, EdgedError, PublishError, SpoolError
from edged.mqtt.publisher import Publisher, discovery_unique_id
from tests.mqtt.payloads import attrs, event, heartbeat
from tests.mqtt_helpers import Message, MosquittoBroker, MqttRecorder, wait_until

DEVICE = "dev1"
BASE = f"edged/{DEVICE}"


def settings_data(state_dir: Path, broker: MosquittoBroker, **mqtt: Any) -> dict[str, Any]:
    return {
        "device": {"id": DEVICE, "state_dir": str(state_dir)},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "keepalive_s": 5,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            **mqtt,
        },
    }


def make_settings(state_dir: Path, broker: MosquittoBroker, **mqtt: Any) -> Settings:
    return build_settings(settings_data(state_dir, broker, **mqtt))


def start(publishers: list[Publisher], settings: Settings, **kw: Any) -> Publisher:
    pub = Publisher(settings, **kw)
    publishers.append(pub)
    pub.start()
    return pub


def events_on(messages: list[Message], camera: str = "door") -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{BASE}/{camera}/event"]


def first_delivery_order(events: list[dict[str, Any]]) -> list[int]:
    """Event sequence numbers in order of first arrival (duplicates are allowed)."""
    seen: list[int] = []
    for ev in events:
        if ev["track_id"] not in seen:
            seen.append(ev["track_id"])
    return seen


def has_payload(topic: str, payload: bytes) -> Any:
    return lambda msgs: any(m.topic == topic and m.payload == payload for m in msgs)


def retained_snapshot(broker: MosquittoBroker, topic: str, timeout: float = 5.0) -> Message:
    """What a brand-new subscriber gets for ``topic``: the retained message."""
    rec = MqttRecorder(broker.host, broker.port, [topic])
    try:
        msgs = rec.wait_for(
            lambda m: any(x.topic == topic for x in m), timeout, f"retained {topic}"
        )
        return next(m for m in msgs if m.topic == topic)
    finally:
        rec.close()


# -- status and last will ------------------------------------------------------------------


def test_online_is_retained_on_connect_and_clean_stop_publishes_retained_offline(
    tmp_path: Path, mqtt_broker: MosquittoBroker, recorder: MqttRecorder
) -> None:
    pub = Publisher(make_settings(tmp_path, mqtt_broker))
    pub.start()
    recorder.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
    status = retained_snapshot(mqtt_broker, f"{BASE}/status")
    assert (status.payload, status.retain) == (b"online", True)
    assert pub.stats().connected is True
    pub.stop(timeout=3.0)
    recorder.wait_for(has_payload(f"{BASE}/status", b"offline"), what="offline")
    status = retained_snapshot(mqtt_broker, f"{BASE}/status")
    assert (status.payload, status.retain) == (b"offline", True)


_CHILD = """
import json, sys
from edged.config import build_settings
from edged.logs import configure_logging
from edged.mqtt.publisher import Publisher
from tests.mqtt.payloads import event
configure_logging("warning", "json")
pub = Publisher(build_settings(json.loads(sys.argv[1])))
pub.start()
for seq in range(int(sys.argv[2])):
    pub.publish_event("door", event(seq))
    print(seq, flush=True)
print("ready", flush=True)
sys.stdin.read()
"""


def spawn_publisher(data: dict[str, Any], events: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(data), str(events)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def kill_9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def test_last_will_publishes_retained_offline_after_the_publisher_is_killed(
    tmp_path: Path, mqtt_broker: MosquittoBroker, recorder: MqttRecorder
) -> None:
    proc = spawn_publisher(settings_data(tmp_path, mqtt_broker, keepalive_s=5))
    try:
        recorder.wait_for(has_payload(f"{BASE}/status", b"online"), 20, "online")
    finally:
        kill_9(proc)
    # The broker notices after 1.5 keepalives (7.5 s) and publishes the will.
    recorder.wait_for(has_payload(f"{BASE}/status", b"offline"), 20, "will")
    status = retained_snapshot(mqtt_broker, f"{BASE}/status")
    assert (status.payload, status.retain) == (b"offline", True)


def test_last_will_fires_after_keepalive_expiry_when_the_publisher_hangs(
    tmp_path: Path, mqtt_broker: MosquittoBroker, recorder: MqttRecorder
) -> None:
    """A frozen process keeps its socket open: only the keepalive can reveal it."""
    proc = spawn_publisher(settings_data(tmp_path, mqtt_broker, keepalive_s=5))
    try:
        recorder.wait_for(has_payload(f"{BASE}/status", b"online"), 20, "online")
        os.kill(proc.pid, signal.SIGSTOP)
        # No PINGREQ for 1.5 keepalives (7.5 s): the broker drops it and sends the will.
        recorder.wait_for(has_payload(f"{BASE}/status", b"offline"), 20, "will on keepalive")
    finally:
        kill_9(proc)
    assert "edged-dev1 has exceeded timeout" in mqtt_broker.log(tail=0)


# -- events ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_events_arrive_in_order_at_qos1_and_leave_the_spool_empty(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
    protocol: str,
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker, protocol=protocol))
    for seq in range(60):
        assert pub.publish_event("door", event(seq)) > 0
    msgs = recorder.wait_for(lambda m: len(events_on(m)) >= 60, what="60 events")
    got = events_on(msgs)
    assert [e["track_id"] for e in got] == list(range(60))
    assert all(not m.retain for m in msgs if m.topic.endswith("/event"))
    wait_until(lambda: pub.stats().spool_pending == 0, what="spool drained")
    stats = pub.stats()
    assert stats.events_published == 60
    assert stats.spool_dropped == 0


def test_events_published_before_the_broker_exists_are_sent_once_it_does(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    pub = start(publishers, make_settings(tmp_path / "state", broker))  # nothing listening
    for seq in range(5):
        pub.publish_event("door", event(seq))
    assert pub.stats().connected is False
    assert pub.stats().spool_pending == 5
    broker.start()
    try:
        # Acknowledged by the broker (PUBACK) and only then removed from the spool.
        wait_until(lambda: pub.stats().spool_pending == 0, 15, "spool drained")
        assert pub.stats().events_published == 5
        assert pub.stats().connected is True
    finally:
        broker.kill()


def test_on_online_is_called_once_on_every_new_connection(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    """The daemon sends its heartbeat from this hook: at once on each connection, however
    short, instead of at its loop's next poll."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    rec = MqttRecorder(broker.host, broker.port, [f"{BASE}/status"])
    calls: list[float] = []
    try:
        rec.wait_subscribed()
        pub = start(
            publishers,
            make_settings(tmp_path / "state", broker),
            on_online=lambda: calls.append(time.monotonic()),
        )
        wait_until(lambda: len(calls) == 1, what="the first connection's hook")
        rec.wait_for(has_payload(f"{BASE}/status", b"online"), what="online, said before it")
        broker.stop()
        wait_until(lambda: not pub.stats().connected, what="publisher sees the outage")
        assert len(calls) == 1
        broker.start()
        wait_until(lambda: len(calls) == 2, 20, "the hook again after reconnecting")
    finally:
        rec.close()
        broker.kill()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_outage_events_arrive_in_order_after_the_broker_restarts_on_the_same_port(
    tmp_path: Path, publishers: list[Publisher], protocol: str
) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    # A persistent session: the broker queues QoS 1 messages for the recorder even while it
    # is itself reconnecting after the restart, so nothing depends on who reconnects first.
    rec = MqttRecorder(
        broker.host, broker.port, [f"{BASE}/#"], client_id="outage-rec", clean_session=False
    )
    try:
        rec.wait_subscribed()
        pub = start(publishers, make_settings(tmp_path / "state", broker, protocol=protocol))
        rec.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
        for seq in range(10):
            pub.publish_event("door", event(seq))
        broker.stop()
        wait_until(lambda: not pub.stats().connected, what="publisher sees the outage")
        for seq in range(10, 40):
            pub.publish_event("door", event(seq))
        assert pub.stats().spool_pending >= 30
        broker.start()
        msgs = rec.wait_for(
            lambda m: set(range(40)) <= {e["track_id"] for e in events_on(m)}, 20, "all 40 events"
        )
        assert first_delivery_order(events_on(msgs)) == list(range(40))
        wait_until(lambda: pub.stats().spool_pending == 0, what="spool drained")
        assert pub.stats().reconnects >= 1
    finally:
        rec.close()
        broker.kill()


def test_spooled_events_survive_a_publisher_kill_9_and_are_sent_by_the_next_one(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # down while the first publisher runs
    data = settings_data(tmp_path / "state", broker)
    proc = spawn_publisher(data, events=25)
    assert proc.stdout is not None
    acknowledged = 0
    try:
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            acknowledged = int(line) + 1
    finally:
        kill_9(proc)
    assert acknowledged == 25
    broker.start()
    rec = MqttRecorder(broker.host, broker.port, [f"{BASE}/#"])
    try:
        rec.wait_subscribed()
        pub = start(publishers, build_settings(data))
        msgs = rec.wait_for(lambda m: len(events_on(m)) >= 25, 15, "25 spooled events")
        assert first_delivery_order(events_on(msgs)) == list(range(25))
        wait_until(lambda: pub.stats().spool_pending == 0, what="spool drained")
    finally:
        rec.close()
        broker.kill()


def test_spool_bound_drops_oldest_events_during_an_outage_and_reports_it(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # never started during the outage
    data = settings_data(tmp_path / "state", broker, spool_max_events=5)
    pub = start(publishers, build_settings(data))
    for seq in range(12):
        pub.publish_event("door", event(seq))
    stats = pub.stats()
    assert (stats.spool_pending, stats.spool_dropped) == (5, 7)
    broker.start()
    rec = MqttRecorder(broker.host, broker.port, [f"{BASE}/#"])
    try:
        rec.wait_subscribed()
        pub.stop(timeout=1.0)  # restart so the recorder is subscribed before the resend
        pub2 = start(publishers, build_settings(data))
        msgs = rec.wait_for(lambda m: len(events_on(m)) >= 5, 15, "5 newest events")
        assert first_delivery_order(events_on(msgs)) == [7, 8, 9, 10, 11]
        assert pub2.stats().spool_dropped == 7  # persisted across the restart
    finally:
        rec.close()
        broker.kill()


# -- state, discovery, heartbeat ---------------------------------------------------------------


def test_state_is_retained_and_republished_after_the_broker_lost_it(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    state = attrs(1, (3, "happy", 0.9))
    pub.publish_state("door", "happy", state)
    recorder.wait_for(has_payload(f"{BASE}/door/emotion", b"happy"), what="emotion")
    emotion = retained_snapshot(mqtt_broker, f"{BASE}/door/emotion")
    assert (emotion.payload, emotion.retain) == (b"happy", True)
    attributes = retained_snapshot(mqtt_broker, f"{BASE}/door/attributes")
    assert json.loads(attributes.payload) == state.to_json() and attributes.retain
    # The broker keeps no persistence: a restart forgets every retained message.
    mqtt_broker.stop()
    wait_until(lambda: not pub.stats().connected, what="publisher sees the outage")
    pub.publish_state("door", "sad", attrs(1))  # changed while offline: latest wins
    mqtt_broker.start()
    recorder.wait_for(has_payload(f"{BASE}/door/emotion", b"sad"), 15, "state re-published")
    emotion = retained_snapshot(mqtt_broker, f"{BASE}/door/emotion")
    assert (emotion.payload, emotion.retain) == (b"sad", True)
    status = retained_snapshot(mqtt_broker, f"{BASE}/status")
    assert status.payload == b"online"


def test_unchanged_state_is_not_resent_on_the_same_connection(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    recorder.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
    for _ in range(3):
        pub.publish_state("door", "neutral", attrs(0))
    pub.publish_state("door", "happy", attrs(0))
    recorder.wait_for(has_payload(f"{BASE}/door/emotion", b"happy"), what="happy")
    assert recorder.payloads(f"{BASE}/door/emotion") == [b"neutral", b"happy"]
    assert recorder.payloads(f"{BASE}/door/attributes") == [b'{"schema":1,"faces":0,"tracks":[]}']


def test_discovery_configs_are_retained_and_resent_when_homeassistant_comes_online(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door", "hall"])
    uid = discovery_unique_id(DEVICE, "door")
    assert uid == "edged_dev1_door_emotion"
    topic = "homeassistant/device/edged_dev1_door/config"
    config = json.loads(retained_snapshot(mqtt_broker, topic).payload)
    emotion = config["components"]["emotion"]
    assert emotion["unique_id"] == uid
    assert emotion["state_topic"] == f"{BASE}/door/emotion"
    assert emotion["json_attributes_topic"] == f"{BASE}/door/attributes"
    assert config["availability"][0]["topic"] == f"{BASE}/status"
    availability = config["availability"][0]
    assert (availability["payload_available"], availability["payload_not_available"]) == (
        "online",
        "offline",
    )
    assert config["device"]["model"] == "edged camera"
    assert {"identifiers", "name", "sw_version", "manufacturer"} <= set(config["device"])
    hall = retained_snapshot(mqtt_broker, "homeassistant/device/edged_dev1_hall/config")
    assert hall.retain
    recorder.wait_for(lambda m: any(x.topic == topic for x in m), what="first config")
    before = len(recorder.on(topic))
    # Home Assistant restarts and announces itself: discovery is sent again.
    ha = MqttRecorder(mqtt_broker.host, mqtt_broker.port, ["unused/none"])
    ha.wait_subscribed()
    ha.client.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    ha.close()
    recorder.wait_for(lambda m: len([x for x in m if x.topic == topic]) > before, what="resend")


def test_removed_camera_has_its_discovery_and_retained_state_cleared(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door", "hall"])
    pub.publish_state("hall", "angry", attrs(1))
    hall_config = "homeassistant/device/edged_dev1_hall/config"
    recorder.wait_for(has_payload(f"{BASE}/hall/emotion", b"angry"), what="hall state")
    recorder.wait_for(lambda m: any(x.topic == hall_config for x in m), what="hall config")
    pub.publish_discovery(["door"])  # reload removed "hall"
    for topic in (hall_config, f"{BASE}/hall/emotion", f"{BASE}/hall/attributes"):
        recorder.wait_for(has_payload(topic, b""), what=f"{topic} cleared")
    # A new subscriber gets nothing retained for hall, but still gets door's config.
    late = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    try:
        late.wait_for(
            lambda m: any(x.topic.endswith("edged_dev1_door/config") for x in m),
            what="door config still retained",
        )
        assert not [m for m in late.messages if "hall" in m.topic]
    finally:
        late.close()


def test_heartbeat_arrives_not_retained(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    wait_until(lambda: pub.stats().connected, what="connected")
    assert pub.publish_heartbeat(heartbeat(uptime_s=1.5)) is True
    msgs = recorder.wait_for(lambda m: any(x.topic == f"{BASE}/heartbeat" for x in m))
    beat = next(m for m in msgs if m.topic == f"{BASE}/heartbeat")
    assert json.loads(beat.payload) == heartbeat(uptime_s=1.5)
    assert beat.retain is False


def test_heartbeat_and_config_result_report_false_while_disconnected(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # not started
    pub = start(publishers, make_settings(tmp_path / "state", broker))
    assert pub.publish_heartbeat(heartbeat()) is False
    assert pub.publish_config_result(True, None) is False
    wait_until(lambda: pub.stats().last_error is not None, what="connect failure recorded")
    assert str(broker.port) in pub.stats().last_error


# -- remote configuration -----------------------------------------------------------------------


def test_config_set_payload_reaches_the_hook_and_config_result_is_published(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    received: list[bytes] = []
    got = threading.Event()

    def hook(payload: bytes) -> None:
        received.append(payload)
        got.set()

    sender = MqttRecorder(mqtt_broker.host, mqtt_broker.port, ["unused/none"])
    try:
        sender.wait_subscribed()
        # A stale retained request must not be applied at every (re)connection.
        stale = sender.client.publish(f"{BASE}/config/set", b'{"x": 1}', qos=1, retain=True)
        stale.wait_for_publish(5)
        pub = start(publishers, make_settings(tmp_path, mqtt_broker), on_config_set=hook)
        recorder.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
        # The subscription is made on connect; repeat until its SUBACK has certainly arrived.
        for _ in range(50):
            sender.client.publish(f"{BASE}/config/set", b'{"smoothing": {"alpha": 0.5}}', qos=1)
            if got.wait(0.2):
                break
    finally:
        sender.close()
    assert received and received[0] == b'{"smoothing": {"alpha": 0.5}}'
    assert b'{"x": 1}' not in received  # retained config/set is ignored
    assert pub.publish_config_result(False, "smoothing.alpha: bad") is True
    msgs = recorder.wait_for(lambda m: any(x.topic == f"{BASE}/config/result" for x in m))
    result = json.loads(next(m for m in msgs if m.topic == f"{BASE}/config/result").payload)
    assert result["ok"] is False and result["error"] == "smoothing.alpha: bad"
    assert result["ts"].endswith("Z")


# -- credentials and TLS --------------------------------------------------------------------------


def _passwd_broker(tmp_path: Path) -> MosquittoBroker:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        pytest.skip("mosquitto_passwd is not installed (it ships with the mosquitto package)")
    passwd = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(passwd), "edge", "s3cret pass"], check=True)
    passwd.chmod(0o600)
    broker = MosquittoBroker(
        tmp_path / "broker", extra_config=f"allow_anonymous false\npassword_file {passwd}"
    )
    broker.start()
    return broker


def test_username_and_password_file_authenticate_against_a_password_protected_broker(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = _passwd_broker(tmp_path)
    secret = tmp_path / "mqtt.secret"
    secret.write_text("s3cret pass\n")
    try:
        rec = MqttRecorder(broker.host, broker.port, username="edge", password="s3cret pass")
        rec.wait_subscribed()
        pub = start(
            publishers,
            make_settings(tmp_path / "state", broker, username="edge", password_file=str(secret)),
        )
        rec.wait_for(has_payload(f"{BASE}/status", b"online"), what="online with password")
        pub.publish_event("door", event(0))
        rec.wait_for(lambda m: len(events_on(m)) == 1, what="event")
        rec.close()
    finally:
        broker.kill()


def test_reload_after_fixing_the_password_file_in_place_reconnects_with_the_new_secret(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = _passwd_broker(tmp_path)
    secret = tmp_path / "mqtt.secret"
    secret.write_text("old secret\n")
    settings = make_settings(tmp_path / "state", broker, username="edge", password_file=str(secret))
    try:
        pub = start(publishers, settings)
        wait_until(lambda: pub.stats().last_error is not None, what="refusal recorded")
        assert pub.stats().connected is False
        secret.write_text("s3cret pass\n")  # same path, rotated content, then a reload
        pub.update_settings(
            make_settings(tmp_path / "state", broker, username="edge", password_file=str(secret))
        )
        wait_until(lambda: pub.stats().connected is True, what="connected with new secret")
        secret.unlink()  # a reload that cannot read the file is refused, the login is kept
        with pytest.raises(ConfigError, match="password_file"):
            pub.update_settings(settings)
        assert pub.stats().connected is True
    finally:
        broker.kill()


def test_wrong_password_is_refused_and_reported_without_the_secret(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = _passwd_broker(tmp_path)
    try:
        pub = start(
            publishers, make_settings(tmp_path / "state", broker, username="edge", password="nope")
        )
        wait_until(lambda: pub.stats().last_error is not None, what="refusal recorded")
        stats = pub.stats()
        assert stats.connected is False
        assert "nope" not in str(stats.last_error)
    finally:
        broker.kill()


def _make_tls(tmp_path: Path) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed; cannot make test certificates")
    d = tmp_path / "pki"
    d.mkdir()
    files = {
        k: d / f"{k}.pem" for k in ("ca", "ca_key", "server", "server_key", "client", "client_key")
    }

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=edged test CA",
        "-keyout",
        str(files["ca_key"]),
        "-out",
        str(files["ca"]),
    )
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "edged-client")):
        csr = d / f"{name}.csr"
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(files[f"{name}_key"]),
            "-out",
            str(csr),
        )
        run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(files["ca"]),
            "-CAkey",
            str(files["ca_key"]),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(files[name]),
        )
    return files


def test_tls_with_a_client_certificate_connects_and_publishes(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    pki = _make_tls(tmp_path)
    broker = MosquittoBroker(
        tmp_path / "broker",
        extra_config=(
            f"cafile {pki['ca']}\ncertfile {pki['server']}\nkeyfile {pki['server_key']}\n"
            "require_certificate true"
        ),
    )
    broker.start()
    try:
        tls = {
            "ca_certs": str(pki["ca"]),
            "certfile": str(pki["client"]),
            "keyfile": str(pki["client_key"]),
        }
        rec = MqttRecorder(broker.host, broker.port, tls=tls)
        rec.wait_subscribed()
        pub = start(
            publishers,
            make_settings(
                tmp_path / "state",
                broker,
                tls_ca=str(pki["ca"]),
                tls_cert=str(pki["client"]),
                tls_key=str(pki["client_key"]),
            ),
        )
        rec.wait_for(has_payload(f"{BASE}/status", b"online"), what="online over TLS")
        pub.publish_event("door", event(0))
        rec.wait_for(lambda m: len(events_on(m)) == 1, what="event over TLS")
        rec.close()
    finally:
        broker.kill()


# -- reload --------------------------------------------------------------------------------


def test_update_settings_moves_to_another_broker_keeping_the_spool(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    other = MosquittoBroker(tmp_path / "other")
    other.start()
    try:
        pub = start(publishers, make_settings(tmp_path / "state", mqtt_broker))
        recorder.wait_for(has_payload(f"{BASE}/status", b"online"), what="online on first")
        rec2 = MqttRecorder(other.host, other.port)
        rec2.wait_subscribed()
        pub.update_settings(make_settings(tmp_path / "state", other))
        recorder.wait_for(has_payload(f"{BASE}/status", b"offline"), what="offline on first")
        rec2.wait_for(has_payload(f"{BASE}/status", b"online"), what="online on second")
        pub.publish_event("door", event(0))
        rec2.wait_for(lambda m: len(events_on(m)) == 1, what="event on second")
        rec2.close()
    finally:
        other.kill()


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"username": "edge", "password_file": "missing.secret"}, ConfigError),
        ({"tls_ca": "missing-ca.pem"}, PublishError),
    ],
    ids=["unreadable-password-file", "missing-tls-ca"],
)
def test_a_reload_whose_client_cannot_be_built_is_refused_and_the_old_connection_keeps_running(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
    bad: dict[str, str],
    error: type[EdgedError],
) -> None:
    good = make_settings(tmp_path / "state", mqtt_broker, spool_max_events=1000)
    pub = start(publishers, good)
    recorder.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
    bad = {k: str(tmp_path / v) if k != "username" else v for k, v in bad.items()}
    with pytest.raises(error, match="missing"):
        pub.update_settings(
            make_settings(tmp_path / "state", mqtt_broker, spool_max_events=5, **bad)
        )
    assert pub.connected
    pub.publish_event("door", event(0))
    msgs = recorder.wait_for(lambda m: len(events_on(m)) == 1, what="event after refusal")
    assert b"offline" not in [m.payload for m in msgs if m.topic == f"{BASE}/status"]
    for seq in range(1, 8):  # the refused reload's spool bound (5) was not applied either
        pub.publish_event("door", event(seq))
    recorder.wait_for(lambda m: len(events_on(m)) == 8, what="events after refusal")
    assert pub.stats().spool_dropped == 0
    # The same publisher still reloads normally afterwards.
    pub.update_settings(make_settings(tmp_path / "state", mqtt_broker, client_id="renamed"))
    recorder.wait_for(has_payload(f"{BASE}/status", b"offline"), what="offline on reconnect")
    wait_until(lambda: pub.connected, what="reconnected with the good reload")


def test_state_and_discovery_calls_return_while_another_thread_holds_the_spool_lock(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    """The daemon calls these on its event loop; the spool lock can be held through an
    fsync (``put``), which takes tens to hundreds of ms on an SD card."""
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    recorder.wait_for(has_payload(f"{BASE}/status", b"online"), what="online")
    wait_until(lambda: pub.connected, what="connected")
    held, release, gave_up = threading.Event(), threading.Event(), threading.Event()

    def hold_spool_lock() -> None:
        with pub.spool._lock:
            held.set()
            if not release.wait(2.0):
                gave_up.set()  # set before the lock is let go

    holder = threading.Thread(target=hold_spool_lock)
    holder.start()
    try:
        assert held.wait(5)
        began = time.monotonic()
        # Each of these makes this device own a new retained topic (a spool write).
        pub.publish_state("door", "happy", attrs(1))
        pub.publish_discovery(["door", "hall"])
        pub.publish_state("hall", "sad", attrs(2))
        pub.publish_discovery(["door"])  # hall's topics cleared: another owned change
        assert pub.publish_heartbeat(heartbeat()) is True
        assert pub.publish_config_result(True, None) is True
        elapsed = time.monotonic() - began
        returned_while_held = not gave_up.is_set()
    finally:
        release.set()
        holder.join()
    assert returned_while_held, "a publish_* call waited for the spool lock"
    assert elapsed < 0.5
    recorder.wait_for(has_payload(f"{BASE}/door/emotion", b"happy"), what="door state")
    recorder.wait_for(has_payload(f"{BASE}/hall/emotion", b""), what="hall state cleared")

    def owned() -> set[str]:
        return set(json.loads(pub.spool.get_value("retained_topics") or "[]"))

    door = {
        f"{BASE}/door/emotion",
        f"{BASE}/door/attributes",
        "homeassistant/device/edged_dev1_door/config",
        "homeassistant/device/edged_dev1/config",
    }
    wait_until(lambda: owned() == door, what="owned topics persisted by the sender")


def test_owned_topics_that_fail_to_save_are_saved_again_by_the_sender(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    wait_until(lambda: pub.connected, what="connected")
    real_set_value = pub.spool.set_value
    failures: list[str] = []

    def flaky_set_value(key: str, value: str) -> None:  # failure injection: a full disk
        if len(failures) < 2:
            failures.append(key)
            raise SpoolError("disk full")
        real_set_value(key, value)

    monkeypatch.setattr(pub.spool, "set_value", flaky_set_value)
    pub.publish_state("door", "happy", attrs(1))
    recorder.wait_for(has_payload(f"{BASE}/door/emotion", b"happy"), what="state published")

    def owned() -> set[str]:
        return set(json.loads(pub.spool.get_value("retained_topics") or "[]"))

    wait_until(
        lambda: {f"{BASE}/door/emotion", f"{BASE}/door/attributes"} <= owned(),
        what="owned topics saved after the failures",
    )
    assert failures == ["retained_topics", "retained_topics"]


# -- payloads and validation (no broker needed) ------------------------------------------------


def test_numpy_values_in_events_are_serialised_as_plain_json(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    broker = MosquittoBroker(tmp_path / "broker")  # never started: the event just spools
    pub = Publisher(make_settings(tmp_path / "state", broker))
    try:
        numpy_event = event(
            1, confidence=np.float32(0.5), scores={"happy": np.float64(0.5)}, id="e1"
        )
        pub.publish_event("door", numpy_event)
        (row,) = pub.spool.peek(1)
        assert row.topic == f"{BASE}/door/event"
        body = json.loads(row.payload)
        assert (body["confidence"], body["scores"], body["id"]) == (0.5, {"happy": 0.5}, "e1")
        with pytest.raises(PublishError, match="not JSON serialisable"):
            pub.publish_event("door", event(2, emotion=object()))
    finally:
        pub.stop(timeout=0.5)


@pytest.mark.parametrize("camera", ["", "a/b", "cam+", "cam#"])
def test_camera_ids_that_would_break_topics_are_refused(tmp_path: Path, camera: str) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    pub = Publisher(make_settings(tmp_path / "state", broker))
    try:
        with pytest.raises(PublishError, match="topic level"):
            pub.publish_event(camera, event(1))
        with pytest.raises(PublishError, match="topic level"):
            pub.publish_state(camera, "happy", attrs(0))
        assert pub.spool.pending() == 0
    finally:
        pub.stop(timeout=0.5)


def test_discovery_ids_only_use_characters_home_assistant_accepts() -> None:
    assert discovery_unique_id("lobby.01", "door-2") == "edged_lobby_01_door-2_emotion"


async def test_publish_event_async_spools_in_call_order_off_the_event_loop(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # never started
    pub = Publisher(make_settings(tmp_path / "state", broker))
    try:
        ids = [await pub.publish_event_async("door", event(seq)) for seq in range(20)]
        assert ids == sorted(ids)
        assert [json.loads(r.payload)["track_id"] for r in pub.spool.peek(50)] == list(range(20))
    finally:
        pub.stop(timeout=0.5)


def test_stop_without_a_broker_keeps_spooled_events_for_the_next_start(
    tmp_path: Path,
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # never started
    settings = make_settings(tmp_path / "state", broker)
    pub = Publisher(settings)
    pub.start()
    for seq in range(3):
        pub.publish_event("door", event(seq))
    pub.stop(timeout=0.5)
    again = Publisher(settings)
    try:
        assert [json.loads(r.payload)["track_id"] for r in again.spool.peek(10)] == [0, 1, 2]
    finally:
        again.stop(timeout=0.5)


def test_events_in_flight_when_the_publisher_is_killed_are_resent_by_the_next_one(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    data = settings_data(tmp_path, mqtt_broker)
    proc = spawn_publisher(data, events=1_000_000)  # produces until killed
    assert proc.stdout is not None
    acknowledged = 0
    try:
        for line in proc.stdout:
            acknowledged = int(line) + 1
            if acknowledged == 200:
                break  # kill it mid-stream: the newest events are not yet acknowledged
    finally:
        kill_9(proc)
    pub = start(publishers, build_settings(data))
    msgs = recorder.wait_for(
        lambda m: set(range(acknowledged)) <= {e["track_id"] for e in events_on(m)},
        30,
        f"the {acknowledged} events the killed publisher had spooled",
    )
    order = first_delivery_order(events_on(msgs))
    assert order == list(range(len(order)))  # in order, no gap (maybe a few more than 200)
    wait_until(lambda: pub.stats().spool_pending == 0, what="spool drained")


def test_switching_homeassistant_off_by_reload_empties_the_discovery_configs(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    pub = start(publishers, make_settings(tmp_path, mqtt_broker))
    pub.publish_discovery(["door"])
    topic = "homeassistant/device/edged_dev1_door/config"
    recorder.wait_for(lambda m: any(x.topic == topic and x.payload for x in m), what="config")
    pub.update_settings(make_settings(tmp_path, mqtt_broker, homeassistant=False))
    recorder.wait_for(has_payload(topic, b""), what="config emptied")
    recorder.wait_for(
        lambda m: [x.payload for x in m if x.topic == f"{BASE}/status"][-1:] == [b"online"],
        what="back online after the reload",
    )
    late = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    try:
        late.wait_for(has_payload(f"{BASE}/status", b"online"), what="retained status")
        assert not late.on(topic)  # nothing retained, and not announced again
    finally:
        late.close()


def test_a_camera_removed_while_the_daemon_was_down_is_cleared_after_restart(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    recorder: MqttRecorder,
    publishers: list[Publisher],
) -> None:
    settings = make_settings(tmp_path, mqtt_broker)
    first = start(publishers, settings)
    first.publish_discovery(["door", "hall"])
    first.publish_state("hall", "angry", attrs(1))
    hall_config = "homeassistant/device/edged_dev1_hall/config"
    recorder.wait_for(has_payload(f"{BASE}/hall/emotion", b"angry"), what="hall state")
    recorder.wait_for(lambda m: any(x.topic == hall_config for x in m), what="hall config")
    first.stop(timeout=2.0)
    # The config file lost "hall" while the daemon was stopped.
    second = start(publishers, settings)
    second.publish_discovery(["door"])
    for topic in (hall_config, f"{BASE}/hall/emotion", f"{BASE}/hall/attributes"):
        recorder.wait_for(has_payload(topic, b""), what=f"{topic} cleared after restart")

    def owned() -> list[str]:
        return list(json.loads(second.spool.get_value("retained_topics") or "[]"))

    door_config = "homeassistant/device/edged_dev1_door/config"
    # The door config is owned since the first run, and the clears are persisted by the
    # sender thread after they went out: wait for the persisted list, not for the first.
    wait_until(
        lambda: door_config in owned() and not [t for t in owned() if "hall" in t],
        what="door config owned and hall forgotten",
    )
    assert not [t for t in owned() if "hall" in t]
    assert f"{BASE}/door/emotion" not in owned()  # door never had a state


def test_events_the_broker_refuses_under_mqtt5_are_counted_and_do_not_block_the_spool(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {BASE}/status\ntopic read #\n")  # events not allowed
    broker = MosquittoBroker(tmp_path / "broker", extra_config=f"acl_file {acl}")
    broker.start()
    try:
        pub = start(publishers, make_settings(tmp_path / "state", broker, protocol="5"))
        wait_until(lambda: pub.stats().connected, what="connected")
        for seq in range(3):
            pub.publish_event("door", event(seq))
        wait_until(lambda: pub.stats().spool_pending == 0, what="refused rows leave the spool")
        stats = pub.stats()
        assert (stats.events_rejected, stats.events_published) == (3, 0)
        assert "rejected" in str(stats.last_error)
    finally:
        broker.kill()


def test_events_produced_continuously_through_a_broker_restart_arrive_in_order(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    rec = MqttRecorder(
        broker.host, broker.port, [f"{BASE}/#"], client_id="stream-rec", clean_session=False
    )
    total = 400
    try:
        rec.wait_subscribed()
        pub = start(publishers, make_settings(tmp_path / "state", broker))
        wait_until(lambda: pub.stats().connected, what="connected")

        def produce() -> None:
            for seq in range(total):
                pub.publish_event("door", event(seq))

        producer = threading.Thread(target=produce)
        producer.start()
        rec.wait_for(lambda m: len(events_on(m)) >= 50, what="first 50 events")
        broker.stop()  # events are in flight and still being produced
        wait_until(lambda: not pub.stats().connected, what="publisher sees the outage")
        broker.start()
        producer.join()
        msgs = rec.wait_for(
            lambda m: set(range(total)) <= {e["track_id"] for e in events_on(m)}, 30, "all events"
        )
        assert first_delivery_order(events_on(msgs)) == list(range(total))
        wait_until(lambda: pub.stats().spool_pending == 0, what="spool drained")
    finally:
        rec.close()
        broker.kill()
