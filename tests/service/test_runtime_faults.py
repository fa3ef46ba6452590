"""Faults at run time that must be reported with their reason and survived.

- A classifier failing mid-run (a CUDA fault, out of memory) raised onnxruntime's own
  exception past the schedule loop, which only catches EdgedError: the daemon ended.
  Now it is a ModelError like a detector's, the frames are dropped and counted, and
  /health says so. The failure is injected with a session whose ``run`` raises
  onnxruntime's ``Fail``; everything else (models, broker, camera, HTTP) is real.
- A wrong TLS CA (or TLS against a plain listener) logged only "retrying" and /health
  said "cannot connect": now the TLS reason is in the log, the stats and /health.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail
from structlog.testing import capture_logs

from edged.config import build_settings
from edged.errors import ModelError
from edged.models.catalog import CATALOG
from edged.mqtt.publisher import Publisher
from edged.service.daemon import Daemon
from edged.service.health import evaluate_health
from tests.models.test_classification import STANDINS, build
from tests.mqtt.test_publishing import _make_tls, make_settings, start
from tests.mqtt_helpers import MosquittoBroker, MqttRecorder, wait_until
from tests.service.test_daemon import CLASSIFIER, DETECTOR, DEVICE, FPS, Scene, scene

__all__ = ["scene"]  # a fixture of another test module, used here too


class FailingSession:
    """A real session whose ``run`` raises onnxruntime's Fail while ``failing`` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failing = True
        self.calls = 0

    def run(self, names: Any, feed: Any, *args: Any) -> Any:
        self.calls += 1
        if self.failing:
            raise Fail("CUDA failure 700: an illegal memory access was encountered")
        return self.real.run(names, feed, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def until(run: asyncio.Task[int], pred: Any, timeout: float, what: str) -> None:
    """Wait for ``pred()`` while the in-process daemon ``run`` keeps running."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert not run.done(), f"the daemon ended while waiting for {what}"
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


async def stop_daemon(daemon: Daemon, run: asyncio.Task[int]) -> None:
    daemon.request_stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(run, 30)


def test_a_classifier_failing_at_run_time_raises_model_error_naming_the_model(
    shared: Path,
) -> None:
    clf = build(CATALOG["enet_b2_7"], (shared / "models" / STANDINS["enet_b2_7"][0],))
    clf._sessions[0] = FailingSession(clf._sessions[0])  # type: ignore[assignment]
    crops = np.zeros((2, clf.input_size, clf.input_size, 3), np.uint8)
    with pytest.raises(ModelError, match="enet_b2_7: inference failed: CUDA failure 700"):
        clf(crops)


async def test_the_daemon_survives_a_failing_classifier_counts_the_frames_and_health_says_so(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene
) -> None:
    settings = build_settings(
        {
            "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")},
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "heartbeat_s": 1},
            "health": {"port": 0},
            "pipeline": {"detector": DETECTOR, "classifier": CLASSIFIER, "providers": ["cpu"]},
            "smoothing": {"min_dwell_s": 0.3, "min_confidence": 0.0, "track_timeout_s": 1.0},
            "models": {"dir": str(models_dir)},
            "cameras": [{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
        }
    )
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [f"edged/{DEVICE}/cam/event"])
    rec.wait_subscribed()
    daemon = Daemon(settings, None)
    run = asyncio.create_task(daemon.run())

    try:
        await until(run, lambda: len(rec.on(f"edged/{DEVICE}/cam/event")) >= 1, 60, "first event")
        assert daemon.pipeline is not None and daemon.pipeline.classifier is not None
        clf: Any = daemon.pipeline.classifier
        failing = FailingSession(clf._sessions[0])
        clf._sessions[0] = failing
        await until(run, lambda: daemon.snapshot().inference.failures >= 3, 60, "failures")
        assert not run.done()
        snap = daemon.snapshot()
        assert snap.cameras["cam"].frames_failed >= 3
        assert "CUDA failure 700" in (snap.inference.last_error or "")
        assert daemon.health is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{daemon.health.url}/health") as resp,
        ):
            body = await resp.json()
        assert resp.status == 200 and body["status"] == "degraded", body
        assert any("inference failing" in r and "enet_b2_7" in r for r in body["reasons"]), body
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{daemon.health.url}/metrics") as resp,
        ):
            assert 'edged_frames_failed_total{camera="cam"}' in await resp.text()
        # The model recovers: events flow again, the daemon never stopped.
        failing.failing = False
        seen = len(rec.on(f"edged/{DEVICE}/cam/event"))

        def more() -> bool:
            return len(rec.on(f"edged/{DEVICE}/cam/event")) > seen

        await until(run, more, 60, "events again")
    finally:
        await stop_daemon(daemon, run)
        rec.close()
    assert run.result() == 0


@pytest.mark.parametrize("listener", ["tls-other-ca", "plain"])
def test_a_tls_failure_is_logged_and_reported_with_its_reason(
    tmp_path: Path, mqtt_broker: MosquittoBroker, publishers: list[Publisher], listener: str
) -> None:
    for name in ("ours", "theirs"):
        (tmp_path / name).mkdir()
    ours = _make_tls(tmp_path / "ours")
    if listener == "plain":
        broker = mqtt_broker
    else:
        theirs = _make_tls(tmp_path / "theirs")
        broker = MosquittoBroker(
            tmp_path / "broker",
            extra_config=(
                f"cafile {theirs['ca']}\ncertfile {theirs['server']}\n"
                f"keyfile {theirs['server_key']}"
            ),
        )
        broker.start()
    try:
        prefix = f"cannot connect to {broker.host}:{broker.port}: "
        with capture_logs() as logs:
            pub = start(
                publishers, make_settings(tmp_path / "state", broker, tls_ca=str(ours["ca"]))
            )
            wait_until(
                lambda: str(pub.stats().last_error).startswith(prefix), 20, "a reason recorded"
            )
        error = str(pub.stats().last_error)
        reason = error.removeprefix(prefix)
        if listener == "tls-other-ca":
            assert reason.startswith("TLS: certificate verify failed: "), error
        else:  # the plain listener drops the handshake: the OS error is the reason
            assert reason and "None" not in reason, error
        failed = [e for e in logs if e["event"] == "mqtt_connect_failed"]
        assert failed and failed[0]["reason"] == reason, failed
        report = evaluate_health({"models": {"yunet": "cpu"}, "mqtt": pub.stats().to_json()}, 10.0)
        assert report.status == "degraded"
        assert report.reasons == [f"mqtt disconnected: {error}"]
    finally:
        if broker is not mqtt_broker:
            broker.kill()


async def test_a_recovered_camera_is_online_before_its_first_event_without_the_status_poll(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene
) -> None:
    """Availability follows the frame, not the status loop's 0.5 s poll: with that loop
    stopped (the fault injected), a camera that comes back still publishes ``online``
    before its first event, so a subscriber never gets an event from an "offline" camera."""
    late = tmp_path / "late.avi"
    settings = build_settings(
        {
            "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")},
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "heartbeat_s": 1},
            "health": {"enabled": False},
            "pipeline": {"detector": DETECTOR, "classifier": CLASSIFIER, "providers": ["cpu"]},
            "smoothing": {"min_dwell_s": 0.3, "min_confidence": 0.0, "track_timeout_s": 1.0},
            "models": {"dir": str(models_dir)},
            "cameras": [
                {
                    "id": "late",
                    "source": str(late),
                    "fps": FPS,
                    "loop": True,
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 0.5,
                }
            ],
        }
    )
    status_topic, event_topic = f"edged/{DEVICE}/late/status", f"edged/{DEVICE}/late/event"
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port, [status_topic, event_topic])
    rec.wait_subscribed()
    daemon = Daemon(settings, None)
    run = asyncio.create_task(daemon.run())
    try:
        await until(run, lambda: rec.payloads(status_topic)[-1:] == [b"offline"], 60, "offline")
        (poll,) = [t for t in daemon._tasks if t.get_name() == "heartbeat"]
        poll.cancel()  # the fault: no periodic availability check from here on
        late.write_bytes(scene.video.read_bytes())
        await until(run, lambda: bool(rec.on(event_topic)), 60, "the first event")
        ms = list(rec.messages)
        first = next(i for i, m in enumerate(ms) if m.topic == event_topic)
        before = [m.payload for m in ms[:first] if m.topic == status_topic]
        assert before[-1:] == [b"online"], before
    finally:
        await stop_daemon(daemon, run)
        rec.close()
    assert run.result() == 0
