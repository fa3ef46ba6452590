"""``config/set`` against a running ``edged run`` on a real broker: every payload is
answered on ``config/result``, and nothing the guard forbids ever gets in.

One daemon serves the whole module (starting one takes seconds): the regressions of
issue 11 first, each a payload that was accepted or left unanswered before, then a
hypothesis fuzz of payloads. The configured token is not ASCII on purpose: such a token
made ``hmac.compare_digest`` raise on every request, so none was answered.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.contracts.events import ConfigResult
from tests.mqtt_helpers import MosquittoBroker, MqttRecorder, free_port, wait_until
from tests.service.test_daemon import DEVICE, DaemonProcess, heartbeats, write_config, write_video

TOKEN = "tök-ən-☃"
#: What the contract lets a remote change touch besides [pipeline] and [smoothing]
#: (written out here, apart from the daemon's own allow-list).
ALLOWED_KEYS = {"cameras", "mqtt.heartbeat_s", "mqtt.homeassistant", "health.stale_after_s"}
SET = f"edged/{DEVICE}/config/set"
RESULT = f"edged/{DEVICE}/config/result"


@dataclass
class Remote:
    daemon: DaemonProcess
    rec: MqttRecorder
    media: Path
    video: Path
    health_port: int
    config: Path

    def ask(self, payload: bytes | dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Publish on config/set and return the answer; fails if none arrives."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        n = len(self.rec.on(RESULT))
        self.rec.client.publish(SET, raw, qos=1)
        self.rec.wait_for(
            lambda ms: len([m for m in ms if m.topic == RESULT]) > n,
            timeout,
            f"an answer to {raw[:120]!r}",
        )
        return dict(json.loads(self.rec.on(RESULT)[n].payload))

    def alive(self) -> None:
        assert self.daemon.proc.poll() is None, self.daemon.tail()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Remote]:
    tmp = tmp_path_factory.mktemp("remote")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    media = tmp / "media"
    media.mkdir()
    video = media / "grey.avi"
    write_video(video, [np.full((360, 480, 3), 90, np.uint8)] * 10)
    assert cv2.VideoCapture(str(video)).isOpened()
    port = free_port()
    cfg = write_config(
        tmp / "edged.toml",
        broker,
        tmp / "state",
        models_dir,
        cameras=[{"id": "cam", "source": str(video), "fps": 5, "loop": True}],
        mqtt={"remote_config": True, "remote_config_token": TOKEN, "remote_media_dir": str(media)},
        health_port=port,
    )
    rec = MqttRecorder(broker.host, broker.port)
    rec.wait_subscribed()
    daemon = DaemonProcess(cfg, tmp / "daemon.log")
    try:
        rec.wait_for(lambda ms: bool(heartbeats(rec)), 60, "first heartbeat")
        yield Remote(daemon, rec, media, video, port, cfg)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.tail()
        text = daemon.log_path.read_text(encoding="utf-8", errors="replace")
        assert "Task exception was never retrieved" not in text
        assert "config_reload_failed" not in text, "a reload raised something unexpected"
    finally:
        daemon.kill()
        rec.close()
        broker.kill()


def cam(source: str, **kw: Any) -> dict[str, Any]:
    return {"id": "x", "source": source, "enabled": False, **kw}


def test_a_url_followed_by_a_pipeline_is_refused(remote: Remote) -> None:
    for source in (
        "rtsp://127.0.0.1:1/x ! videoconvert ! appsink",
        "http://127.0.0.1:1/x ! filesink location=/tmp/owned",
    ):
        r = remote.ask({"token": TOKEN, "cameras": [cam(source)]})
        assert r["ok"] is False and "GStreamer" in r["error"], r
    assert set(heartbeats(remote.rec)[-1]["cameras"]) == {"cam"}


def test_deep_json_is_answered_with_a_refusal(remote: Remote) -> None:
    r = remote.ask(b'{"smoothing": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert r["ok"] is False and "nested deeper" in r["error"], r
    r = remote.ask(b"[" * 100_000)
    assert r["ok"] is False and "bytes; at most" in r["error"], r


def test_a_non_ascii_token_is_compared_and_a_wrong_one_refused(remote: Remote) -> None:
    r = remote.ask({"token": "ö", "smoothing": {"alpha": 0.5}})
    assert r["ok"] is False and "token" in r["error"] and "ö" not in r["error"], r
    r = remote.ask({"token": 5, "smoothing": {"alpha": 0.5}})
    assert r["ok"] is False and "token" in r["error"], r
    r = remote.ask({"token": TOKEN, "smoothing": {"alpha": 0.5}})
    assert r["ok"] is True, r


def test_a_nul_byte_in_a_source_is_answered_with_a_refusal(remote: Remote) -> None:
    for source in ("/dev/video0\u0000", str(remote.video) + "\u0000", "rtsp://cam\u0000/x"):
        r = remote.ask({"token": TOKEN, "cameras": [cam(source)]})
        assert r["ok"] is False and "control characters" in r["error"], r


def test_a_lone_surrogate_and_non_finite_numbers_are_answered(remote: Remote) -> None:
    r = remote.ask(b'{"token": "\\ud800"}')
    assert r["ok"] is False and "surrogate" in r["error"], r
    r = remote.ask(b'{"smoothing": {"alpha": NaN}}')
    assert r["ok"] is False and "not JSON" in r["error"], r
    r = remote.ask({"token": TOKEN, "cameras": [cam(str(remote.video), reconnect_max_s=1e300)]})
    assert r["ok"] is False and "reconnect_max_s" in r["error"], r
    r = remote.ask(b'{"token": "' + TOKEN.encode() + b'", "smoothing": {"window": 1e400}}')
    assert r["ok"] is False and "smoothing.window" in r["error"], r
    r = remote.ask({"token": TOKEN, "mqtt": {"homeassistant": "yes"}})
    assert r["ok"] is False and "mqtt.homeassistant" in r["error"], r


def test_a_duplicate_camera_id_refusal_does_not_echo_camera_passwords(remote: Remote) -> None:
    cams = [
        {"id": "d", "source": "rtsp://admin:hunter2-cam@10.0.0.5/h264", "enabled": False},
        {"id": "d", "source": "http://op:other-pw-7@10.0.0.6/mjpeg", "enabled": False},
    ]
    r = remote.ask({"token": TOKEN, "cameras": cams})
    assert r["ok"] is False and "used twice" in r["error"], r
    assert "hunter2-cam" not in r["error"] and "other-pw-7" not in r["error"]
    text = remote.daemon.log_path.read_text(encoding="utf-8", errors="replace")
    assert "hunter2-cam" not in text and "other-pw-7" not in text


# --- the fuzz ----------------------------------------------------------------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    [
        "smoothing.alpha",
        "smoothing.alpha",
        "smoothing.min_dwell_s",
        "mqtt.homeassistant",
        "mqtt.heartbeat_s",
        "smoothing.window",
        "pipeline.max_faces",
        "pipeline.det_threshold",
        "pipeline.crop_margin",
        "health.stale_after_s",
        "health.host",
        "health.port",
        "health.max_connections",
        "mqtt.host",
        "mqtt.port",
        "mqtt.remote_config",
        "mqtt.remote_config_token",
        "mqtt.remote_media_dir",
        "mqtt.homeassistant_prefix",
        "mqtt.topic_prefix",
        "mqtt.password",
        "device.state_dir",
        "device.id",
        "models.dir",
        "bogus.key",
    ]
)
_source_pieces = st.sampled_from(
    [
        "rtsp://",
        "http://",
        "https://",
        "file://",
        "127.0.0.1:1",
        "/x",
        " ! appsink",
        "!",
        " ",
        "\n",
        "\x00",
        "admin:pw@",
        "/dev/video",
        "/dev/sda",
        "3",
        "..",
        "/etc/passwd",
        "videotestsrc",
    ]
)


@st.composite
def _sources(draw: Any, media: Path) -> str:
    return draw(
        st.one_of(
            st.lists(_source_pieces, min_size=1, max_size=6).map("".join),
            st.sampled_from([str(media / "grey.avi"), str(media / ".." / "x"), f"{media}/a b"]),
            st.text(max_size=20),
        )
    )


def _set(change: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    change.setdefault(section, {})
    if isinstance(change[section], dict):
        change[section][key] = value


@st.composite
def _payloads(draw: Any, media: Path) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "change", "change", "change"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    change: dict[str, Any] = {}
    token = draw(st.sampled_from(["right", "right", "right", "wrong", "missing", "number"]))
    if token != "missing":
        change["token"] = {"right": TOKEN, "wrong": "tok", "number": 1}[token]
    for key in draw(st.lists(_keys, max_size=3)):
        _set(change, key, draw(_json))
    if draw(st.booleans()):
        n = draw(st.integers(min_value=0, max_value=2))
        change["cameras"] = [
            {"id": f"c{i}", "source": draw(_sources(media)), "enabled": False} for i in range(n)
        ]
    return json.dumps(change, allow_nan=False).encode()


def payload_cameras(payload: bytes) -> list[dict[str, Any]] | None:
    try:
        change = json.loads(payload)
    except ValueError:
        return None
    cams = change.get("cameras") if isinstance(change, dict) else None
    return [c for c in cams if isinstance(c, dict)] if isinstance(cams, list) else None


def _touched(change: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key a merge of ``change`` replaces (an empty table replaces too)."""
    keys = []
    for key, value in change.items():
        if isinstance(value, dict) and value:
            keys += _touched(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _remote_source_ok(source: str, media: Path, current: set[str]) -> bool:
    """An oracle written apart from edged.sources: what the contract lets in."""
    if source in current:
        return True
    if re.fullmatch(r"[0-9]+|/dev/video[0-9]+", source):
        return True
    if re.fullmatch(r"(?i:rtsps?|https?)://[^\s!\x00-\x1f\x7f]+", source):
        return True
    path = Path(source.removeprefix("file://"))
    return path.is_absolute() and path.resolve().is_relative_to(media.resolve())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_every_config_set_is_answered_and_nothing_forbidden_is_accepted(
    remote: Remote, data: st.DataObject
) -> None:
    payload = data.draw(_payloads(remote.media))
    answer = remote.ask(payload)
    assert set(answer) >= {"ok", "error", "ts"}, answer
    remote.alive()
    if not answer["ok"]:
        assert isinstance(answer["error"], str) and answer["error"]
        for camera in payload_cameras(payload) or []:
            source = str(camera.get("source", ""))
            if re.match(r"[A-Za-z]+://admin:pw@", source):  # a URL's password is not echoed
                assert source.split("@", 1)[0] + "@" not in answer["error"], answer
        return
    change = json.loads(payload)
    assert isinstance(change, dict) and change.pop("token") == TOKEN
    for key in _touched(change):
        assert key in ALLOWED_KEYS or key.split(".")[0] in ("pipeline", "smoothing"), key
    current = {str(remote.video)}
    for camera in change.get("cameras", []):
        assert _remote_source_ok(camera["source"], remote.media, current), camera


def test_after_the_fuzz_the_daemon_still_publishes_and_serves_health(remote: Remote) -> None:
    r = remote.ask(
        {
            "token": TOKEN,
            "mqtt": {"heartbeat_s": 1},
            "cameras": [{"id": "cam", "source": str(remote.video), "fps": 5, "loop": True}],
        }
    )
    assert r["ok"] is True, r
    n = len(heartbeats(remote.rec))
    remote.rec.wait_for(
        lambda ms: (
            len(heartbeats(remote.rec)) > n + 1
            and set(heartbeats(remote.rec)[-1]["cameras"]) == {"cam"}
        ),
        30,
        "heartbeats on the same topic",
    )
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{remote.health_port}/health", timeout=10) as h:
        assert json.loads(h.read())["status"] in ("ok", "degraded")
    remote.alive()


def test_an_empty_table_or_a_table_under_an_allowed_scalar_is_refused_by_the_guard(
    remote: Remote,
) -> None:
    """Found by the fuzz: the guard only saw leaves, and ``{}`` has none."""
    for change, key in (
        ({"models": {"dir": {}}}, "models.dir"),
        ({"mqtt": {"port": {}}}, "mqtt.port"),
        ({"health": {"stale_after_s": {"port": 1}}}, "health.stale_after_s.port"),
    ):
        r = remote.ask({"token": TOKEN, **change})
        assert r["ok"] is False and f"may not change {key}" in r["error"], r


def _sighup_rejection(remote: Remote, body: bytes) -> str:
    """Write ``body`` as the config file, SIGHUP, and return the logged refusal."""
    before = remote.daemon.logs()
    n = sum(1 for e in before if e.get("event") == "config_reload_rejected")
    good = remote.config.read_bytes()
    remote.config.write_bytes(body)
    try:
        remote.daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: (
                sum(1 for e in remote.daemon.logs() if e.get("event") == "config_reload_rejected")
                > n
            ),
            30,
            "the SIGHUP refusal",
        )
    finally:
        remote.config.write_bytes(good)
    rejected = [e for e in remote.daemon.logs() if e.get("event") == "config_reload_rejected"]
    assert rejected[n]["source"] == "sighup"
    remote.alive()
    return str(rejected[n]["reason"])


def test_sighup_with_an_unreadable_file_logs_one_refusal_naming_file_and_reason(
    remote: Remote,
) -> None:
    good = remote.config.read_bytes()
    for body, why in (
        (good + b"\n# caf\xe9\n", "not UTF-8"),
        (good + b"\nx = " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested too deeply"),
        (good.replace(b"fps = 5", b"fps = " + b"9" * 5000), "invalid TOML"),
    ):
        reason = _sighup_rejection(remote, body)
        assert reason.startswith(f"{remote.config}: ") and why in reason, reason
    text = remote.daemon.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text


def test_sighup_refusal_of_a_duplicate_camera_does_not_log_its_password(remote: Remote) -> None:
    good = remote.config.read_bytes()
    extra = b'\n[[cameras]]\nid = "cam"\nsource = "rtsp://admin:sighup-pw-3@10.0.0.9/h264"\n'
    reason = _sighup_rejection(remote, good + extra)
    assert "used twice" in reason
    assert "sighup-pw-3" not in remote.daemon.log_path.read_text(encoding="utf-8", errors="replace")


class Answers:
    """Records the answers a daemon gives instead of sending them (no broker needed)."""

    def __init__(self) -> None:
        self.given: list[tuple[bool, str | None]] = []
        self.ids: list[str | None] = []

    def publish_config_result(self, result: ConfigResult, **reply_to: object) -> bool:
        self.given.append((result.ok, result.error))
        self.ids.append(result.id)
        return True


def _bare_daemon(tmp_path: Path, *, remote_config: bool = True) -> tuple[Any, Answers]:
    from edged.config import build_settings
    from edged.service.daemon import Daemon

    settings = build_settings(
        {
            "device": {"id": DEVICE, "state_dir": str(tmp_path)},
            "mqtt": {"remote_config": remote_config, "remote_config_token": TOKEN},
        }
    )
    daemon = Daemon(settings, None)
    answers = Answers()
    daemon.publisher = answers  # type: ignore[assignment]
    return daemon, answers


async def test_an_unexpected_error_while_applying_is_still_answered(tmp_path: Path) -> None:
    """A bug in a reload path must not leave the sender without an answer (failure
    injected: ``apply`` raises a RuntimeError)."""
    daemon, answers = _bare_daemon(tmp_path)
    daemon._started = True

    async def broken_apply(new: Any, source: str) -> None:
        raise RuntimeError("boom")

    daemon.apply = broken_apply
    await daemon.remote_config(json.dumps({"token": TOKEN, "smoothing": {"alpha": 0.5}}).encode())
    assert answers.given == [(False, "internal error (RuntimeError); nothing changed, see the log")]


async def test_config_set_while_starting_is_refused_with_an_answer_and_ignored_when_off(
    tmp_path: Path,
) -> None:
    daemon, answers = _bare_daemon(tmp_path)
    await daemon.remote_config(b'{"smoothing": {"alpha": 0.5}}')
    assert answers.given == [(False, "edged is starting; send the change once it is ready")]
    daemon, answers = _bare_daemon(tmp_path, remote_config=False)
    daemon._started = True
    await daemon.remote_config(b'{"smoothing": {"alpha": 0.5}}')
    assert answers.given == []  # the contract: ignored unless remote_config = true
