"""Privacy by design and the ``[privacy]`` data-minimisation settings.

Each setting is pinned where its payload is built (tracker, aggregator, spool) and at the
publisher against a real Mosquitto broker; the daemon tests run ``edged run`` on a real
video with real ONNX models and check every message a subscriber receives and every file
the daemon leaves for image data.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import PrivacySettings, Settings, build_settings
from edged.errors import ConfigError
from edged.mqtt.publisher import Publisher
from edged.mqtt.spool import Spool
from edged.privacy import Aggregator, check_remote_privacy, minimise_spooled_event
from edged.runtime.tracking import Tracker
from edged.service.daemon import Daemon
from tests.mqtt.payloads import attrs, event
from tests.mqtt_helpers import Message, MosquittoBroker, MqttRecorder, wait_until
from tests.runtime.test_tracking import BOX, WALL0, Face, dist, run, settings, steady
from tests.service.test_daemon import (  # noqa: F401 (daemons, scene: fixtures)
    DEVICE,
    FPS,
    DaemonProcess,
    daemons,
    scene,
    status_is,
    write_config,
)

BASE = f"edged/{DEVICE}"


def privacy(**kw: Any) -> PrivacySettings:
    return PrivacySettings(**kw)


# -- what the tracker builds ------------------------------------------------------------------


def _events_and_state(p: PrivacySettings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tracker = Tracker(settings(min_dwell_s=0.5), "door", "dev", privacy=p)
    events = run(tracker, steady("happy", 0.0, 1.0) + steady("sad", 1.1, 2.5))
    attributes = tracker.state()[1].to_json()
    events += run(tracker, [(10.0, [])])  # left
    return events, attributes


def test_default_events_and_attributes_carry_boxes_and_scores() -> None:
    events, attrs = _events_and_state(privacy())
    assert [e["type"] for e in events] == ["appeared", "changed", "left"]
    assert all("bbox" in e and "scores" in e for e in events)
    assert all("bbox" in t for t in attrs["tracks"])


def test_publish_boxes_false_leaves_bbox_out_of_every_event_and_the_attributes() -> None:
    events, attrs = _events_and_state(privacy(publish_boxes=False))
    assert [e["type"] for e in events] == ["appeared", "changed", "left"]
    assert all("bbox" not in e for e in events), events
    assert all("scores" in e for e in events)
    assert attrs["faces"] == 1 and attrs["tracks"]
    assert all("bbox" not in t for t in attrs["tracks"]), attrs


def test_publish_scores_false_leaves_only_label_and_confidence() -> None:
    events, _ = _events_and_state(privacy(publish_scores=False))
    assert events
    for e in events:
        assert "scores" not in e
        assert e["emotion"] in ("happy", "sad") and 0 < e["confidence"] <= 1


def test_new_privacy_settings_shape_the_next_event_of_a_running_tracker() -> None:
    tracker = Tracker(settings(min_dwell_s=0.5), "door", "dev")
    (appeared,) = run(tracker, steady("happy", 0.0, 1.0))
    assert "bbox" in appeared
    tracker.configure(settings(min_dwell_s=0.5), privacy(publish_boxes=False))
    (changed,) = run(tracker, steady("sad", 1.1, 2.5))
    assert changed["type"] == "changed" and "bbox" not in changed


# -- aggregate reports --------------------------------------------------------------------------


def test_aggregate_report_has_counts_and_a_distribution_and_no_track_id_or_box() -> None:
    tracker = Tracker(settings(min_dwell_s=0.0), "door", "dev")
    agg = Aggregator("door", "dev", privacy(mode="aggregate", aggregate_interval_s=5), now=0.0)
    other = (300.0, 100.0, 400.0, 220.0)
    for i in range(10):
        ts = i * 0.1
        tracker.update([Face(BOX, dist("happy")), Face(other, dist("sad"))], ts, WALL0 + ts)
        agg.observe(tracker.live_emotions())
    assert not agg.due(4.9) and agg.due(5.0)
    report = agg.report(5.0, "2026-01-01T00:00:05.000Z")
    assert report is not None
    body = report.to_json()
    assert set(body) == {
        "schema",
        "ts",
        "device",
        "camera",
        "interval_s",
        "frames",
        "faces",
        "faces_mean",
        "emotions",
    }
    assert (body["frames"], body["faces"], body["faces_mean"]) == (10, 2, 2.0)
    assert body["emotions"] == {"happy": 0.5, "sad": 0.5}
    assert "track_id" not in json.dumps(body) and "bbox" not in json.dumps(body)
    # The next interval starts empty.
    assert agg.report(10.0, "2026-01-01T00:00:10.000Z") is None


def test_aggregate_faces_without_an_established_emotion_count_as_faces_only() -> None:
    agg = Aggregator("door", "dev", privacy(mode="aggregate"), now=0.0)
    agg.observe(["happy", None, None])
    agg.observe([])
    report = agg.report(60.0, "t")
    assert report is not None
    assert (report.frames, report.faces, report.faces_mean) == (2, 3, 1.5)
    assert report.emotions == {"happy": 1.0}


def test_min_faces_leaves_out_frames_with_fewer_faces_and_then_there_is_no_report() -> None:
    agg = Aggregator("door", "dev", privacy(mode="aggregate", min_faces=2), now=0.0)
    agg.observe(["happy"])
    agg.observe([])
    assert agg.report(60.0, "t") is None, "one person alone is never described"
    agg.observe(["angry"])
    agg.observe(["happy", "neutral"])
    agg.observe(["happy", "happy", "sad"])
    report = agg.report(120.0, "t")
    assert report is not None
    assert (report.frames, report.faces, report.faces_mean) == (2, 3, 2.5)
    assert "angry" not in report.emotions, "the frame with one face is not in the report"
    assert report.emotions == {"happy": 0.6, "neutral": 0.2, "sad": 0.2}


# -- remote changes only towards less data -------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "change"),
    [
        ({"publish_boxes": True}, {"publish_boxes": False}),
        ({"publish_scores": True}, {"publish_scores": False}),
        ({"mode": "tracks"}, {"mode": "aggregate"}),
        ({"min_faces": 0}, {"min_faces": 3}),
        ({"aggregate_interval_s": 60}, {"aggregate_interval_s": 300}),
        ({"spool_max_age_s": 0}, {"spool_max_age_s": 600}),
        ({"spool_max_age_s": 600}, {"spool_max_age_s": 60}),
        ({"publish_boxes": False}, {"publish_boxes": False}),
    ],
)
def test_a_remote_change_that_publishes_or_keeps_less_is_allowed(
    current: dict[str, Any], change: dict[str, Any]
) -> None:
    check_remote_privacy(privacy(**current), privacy(**{**current, **change}))


@pytest.mark.parametrize(
    ("current", "change", "key"),
    [
        ({"publish_boxes": False}, {"publish_boxes": True}, "publish_boxes"),
        ({"publish_scores": False}, {"publish_scores": True}, "publish_scores"),
        ({"mode": "aggregate"}, {"mode": "tracks"}, "mode"),
        ({"min_faces": 3}, {"min_faces": 2}, "min_faces"),
        ({"min_faces": 3}, {"min_faces": 0}, "min_faces"),
        ({"aggregate_interval_s": 300}, {"aggregate_interval_s": 60}, "aggregate_interval_s"),
        ({"spool_max_age_s": 60}, {"spool_max_age_s": 600}, "spool_max_age_s"),
        ({"spool_max_age_s": 60}, {"spool_max_age_s": 0}, "spool_max_age_s"),
    ],
)
def test_a_remote_change_that_would_publish_or_keep_more_is_refused(
    current: dict[str, Any], change: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=f"privacy.{key}"):
        check_remote_privacy(privacy(**current), privacy(**{**current, **change}))


def test_privacy_keys_pass_the_remote_key_guard(tmp_path: Path) -> None:
    settings_ = build_settings(
        {"device": {"id": DEVICE, "state_dir": str(tmp_path)}, "mqtt": {"remote_config": True}}
    )
    change = {"privacy": {"publish_boxes": False, "mode": "aggregate"}}
    assert Daemon(settings_, None).check_remote_change(json.dumps(change).encode()) == change


@pytest.mark.parametrize(
    ("mode", "min_faces", "faces", "shown"),
    [
        ("aggregate", 3, 1, None),
        ("aggregate", 3, 2, None),
        ("aggregate", 3, 3, 3),
        ("aggregate", 3, 0, 0),
        ("aggregate", 0, 1, 1),
        ("tracks", 3, 1, 1),
    ],
)
def test_heartbeat_withholds_a_face_count_below_min_faces_in_aggregate_mode(
    tmp_path: Path, mode: str, min_faces: int, faces: int, shown: int | None
) -> None:
    s = build_settings(
        {
            "device": {"id": DEVICE, "state_dir": str(tmp_path)},
            "privacy": {"mode": mode, "min_faces": min_faces},
        }
    )
    stats = {"state": "running", "fps_in": 5.0, "fps_processed": 5.0, "faces": faces,
             "dropped_frames": 0, "last_frame_age_s": 0.1}  # fmt: skip
    assert Daemon(s, None)._heartbeat_camera(stats)["faces"] == shown


def test_privacy_section_forbids_unknown_keys_and_impossible_values() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.publish_faces: unknown key"):
        build_settings({"privacy": {"publish_faces": False}}, "edged.toml")
    with pytest.raises(ConfigError, match=r"privacy\.mode"):
        build_settings({"privacy": {"mode": "people"}}, "edged.toml")
    with pytest.raises(ConfigError, match=r"privacy\.min_faces"):
        build_settings({"privacy": {"min_faces": -1}}, "edged.toml")
    with pytest.raises(ConfigError, match=r"privacy\.spool_max_age_s"):
        build_settings({"privacy": {"spool_max_age_s": -5}}, "edged.toml")


# -- the spool ---------------------------------------------------------------------------------


def test_spool_expire_drops_rows_older_than_the_age_and_counts_them_persistently(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path)
    for i in range(3):
        spool.put("t", f"old{i}".encode(), qos=1)
    t_new = time.time() + 100
    assert spool.expire(50, now=t_new - 60) == 0, "nothing is 50 s old yet at that time"
    assert spool.expire(50, now=t_new) == 3
    assert (spool.pending(), spool.dropped(), spool.expired()) == (0, 3, 3)
    assert spool.expire(0) == 0, "0 means no age limit"
    spool.close()
    again = Spool(path)
    assert (again.dropped(), again.expired()) == (3, 3)
    again.close()


def test_spool_rewrite_reshapes_and_drops_waiting_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.put("a/event", b'{"bbox":[1,2,3,4],"emotion":"happy"}', qos=1)
    spool.put("a/aggregate", b'{"faces":2}', qos=1)
    strict = privacy(publish_boxes=False)
    rewritten, dropped = spool.rewrite(
        lambda row: (
            minimise_spooled_event(row.payload, strict)
            if row.topic.endswith("/event")
            else row.payload
        )
    )
    assert (rewritten, dropped) == (1, 0)
    assert [json.loads(r.payload) for r in spool.peek(10)] == [{"emotion": "happy"}, {"faces": 2}]
    aggregate = privacy(mode="aggregate")
    rewritten, dropped = spool.rewrite(
        lambda row: (
            minimise_spooled_event(row.payload, aggregate)
            if row.topic.endswith("/event")
            else row.payload
        )
    )
    assert (rewritten, dropped) == (0, 1)
    assert [r.topic for r in spool.peek(10)] == ["a/aggregate"]
    assert spool.dropped() == 1
    spool.close()


# -- the publisher, against a real broker ------------------------------------------------------


def _settings(state: Path, broker: MosquittoBroker, **p: Any) -> Settings:
    return build_settings(
        {
            "device": {"id": DEVICE, "state_dir": str(state)},
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "keepalive_s": 5,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
            },
            "privacy": p,
        }
    )


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    started: list[Publisher] = []
    yield started
    for pub in started:
        pub.stop(timeout=1.0)


def _age_spool(state: Path, seconds: float) -> None:
    """Make every spooled row ``seconds`` older, as a long broker outage would."""
    with sqlite3.connect(state / "spool.sqlite3") as conn:
        conn.execute("UPDATE events SET created = created - ?", (seconds,))


def test_events_older_than_spool_max_age_are_dropped_not_sent_after_an_outage(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher]
) -> None:
    state = tmp_path / "state"
    spool = Spool(state / "spool.sqlite3")
    for seq in range(3):
        spool.put(f"{BASE}/door/event", json.dumps({"seq": seq}).encode(), qos=1)
    spool.close()
    _age_spool(state, 3600)  # spooled an hour ago, while the broker was away
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"{BASE}/door/event"])
    rec.wait_subscribed()
    try:
        pub = Publisher(_settings(state, mqtt_broker, spool_max_age_s=600))
        publishers.append(pub)
        pub.start()
        pub.publish_event("door", event(99))
        msgs = rec.wait_for(lambda ms: bool(ms), 15, "the fresh event")
        wait_until(lambda: pub.stats().spool_pending == 0, 15, "spool drained")
        assert [json.loads(m.payload)["track_id"] for m in rec.messages] == [99]
        assert msgs
        stats = pub.stats()
        assert (stats.spool_dropped, stats.spool_expired) == (3, 3)
    finally:
        rec.close()


def test_events_spooled_with_boxes_lose_them_when_the_next_start_forbids_boxes(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher]
) -> None:
    state = tmp_path / "state"
    spool = Spool(state / "spool.sqlite3")
    spool.put(f"{BASE}/door/event", b'{"seq":1,"bbox":[1,2,3,4],"scores":{"happy":1}}', qos=1)
    spool.close()
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"{BASE}/door/event"])
    rec.wait_subscribed()
    try:
        pub = Publisher(_settings(state, mqtt_broker, publish_boxes=False, publish_scores=False))
        publishers.append(pub)
        pub.start()
        msgs = rec.wait_for(lambda ms: bool(ms), 15, "the spooled event")
        assert json.loads(msgs[0].payload) == {"seq": 1}
    finally:
        rec.close()


def test_switching_to_aggregate_empties_retained_state_and_refuses_per_person_payloads(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher]
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"{BASE}/#", "homeassistant/#"])
    rec.wait_subscribed()
    try:
        tracks = _settings(tmp_path, mqtt_broker)
        pub = Publisher(tracks)
        publishers.append(pub)
        pub.start()
        pub.publish_discovery(["door"])
        pub.publish_state("door", "happy", attrs(1, (1, None, None)))
        rec.wait_for(
            lambda ms: any(m.topic == f"{BASE}/door/attributes" and m.payload for m in ms),
            15,
            "retained attributes",
        )
        aggregate = _settings(tmp_path, mqtt_broker, mode="aggregate")
        pub.update_settings(aggregate)
        for topic in (f"{BASE}/door/emotion", f"{BASE}/door/attributes"):
            rec.wait_for(
                lambda ms, t=topic: any(m.topic == t and m.payload == b"" for m in ms),
                15,
                f"{topic} emptied",
            )
        # The camera's Home Assistant device loses every per-person entity and gets a
        # face-count sensor on the aggregate topic instead.
        device_config = f"homeassistant/device/edged_{DEVICE}_door/config"

        def aggregate_config(ms: list[Message]) -> bool:
            return any(
                m.topic == device_config and m.payload and b"/door/aggregate" in m.payload
                for m in ms
            )

        msgs = rec.wait_for(aggregate_config, 15, "faces sensor")
        components = json.loads(
            next(m for m in reversed(msgs) if m.topic == device_config).payload
        )["components"]
        assert not {"emotion", "event", "presence"} & set(components), components
        config = components["faces"]
        assert config["state_topic"] == f"{BASE}/door/aggregate"
        assert config["value_template"] == "{{ value_json.faces }}"
        assert config["expire_after"] == 180
        rec.clear()
        assert pub.publish_event("door", event(1)) == 0
        pub.publish_state("door", "sad", attrs(1, (1, None, None)))
        agg = Aggregator("door", DEVICE, aggregate.privacy, now=0.0)
        agg.observe(["happy", "sad"])
        report = agg.report(60.0, "2026-01-01T00:01:00.000Z")
        assert report is not None
        assert pub.publish_aggregate("door", report) > 0
        msgs = rec.wait_for(
            lambda ms: any(m.topic == f"{BASE}/door/aggregate" for m in ms), 15, "aggregate"
        )
        wait_until(lambda: pub.stats().spool_pending == 0, 15, "spool drained")
        got = [m for m in rec.messages if m.topic.startswith(f"{BASE}/door/")]
        assert [m.topic for m in got] == [f"{BASE}/door/aggregate"], got
        assert not msgs[-1].retain
        assert json.loads(got[0].payload)["faces"] == 2
    finally:
        rec.close()


# -- the daemon end to end: no image data anywhere ------------------------------------------------

#: Signatures of every image format OpenCV writes (and base64 of the common ones).
IMAGE_SIGNATURES: dict[str, bytes] = {
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "GIF87a": b"GIF87a",
    "GIF89a": b"GIF89a",
    "TIFF (little endian)": b"II*\x00",
    "TIFF (big endian)": b"MM\x00*",
    "JPEG 2000": b"\x00\x00\x00\x0cjP  ",
    "WebP": b"WEBPVP8",
    "OpenEXR": b"\x76\x2f\x31\x01",
    "data URI": b"data:image/",
}
IMAGE_SIGNATURES.update(
    {f"base64 {k}": base64.b64encode(v)[:4] for k, v in list(IMAGE_SIGNATURES.items())[:2]}
)
#: 96 base64 characters in a row encode 72 bytes: far more than any id or label edged sends.
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{96,}={0,2}")
#: The smallest face crop any edged classifier takes: 48x48 gray, one byte per pixel.
SMALLEST_CROP_BYTES = 48 * 48


def image_data_in(blob: bytes) -> list[str]:
    """What in ``blob`` looks like image data (empty when nothing does)."""
    found = [name for name, sig in IMAGE_SIGNATURES.items() if sig in blob]
    found += [f"base64 run of {len(m.group())} chars" for m in BASE64_RUN.finditer(blob)]
    return found


def _long_arrays(value: Any, path: str = "$") -> list[str]:
    """JSON arrays long enough to be pixels (a box is 4 numbers, a score table 8 keys)."""
    out: list[str] = []
    if isinstance(value, list):
        if len(value) > 16:
            out.append(f"{path}: array of {len(value)}")
        for i, v in enumerate(value):
            out += _long_arrays(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            out += _long_arrays(v, f"{path}.{k}")
    elif isinstance(value, str) and len(value) > 256:
        out.append(f"{path}: string of {len(value)}")
    return out


def test_image_data_detector_finds_a_real_jpeg_png_and_their_base64(images: Path) -> None:
    """The check below must be able to fail: feed it what a leak would look like."""
    img = cv2.imread(str(images / "s_l.jpg"))
    crop = img[40:88, 40:88]
    jpeg = cv2.imencode(".jpg", crop)[1].tobytes()
    png = cv2.imencode(".png", crop)[1].tobytes()
    assert "JPEG" in image_data_in(b"x" + jpeg)
    assert "PNG" in image_data_in(png)
    wrapped = json.dumps({"crop": base64.b64encode(jpeg).decode()}).encode()
    assert image_data_in(wrapped)
    pixels = json.dumps({"crop": np.asarray(crop[:, :, 0]).tolist()})
    assert _long_arrays(json.loads(pixels))
    assert not image_data_in(json.dumps({"id": "a" * 32, "emotion": "happy"}).encode())


def assert_no_image_data(messages: list[Message], *dirs: Path) -> None:
    """No payload and no file under ``dirs`` holds anything that looks like an image."""
    problems: list[str] = []
    for m in messages:
        found = image_data_in(m.payload)
        # Discovery configs are built from the settings alone (tests/mqtt/test_homeassistant.py
        # pins every field); one per camera device outgrows a crop, the content checks stay.
        from_settings = m.topic.startswith("homeassistant/device/")
        if len(m.payload) >= SMALLEST_CROP_BYTES and not from_settings:
            found.append(f"{len(m.payload)} bytes, room for a 48x48 face crop")
        if m.payload[:1] in (b"{", b"["):
            found += _long_arrays(json.loads(m.payload))
        problems += [f"{m.topic}: {f}" for f in found]
    for d in dirs:
        for path in sorted(p for p in d.rglob("*") if p.is_file()):
            problems += [f"{path}: {f}" for f in image_data_in(path.read_bytes())]
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".npy", ".avi", ".mp4"):
                problems.append(f"{path}: an image or video file")
    assert not problems, "\n".join(problems)


def _spool_rows(state: Path) -> list[bytes]:
    with sqlite3.connect(state / "spool.sqlite3") as conn:
        return [bytes(r[0]) for r in conn.execute("SELECT payload FROM events")]


@pytest.fixture
def broker_and_recorder(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MqttRecorder]]:
    """A broker that keeps sessions across a restart and a subscriber to everything whose
    session it keeps, so the daemon's resend after the outage cannot race the subscriber."""
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    rec = MqttRecorder(
        broker.host, broker.port, ["#"], client_id="privacy-rec", clean_session=False
    )
    try:
        rec.wait_subscribed()
        yield broker, rec
    finally:
        rec.close()
        broker.kill()


def test_daemon_never_writes_or_sends_image_data(
    tmp_path: Path,
    broker_and_recorder: tuple[MosquittoBroker, MqttRecorder],
    models_dir: Path,
    scene: Any,  # noqa: F811 (the fixture imported from test_daemon)
    daemons: list,  # noqa: F811
) -> None:
    """The most data the daemon can publish (the defaults, tracks mode) still has no image in
    it: not in any message, not in the state directory, not in its working directory or
    TMPDIR. Includes a broker outage, so events pass through the on-disk spool."""
    broker, rec = broker_and_recorder
    state, work, tmp = tmp_path / "state", tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    cfg = write_config(
        tmp_path / "edged.toml",
        broker,
        state,
        models_dir,
        # Looping: however slow the machine, faces keep appearing, changing and leaving.
        cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log", {"TMPDIR": str(tmp)}, cwd=work)
    daemons.append(d)
    events = f"{BASE}/cam/event"
    rec.wait_for(lambda ms: any(m.topic == events for m in ms), 60, "first event")
    broker.stop()
    before = len(d.events_logged())
    wait_until(lambda: len(d.events_logged()) > before, 60, "an event spooled in the outage")
    spooled = _spool_rows(state)
    broker.start()
    wait_until(lambda: set(d.events_logged()) <= _ids(rec, events), 60, "spooled events sent")
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    msgs = rec.wait_for(status_is(b"offline"), 10, "offline")
    assert {m.topic for m in msgs} >= {
        f"{BASE}/status",
        f"{BASE}/heartbeat",
        events,
        f"{BASE}/cam/emotion",
        f"{BASE}/cam/attributes",
    }
    spooled_msgs = [Message("spool", p, False) for p in spooled]
    assert spooled_msgs, "the outage put events through the spool"
    assert_no_image_data(msgs + spooled_msgs, state, work, tmp)
    assert {p.name for p in state.iterdir()} <= {
        "spool.sqlite3",
        "spool.sqlite3-wal",
        "spool.sqlite3-shm",
    }


def _ids(rec: MqttRecorder, topic: str) -> set[str]:
    return {json.loads(p)["id"] for p in rec.payloads(topic)}


def test_daemon_minimises_payloads_and_takes_remote_changes_only_towards_less_data(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    models_dir: Path,
    scene: Any,  # noqa: F811 (the fixture imported from test_daemon)
    daemons: list,  # noqa: F811
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    rec.wait_subscribed()
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        state,
        models_dir,
        cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
        mqtt={"remote_config": True},
    )
    cfg.write_text(
        cfg.read_text() + "\n[privacy]\npublish_boxes = false\npublish_scores = false\n"
        "aggregate_interval_s = 1.0\n",
        encoding="utf-8",
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    daemons.append(d)
    events, attributes = f"{BASE}/cam/event", f"{BASE}/cam/attributes"
    rec.wait_for(
        lambda ms: (
            any(m.topic == events for m in ms)
            and any(m.topic == attributes and b'"tracks":[{' in m.payload for m in ms)
        ),
        40,
        "an event and attributes with a track",
    )
    for payload in rec.payloads(events):
        e = json.loads(payload)
        assert "bbox" not in e and "scores" not in e, e
        assert e["emotion"] and isinstance(e["confidence"], float)
    for payload in rec.payloads(attributes):
        assert all("bbox" not in t for t in json.loads(payload)["tracks"])

    result = f"{BASE}/config/result"

    def ask(change: dict[str, Any]) -> dict[str, Any]:
        n = len(rec.on(result))
        rec.client.publish(f"{BASE}/config/set", json.dumps(change), qos=1)
        rec.wait_for(lambda ms: len([m for m in ms if m.topic == result]) > n, 20, "result")
        return dict(json.loads(rec.on(result)[n].payload))

    r = ask({"privacy": {"publish_boxes": True}})
    assert r["ok"] is False and "privacy.publish_boxes" in r["error"], r
    r = ask({"privacy": {"mode": "aggregate", "min_faces": 1}})
    assert r["ok"] is True, r
    aggregate = f"{BASE}/cam/aggregate"
    rec.wait_for(
        lambda ms: any(m.topic == attributes and m.payload == b"" for m in ms),
        20,
        "per-person retained state emptied",
    )
    # From the first report on, the switch is complete (anything handed to the broker in
    # the instant of the switch has arrived before it).
    first = rec.wait_for(lambda ms: any(m.topic == aggregate for m in ms), 30, "a report")
    switched = next(i for i, m in enumerate(first) if m.topic == aggregate)
    rec.wait_for(
        lambda ms: len([m for m in ms[switched:] if m.topic == aggregate]) >= 3, 30, "reports"
    )
    r = ask({"privacy": {"mode": "tracks"}})
    assert r["ok"] is False and "privacy.mode" in r["error"], r
    r = ask({"privacy": {"min_faces": 0}})
    assert r["ok"] is False and "privacy.min_faces" in r["error"], r
    after = rec.messages[switched:]
    per_person = [m for m in after if m.topic in (events, f"{BASE}/cam/emotion", attributes)]
    assert all(m.payload == b"" for m in per_person), per_person
    reports = [json.loads(m.payload) for m in after if m.topic == aggregate]
    for report in reports:
        assert "track_id" not in json.dumps(report) and "bbox" not in json.dumps(report)
        assert report["faces"] >= 1 and report["frames"] >= 1, report
        assert set(report["emotions"]) <= {
            "neutral",
            "happy",
            "sad",
            "angry",
            "fearful",
            "disgusted",
            "surprised",
        }
    assert any(report["emotions"] for report in reports), reports
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    logged = [e.get("event") for e in d.logs()]
    assert "emotion_event" not in logged[logged.index("aggregate_report") :], (
        "aggregate mode writes no per-person line to the log either"
    )
    rec.close()
    assert_no_image_data(rec.messages, state)


#: Calls that turn pixels into a file or bytes. Only ``edged analyze --out`` may use them.
_IMAGE_WRITERS = {"imwrite", "imencode", "VideoWriter", "save", "savez", "savez_compressed",
                  "tofile", "b64encode"}  # fmt: skip


def test_only_edged_analyze_has_code_that_writes_or_encodes_images() -> None:
    """Privacy by design, checked at the source: no module the daemon runs can write or
    encode an image, so a later change that starts to would have to edit this test."""
    import ast

    import edged

    package = Path(edged.__file__).parent
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in _IMAGE_WRITERS:
                    found.setdefault(str(path.relative_to(package)), set()).add(name)
    # ``edged models quantize`` saves an ONNX model (``onnx.save``), an operator command
    # that never sees a camera frame; the check is by call name, so it is named here.
    assert found == {
        "analysis/analyze.py": {"imwrite", "VideoWriter"},
        "models/quantize.py": {"save"},
    }, found
