"""The daemon end to end: a real ``edged run`` process, a real Mosquitto broker, a real
video file written here, real ONNX models from ../shared, and a real MQTT subscriber.

The video shows one face (cut from ``s_l.jpg``) for a while, then a different face at the
same place (same track, different emotion scores), then nothing: the subscriber must see
``appeared``, ``changed`` and ``left``. The two faces are chosen at set-up time by running
the same pipeline the daemon runs, so the expected change is a fact about these models,
not a hope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import build_settings
from edged.errors import ConfigError
from edged.models.loader import session_factory
from edged.pipeline import build_pipeline
from edged.service.daemon import Daemon, wait_event
from tests.mqtt.test_homeassistant import ha_problems
from tests.mqtt_helpers import Message, MosquittoBroker, MqttRecorder, wait_until

DEVICE = "itest"
FPS = 10
DETECTOR = "yunet"
CLASSIFIER = "enet_b2_7"


@dataclass
class Scene:
    """Two face crops that the test pipeline labels differently, and the video of them."""

    video: Path
    label_a: str
    label_b: str


def _face_crops(image: np.ndarray, pipeline: Any) -> list[np.ndarray]:
    result = pipeline.process_one(image)
    crops = []
    for face in result.faces:
        x1, y1, x2, y2 = (int(v) for v in face.bbox)
        w, h = x2 - x1, y2 - y1
        x1, y1 = max(0, x1 - w // 2), max(0, y1 - h // 2)
        crops.append(image[y1 : y2 + h // 2, x1 : x2 + w // 2].copy())
    return crops


def _place(face: np.ndarray, size: int = 200) -> np.ndarray:
    frame = np.full((360, 480, 3), 60, np.uint8)
    tile = cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)
    frame[80 : 80 + size, 140 : 140 + size] = tile
    return frame


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (480, 360))
    assert writer.isOpened(), "cv2 cannot write MJPG .avi files here"
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def scene(images: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Scene:
    settings = build_settings(
        {
            "pipeline": {"detector": DETECTOR, "classifier": CLASSIFIER, "providers": ["cpu"]},
            "models": {"dir": str(models_dir)},
        }
    )
    pipeline = build_pipeline(settings, session_factory(settings))
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    faces = _face_crops(img, pipeline)
    candidates = []
    for face in faces:
        for variant in (face, cv2.flip(face, 1), cv2.convertScaleAbs(face, alpha=0.6), 255 - face):
            frame = _place(variant)
            res = pipeline.process_one(frame)
            if len(res.faces) == 1:
                ranked = sorted(res.faces[0].scores.values(), reverse=True)
                candidates.append((frame, res.faces[0].emotion, ranked[0] - ranked[1]))
    pairs = [(a, b) for a in candidates for b in candidates if a[1] != b[1]]
    assert pairs, f"no two face variants get different labels: {[c[1] for c in candidates]}"
    # The clearest pair: the smaller of the two top-1 margins is largest.
    a, b = max(pairs, key=lambda p: min(p[0][2], p[1][2]))
    (frame_a, label_a, _), (frame_b, label_b, _) = a, b
    blank = np.full_like(frame_a, 60)
    frames = [frame_a] * 25 + [frame_b] * 25 + [blank] * 20
    video = tmp_path_factory.mktemp("video") / "scene.avi"
    write_video(video, frames)
    return Scene(video, str(label_a), str(label_b))


def write_config(
    path: Path, broker: MosquittoBroker, state: Path, models: Path, **over: Any
) -> Path:
    cams = over.pop("cameras")
    mqtt = {"host": broker.host, "port": broker.port, "heartbeat_s": 1, "keepalive_s": 5}
    mqtt.update(over.pop("mqtt", {}))
    lines = [
        f'[device]\nid = "{DEVICE}"\nstate_dir = "{state}"',
        "[mqtt]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in mqtt.items()),
        f"[health]\nport = {over.pop('health_port', 0)}\n"
        + "\n".join(f"{k} = {json.dumps(v)}" for k, v in over.pop("health", {}).items()),
        f'[pipeline]\ndetector = "{DETECTOR}"\nclassifier = "{CLASSIFIER}"\nproviders = ["cpu"]',
        "[smoothing]\nalpha = 0.5\nmin_dwell_s = 0.3\nmin_confidence = 0.0\ntrack_timeout_s = 1.0",
        f'[models]\ndir = "{models}"',
    ]
    for cam in cams:
        lines.append("[[cameras]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in cam.items()))
    assert not over, over
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return path


class DaemonProcess:
    """``python -m edged run`` in a subprocess, JSON logs to a file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.log_path = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        env.update(extra_env or {})
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "-c", str(config), "--log-format", "json"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=preexec_fn,  # e.g. a lower descriptor limit (the flood test)
        )

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def events_logged(self) -> list[str]:
        return [e["id"] for e in self.logs() if e.get("event") == "emotion_event"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Leave every thread's stack in the log (faulthandler on SIGUSR1) for the report.
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            raise
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def tail(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()


def events(rec: MqttRecorder, camera: str = "cam") -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in rec.on(f"edged/{DEVICE}/{camera}/event")]


def heartbeats(rec: MqttRecorder) -> list[dict[str, Any]]:
    return [json.loads(p) for p in rec.payloads(f"edged/{DEVICE}/heartbeat")]


def status_is(value: bytes) -> Any:
    def check(msgs: list[Message]) -> bool:
        st = [m for m in msgs if m.topic == f"edged/{DEVICE}/status"]
        return bool(st) and st[-1].payload == value

    return check


def test_daemon_publishes_online_discovery_heartbeat_events_state_and_offline_on_sigterm(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    rec.wait_subscribed()
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS}],
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    daemons.append(d)
    rec.wait_for(status_is(b"online"), 30, "status online")
    camera_device = f"homeassistant/device/edged_{DEVICE}_cam/config"
    disc = rec.wait_for(lambda ms: any(m.topic == camera_device for m in ms), 10, "HA discovery")
    conf = json.loads(next(m for m in disc if m.topic == camera_device).payload)
    assert conf["components"]["emotion"]["state_topic"] == f"edged/{DEVICE}/cam/emotion"
    assert conf["availability"][0]["topic"] == f"edged/{DEVICE}/status"
    # Every discovery config the daemon sends passes Home Assistant's schema rules, with
    # unique ids and the camera device linked under edged's own device.
    edged_device = f"homeassistant/device/edged_{DEVICE}/config"
    disc = rec.wait_for(lambda ms: any(m.topic == edged_device for m in ms), 10, "edged device")
    configs = {m.topic: json.loads(m.payload) for m in disc if m.topic.startswith("homeassistant/")}
    assert set(configs) == {edged_device, camera_device}
    for topic, config in configs.items():
        assert ha_problems(config) == [], topic
    uids = [c["unique_id"] for cfg in configs.values() for c in cfg["components"].values()]
    assert len(uids) == len(set(uids))
    assert conf["device"]["via_device"] == configs[edged_device]["device"]["identifiers"][0]
    labels = conf["components"]["emotion"]["options"]
    assert len(labels) == 8 and labels[-1] == "none", "the 7-class classifier's labels + none"
    assert "contemptuous" not in labels
    # The camera's own availability: online once it produces frames.
    rec.wait_for(
        lambda ms: rec.payloads(f"edged/{DEVICE}/cam/status")[-1:] == [b"online"],
        20,
        "camera online",
    )

    rec.wait_for(lambda ms: any(e["type"] == "left" for e in events(rec)), 40, "left event")
    seq = events(rec)
    types = [e["type"] for e in seq]
    assert types[0] == "appeared" and "changed" in types and types[-1] == "left", types
    assert len({e["track_id"] for e in seq}) == 1, "one face, one track across the change"
    appeared = seq[0]
    changed = next(e for e in seq if e["type"] == "changed")
    assert appeared["emotion"] == scene.label_a
    assert changed["emotion"] == scene.label_b and changed["previous"] == scene.label_a
    assert len({e["id"] for e in seq}) == len(seq), "event ids are unique"
    for e in seq:
        assert e["schema"] == 1 and e["device"] == DEVICE and e["camera"] == "cam"
        assert e["ts"].endswith("Z") and "T" in e["ts"]
        assert len(e["bbox"]) == 4 and all(isinstance(v, int) for v in e["bbox"])
        assert isinstance(e["duration_s"], (int, float)) and e["duration_s"] >= 0
        assert set(e["scores"]) <= {
            "neutral",
            "happy",
            "sad",
            "angry",
            "fearful",
            "disgusted",
            "surprised",
        }
        assert e["emotion"] in e["scores"]

    hb = heartbeats(rec)[-1]
    assert hb["schema"] == 1 and hb["phase"] == "sota_phase2" and hb["version"]
    assert hb["providers"] == {DETECTOR: "cpu", CLASSIFIER: "cpu"}
    cam = hb["cameras"]["cam"]
    assert {
        "state",
        "fps_in",
        "fps_processed",
        "faces",
        "dropped_frames",
        "last_frame_age_s",
    } <= set(cam)
    assert hb["spool"] == {"pending": 0, "dropped": 0}

    # Retained state: once the live state says "none" with no face, a subscriber arriving gets
    # it at once. Both topics are waited for: "none" alone is also the state of a face seen
    # before its emotion is established (faces 1), and attributes follow emotion on the wire.
    def left(ms: list[Message]) -> bool:
        attrs = rec.payloads(f"edged/{DEVICE}/cam/attributes")[-1:]
        return rec.payloads(f"edged/{DEVICE}/cam/emotion")[-1:] == [b"none"] and bool(
            attrs and json.loads(attrs[0])["faces"] == 0
        )

    rec.wait_for(left, 10, "state none, no face")
    late = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"edged/{DEVICE}/cam/+"])
    try:
        got = late.wait_for(
            lambda ms: (
                {m.topic for m in ms if m.retain}
                >= {f"edged/{DEVICE}/cam/emotion", f"edged/{DEVICE}/cam/attributes"}
            ),
            10,
            "retained state",
        )
        emotion = [m for m in got if m.topic.endswith("/emotion")][-1].payload.decode()
        assert emotion == "none", "the face has left"
        attrs = json.loads([m for m in got if m.topic.endswith("/attributes")][-1].payload)
        assert attrs["faces"] == 0
    finally:
        late.close()

    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    rec.wait_for(status_is(b"offline"), 10, "offline after SIGTERM")
    rec.close()


def test_kill_9_leaves_the_retained_offline_will(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"edged/{DEVICE}/status"])
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    daemons.append(d)
    rec.wait_for(status_is(b"online"), 30, "online")
    d.proc.kill()
    d.wait(10)
    # keepalive 5 s: the broker gives up on the client after 1.5 × keepalive.
    rec.wait_for(status_is(b"offline"), 20, "last will")
    rec.close()
    # The will is retained: a subscriber arriving later still learns the device is offline.
    late = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"edged/{DEVICE}/status"])
    try:
        got = late.wait_for(lambda ms: bool(ms), 10, "retained status")
        assert got[-1].payload == b"offline" and got[-1].retain
    finally:
        late.close()


def test_a_camera_that_ends_on_a_face_still_reports_left_and_state_none(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    cap = cv2.VideoCapture(str(scene.video))
    frames = [cap.read()[1] for _ in range(15)]
    cap.release()
    video = tmp_path / "ends_on_face.avi"
    write_video(video, frames)
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"edged/{DEVICE}/cam/#"])
    rec.wait_subscribed()
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[{"id": "cam", "source": str(video), "fps": FPS}],
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    daemons.append(d)
    rec.wait_for(lambda ms: any(e["type"] == "left" for e in events(rec)), 30, "left after EOF")
    rec.wait_for(
        lambda ms: rec.payloads(f"edged/{DEVICE}/cam/emotion")[-1:] == [b"none"], 10, "none"
    )
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    rec.close()


@contextlib.contextmanager
def persistent_session(
    tmp_path: Path, client_id: str
) -> Iterator[tuple[MosquittoBroker, MqttRecorder]]:
    """A broker that keeps sessions across restarts and a subscriber whose session it keeps.

    Without both, the daemon's resend after a broker restart can race the subscriber's
    re-subscription, and the test would blame the daemon for the subscriber's gap.
    """
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    rec = MqttRecorder(
        broker.host, broker.port, [f"edged/{DEVICE}/+/event"], client_id=client_id,
        clean_session=False,
    )  # fmt: skip
    try:
        rec.wait_subscribed()
        yield broker, rec
    finally:
        rec.close()
        broker.kill()


def event_ids(messages: list[Message]) -> list[str]:
    return [json.loads(m.payload)["id"] for m in messages]


def _in_order(received: list[str], expected: list[str]) -> None:
    first_seen: dict[str, int] = {}
    for i, eid in enumerate(received):
        first_seen.setdefault(eid, i)
    missing = [e for e in expected if e not in first_seen]
    assert not missing, f"{len(missing)} of {len(expected)} events never arrived"
    positions = [first_seen[e] for e in expected]
    assert positions == sorted(positions), "events arrived out of order"


def test_broker_outage_loses_no_event_and_keeps_order(
    tmp_path: Path, models_dir: Path, scene: Scene, daemons: list
) -> None:
    with persistent_session(tmp_path, "outage-rec") as (broker, rec):
        cfg = write_config(
            tmp_path / "edged.toml",
            broker,
            tmp_path / "state",
            models_dir,
            cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
            health_port=0,
        )
        d = DaemonProcess(cfg, tmp_path / "daemon.log")
        daemons.append(d)
        rec.wait_for(lambda ms: len(ms) >= 1, 40, "first event")
        broker.stop()
        before = len(d.events_logged())
        wait_until(
            lambda: len(d.events_logged()) >= before + 3, 40, "events while the broker is down"
        )
        broker.start()
        logged = d.events_logged()
        rec.wait_for(lambda ms: set(event_ids(ms)) >= set(logged), 40, "spooled events")
        _in_order(event_ids(rec.messages), logged)
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0, d.tail()


def test_events_spooled_before_kill_9_are_delivered_after_restart(
    tmp_path: Path, models_dir: Path, scene: Scene, daemons: list
) -> None:
    with persistent_session(tmp_path, "restart-rec") as (broker, rec):
        broker.stop()  # the subscription is kept in the broker's persistence file
        cams = [{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}]
        cfg = write_config(
            tmp_path / "edged.toml", broker, tmp_path / "state", models_dir, cameras=cams
        )
        first = DaemonProcess(cfg, tmp_path / "first.log")
        daemons.append(first)
        wait_until(lambda: len(first.events_logged()) >= 3, 60, "events spooled with no broker")
        first.proc.kill()
        first.wait(10)
        spooled = first.events_logged()
        broker.start()
        second = DaemonProcess(cfg, tmp_path / "second.log")
        daemons.append(second)
        rec.wait_for(lambda ms: set(event_ids(ms)) >= set(spooled), 60, "killed daemon's events")
        _in_order(event_ids(rec.messages), spooled)
        second.signal(signal.SIGTERM)
        assert second.wait(20) == 0, second.tail()


def _health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def _free_port() -> int:
    from tests.mqtt_helpers import free_port

    return free_port()


def test_config_set_and_sighup_apply_valid_changes_and_refuse_invalid_ones(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    rec.wait_subscribed()
    cam = {"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}
    cam2 = {"id": "cam2", "source": str(scene.video), "fps": 2, "loop": True}
    cfg_args = dict(
        mqtt={"remote_config": True, "remote_config_token": "s3cret"}, health_port=_free_port()
    )
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[cam],
        **dict(cfg_args),
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    daemons.append(d)
    # config/set is ignored until the daemon is ready; the first heartbeat says it is.
    rec.wait_for(lambda ms: bool(heartbeats(rec)), 30, "first heartbeat")
    pid = d.proc.pid
    topic = f"edged/{DEVICE}/config/set"
    result_topic = f"edged/{DEVICE}/config/result"

    def ask(payload: dict[str, Any]) -> dict[str, Any]:
        n = len(rec.on(result_topic))
        rec.client.publish(topic, json.dumps(payload), qos=1)
        rec.wait_for(
            lambda ms: len([m for m in ms if m.topic == result_topic]) > n, 20, "config/result"
        )
        return dict(json.loads(rec.on(result_topic)[n].payload))

    # Refused: wrong token, invalid value, a forbidden key. Nothing changes.
    r = ask({"token": "nope", "smoothing": {"alpha": 0.5}})
    assert r["ok"] is False and "token" in r["error"] and "nope" not in r["error"]
    r = ask({"token": "s3cret", "smoothing": {"alpha": 5}})
    assert r["ok"] is False and "smoothing.alpha" in r["error"]
    r = ask({"token": "s3cret", "models": {"dir": "/tmp"}})
    assert r["ok"] is False and "models.dir" in r["error"]
    r = ask({"token": "s3cret", "cameras": [cam, {"id": "x", "source": "/etc/shadow"}]})
    assert r["ok"] is False and "/etc/shadow" in r["error"]
    assert set(heartbeats(rec)[-1]["cameras"]) == {"cam"}

    # Valid: a second camera (same file, allowed dir) appears without a restart. The
    # request's id comes back in the answer, so an operator can pair them.
    r = ask(
        {"token": "s3cret", "id": "req-7", "cameras": [cam, {**cam2, "source": "/dev/video99"}]}
    )
    assert r["ok"] is True, r
    assert r["id"] == "req-7" and r["schema"] == 1
    n = len(heartbeats(rec))
    rec.wait_for(
        lambda ms: (
            len(heartbeats(rec)) > n and set(heartbeats(rec)[-1]["cameras"]) == {"cam", "cam2"}
        ),
        20,
        "heartbeat with two cameras",
    )
    assert d.proc.pid == pid and d.proc.poll() is None

    # Models: a swap to a model that is not installed is refused naming the file, and the
    # running pipeline stays; a swap to an installed one applies without a restart.
    r = ask({"token": "s3cret", "pipeline": {"detector": "scrfd_10g"}})
    assert r["ok"] is False and "scrfd_10g_bnkps.onnx" in r["error"], r
    assert heartbeats(rec)[-1]["providers"] == {DETECTOR: "cpu", CLASSIFIER: "cpu"}
    r = ask({"token": "s3cret", "pipeline": {"classifier": "enet_b0_8"}})
    assert r["ok"] is True, r
    rec.wait_for(
        lambda ms: heartbeats(rec)[-1]["providers"] == {DETECTOR: "cpu", "enet_b0_8": "cpu"},
        20,
        "heartbeat with the swapped classifier",
    )
    assert d.proc.pid == pid and d.proc.poll() is None

    # SIGHUP with an invalid file: refused, logged, old config keeps running.
    cfg.write_text(cfg.read_text() + "\n[bogus]\nx = 1\n")
    d.signal(signal.SIGHUP)
    wait_until(
        lambda: any(
            e.get("event") == "config_reload_rejected" and e.get("source") == "sighup"
            for e in d.logs()
        ),
        20,
        "reject",
    )
    rejected = next(
        e
        for e in d.logs()
        if e.get("event") == "config_reload_rejected" and e.get("source") == "sighup"
    )
    assert "bogus" in rejected["reason"]
    # SIGHUP with a valid file: the file's camera set (cam + cam2 from the file) applies.
    write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[cam, cam2],
        **dict(cfg_args),
    )
    d.signal(signal.SIGHUP)
    wait_until(
        lambda: sum(1 for e in d.logs() if e.get("event") == "config_reloaded") >= 2,
        20,
        "sighup reload",
    )
    n = len(heartbeats(rec))
    rec.wait_for(lambda ms: len(heartbeats(rec)) > n + 1, 20, "heartbeats after reload")
    hb = heartbeats(rec)[-1]
    assert set(hb["cameras"]) == {"cam", "cam2"}
    wait_until(
        lambda: heartbeats(rec)[-1]["cameras"]["cam2"]["state"] == "running", 20, "cam2 running"
    )
    assert d.proc.pid == pid and d.proc.poll() is None
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    rec.close()


def test_a_dead_camera_recovers_while_the_other_keeps_publishing(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    rec.wait_subscribed()
    late_file = tmp_path / "late.avi"
    port = _free_port()
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[
            {"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True},
            {
                "id": "dead",
                "source": str(late_file),
                "fps": FPS,
                "loop": True,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
            },
        ],
        health_port=port,
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    daemons.append(d)
    rec.wait_for(lambda ms: len(events(rec, "cam")) >= 2, 40, "events from the live camera")
    hb = heartbeats(rec)[-1]
    assert hb["cameras"]["dead"]["state"] == "reconnecting"
    assert hb["cameras"]["cam"]["state"] == "running"
    health = _health(port)
    assert health["status"] == "degraded", health
    # Home Assistant sees the dead camera unavailable and the live one available.
    assert rec.payloads(f"edged/{DEVICE}/cam/status")[-1:] == [b"online"]
    assert rec.payloads(f"edged/{DEVICE}/dead/status")[-1:] == [b"offline"]
    late_file.write_bytes(scene.video.read_bytes())
    ms = rec.wait_for(
        lambda ms: len(events(rec, "dead")) >= 1, 40, "events from the recovered camera"
    )
    # The frame that makes the recovered camera's first event also makes it available,
    # and its status goes out first: a subscriber never sees an event of an offline camera.
    first = next(i for i, m in enumerate(ms) if m.topic == f"edged/{DEVICE}/dead/event")
    status_before = [m.payload for m in ms[:first] if m.topic == f"edged/{DEVICE}/dead/status"]
    assert status_before[-1:] == [b"online"], status_before
    wait_until(lambda: _health(port)["status"] == "ok", 20, "health ok")
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    rec.close()


def test_systemd_gets_ready_after_start_watchdog_pings_and_stopping_on_sigterm(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"edged/{DEVICE}/status"])
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
    )
    d = DaemonProcess(
        cfg,
        tmp_path / "daemon.log",
        {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"},
    )
    daemons.append(d)
    seen: list[str] = []

    def until(line: str) -> None:
        while not any(line in m for m in seen):
            seen.append(sock.recv(4096).decode())

    try:
        until("READY=1")
        # READY comes after the models are warm and the cameras opened: the log says so.
        wait_until(lambda: any(e.get("event") == "daemon_ready" for e in d.logs()), 10, "ready")
        order = [e.get("event") for e in d.logs()]
        ready = order.index("daemon_ready")
        assert order.index("pipeline_loaded") < ready and order.index("camera_opened") < ready
        until("WATCHDOG=1")
        rec.wait_for(status_is(b"online"), 20, "online")
        d.signal(signal.SIGTERM)
        until("STOPPING=1")
        assert d.wait(20) == 0, d.tail()
    finally:
        sock.close()
        rec.close()


# --- the remote-config guard, without a broker ---------------------------------------------


def _daemon(tmp_path: Path, **mqtt: Any) -> Daemon:
    settings = build_settings({"device": {"id": DEVICE, "state_dir": str(tmp_path)}, "mqtt": mqtt})
    return Daemon(settings, None)


def test_remote_config_is_refused_when_disabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="disabled"):
        _daemon(tmp_path).check_remote_change(b'{"smoothing": {"alpha": 0.5}}')


@pytest.mark.parametrize(
    "change",
    [
        {"device": {"state_dir": "/tmp/x"}},
        {"models": {"dir": "/tmp"}},
        {"mqtt": {"host": "evil.example"}},
        {"mqtt": {"password": "x"}},
        {"mqtt": {"remote_config_token": ""}},
        {"health": {"host": "0.0.0.0"}},
        {"cameras": [{"id": "c", "source": "filesrc location=/etc/passwd ! fakesink"}]},
        {"cameras": [{"id": "c", "source": "/etc/passwd"}]},
        {"cameras": [{"id": "c", "source": "/dev/video0/../../etc/passwd"}]},
        {"mqtt": {"remote_media_dir": "/"}},
        {"mqtt": {"homeassistant_prefix": "other"}},
        {"mqtt": {"spool_max_events": 1}},
        {"MQTT": {"host": "evil.example"}},
    ],
)
def test_remote_config_never_touches_files_credentials_or_bind_address(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    d = _daemon(tmp_path, remote_config=True)
    with pytest.raises(ConfigError, match="config/set may not"):
        d.check_remote_change(json.dumps(change).encode())


def test_remote_config_token_must_match_and_is_not_echoed(tmp_path: Path) -> None:
    d = _daemon(tmp_path, remote_config=True, remote_config_token="tok")
    with pytest.raises(ConfigError, match="token") as err:
        d.check_remote_change(b'{"token": "guess", "smoothing": {"alpha": 0.5}}')
    assert "guess" not in str(err.value)
    assert d.check_remote_change(b'{"token": "tok", "smoothing": {"alpha": 0.5}}') == {
        "smoothing": {"alpha": 0.5}
    }


def test_remote_config_allows_urls_devices_and_files_under_the_media_dir(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    d = _daemon(tmp_path, remote_config=True, remote_media_dir=str(media))
    cams = [
        {"id": "a", "source": "rtsp://cam.lan/stream"},
        {"id": "b", "source": "/dev/video2"},
        {"id": "c", "source": "1"},
        {"id": "d", "source": str(media / "clip.mp4")},
    ]
    assert d.check_remote_change(json.dumps({"cameras": cams}).encode())["cameras"] == cams
    with pytest.raises(ConfigError, match="remote_media_dir"):
        d.check_remote_change(
            json.dumps({"cameras": [{"id": "e", "source": str(media / ".." / "x.mp4")}]}).encode()
        )


def test_config_keys_are_case_sensitive_in_files_and_changes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MQTT: unknown key"):
        build_settings({"MQTT": {"host": "evil"}}, "edged.toml")


def test_run_refuses_to_start_without_a_usable_model_and_names_file_and_fix(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[device]\nid = "{DEVICE}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[pipeline]\nphase = "sota_phase2"\nproviders = ["cpu"]\n'
        f'[models]\ndir = "{tmp_path / "empty"}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    res = subprocess.run(
        [sys.executable, "-m", "edged", "run", "-c", str(cfg), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 1
    err = res.stderr
    assert "scrfd/scrfd_10g_bnkps.onnx" in err and "edged models fetch" in err, err
    assert "Traceback" not in err


# -- the loop's waits ------------------------------------------------------------------------


async def test_wait_event_is_cancelled_even_when_the_event_is_set_in_the_same_iteration() -> None:
    """The schedule loop waits for frames this way; asyncio.wait_for (Python < 3.12) returns
    instead of raising here, and a daemon whose loop swallowed its cancellation never
    finished stopping (seen as a SIGTERM'd daemon still publishing 20 s later)."""
    ev = asyncio.Event()
    task = asyncio.create_task(wait_event(ev, 10))
    await asyncio.sleep(0)
    ev.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wait_event_returns_on_set_and_on_timeout() -> None:
    ev = asyncio.Event()
    t0 = time.monotonic()
    await wait_event(ev, 0.05)
    assert time.monotonic() - t0 >= 0.04
    asyncio.get_running_loop().call_later(0.01, ev.set)
    await wait_event(ev, 10)
    assert ev.is_set()


# --- a second signal forces the exit ---------------------------------------------------------


class BlockableRelay:
    """A TCP relay in front of the broker that can stop forwarding: a broker that is still
    connected but answers nothing (a frozen host), so the daemon's offline publish waits
    for an acknowledgement that never comes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.blocked = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._socks: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                broker = socket.create_connection(self.upstream)
                self._socks += [client, broker]
                for a, b in ((client, broker), (broker, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.blocked.is_set():
                    dst.sendall(data)

    def close(self) -> None:
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def test_a_second_sigterm_forces_the_exit_while_shutdown_waits_on_a_blocked_broker(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, daemons: list
) -> None:
    relay = BlockableRelay((mqtt_broker.host, mqtt_broker.port))
    try:
        cfg = write_config(
            tmp_path / "edged.toml",
            mqtt_broker,
            tmp_path / "state",
            models_dir,
            cameras=[],
            mqtt={"port": relay.port},
        )
        d = DaemonProcess(cfg, tmp_path / "daemon.log")
        daemons.append(d)
        logged = lambda name: any(e.get("event") == name for e in d.logs())  # noqa: E731
        wait_until(lambda: logged("mqtt_connected") and logged("daemon_ready"), 60, "ready")
        relay.blocked.set()  # the offline publish now waits for its PUBACK (5 s bound)
        d.signal(signal.SIGTERM)
        wait_until(lambda: logged("daemon_stopping"), 20, "stopping")
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 1, d.tail()
        assert logged("daemon_force_exit") and logged("daemon_forced_exit"), d.tail()
        assert not logged("daemon_stopped"), d.tail()
    finally:
        relay.close()
