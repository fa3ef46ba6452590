"""``GET /health`` and ``GET /metrics``: what an operator or Prometheus asks the daemon.

The server is aiohttp on the daemon's own event loop, so a handler must never block: both
endpoints only call the daemon's ``snapshot()`` callable, which returns plain data the daemon
already holds (no I/O, no waiting on the pipeline), and render it.

The snapshot (a plain dict, JSON-serialisable) has this shape; every key is optional and a
missing one reads as empty/zero::

    {
      "version": "0.1.0", "phase": "sota_phase2", "uptime_s": 12.5,
      "models": {"scrfd_10g": "cuda", "enet_b2_7": "cuda"},     # loaded model → provider
      "cameras": {                                              # configured + enabled ones
        "door": {"state": "running",            # capture state (edged.capture)
                 "last_frame_age_s": 0.04,      # None before the first frame
                 "fps_in": 25.0, "fps_processed": 5.0, "faces": 1,
                 "frames_in": 1234, "frames_processed": 250,    # monotonic counts
                 "dropped_frames": 984, "reconnects": 0, "last_error": None},
      },
      "mqtt": {"connected": True, "events_published": 17},
      "spool": {"pending": 0, "dropped": 0},
    }

Health is derived from it by :func:`evaluate_health`: ``failing`` (HTTP 503) when no model is
loaded, or cameras are configured and none produces frames; ``degraded`` when some camera
does not produce frames, inference failed within the last ``stale_after_s`` (snapshot key
``inference``: failures, last_error, last_error_age_s), or MQTT is disconnected (with the
publisher's ``last_error``: a TLS or protocol failure says which); ``ok`` otherwise. A
camera *produces frames* when its state is ``running`` and its newest frame is younger than
``stale_after_s``.

Metrics live in a private :class:`prometheus_client.CollectorRegistry` (never the global
one, so two daemons in one test process do not collide). Counts that another component
already keeps monotonically (frames per camera, events published, spool drops) are read
from the snapshot at scrape time by a custom collector instead of being mirrored into
Counter objects: one source of truth, no increments to forget, and a value that cannot
drift from the heartbeat's. Only the inference latency histogram is fed directly
(:meth:`Metrics.observe_inference`), because a distribution cannot be rebuilt from a count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged.config import HealthSettings
from edged.errors import EdgedError

log = structlog.get_logger(__name__)

Snapshot = Mapping[str, Any]
SnapshotFn = Callable[[], Snapshot]
Status = Literal["ok", "degraded", "failing"]

#: Inference latencies on a Jetson/PC range from ~1 ms (YuNet) to seconds (a cold TensorRT
#: engine); these buckets resolve both ends.
INFERENCE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


def camera_producing(camera: Mapping[str, Any], stale_after_s: float) -> bool:
    """Whether a camera snapshot is ``running`` with a frame younger than ``stale_after_s``."""
    age = camera.get("last_frame_age_s")
    return (
        camera.get("state") == "running"
        and isinstance(age, (int, float))
        and math.isfinite(age)
        and age <= stale_after_s
    )


def _camera_problem(cam_id: str, camera: Mapping[str, Any], stale_after_s: float) -> str:
    state = camera.get("state", "unknown")
    age = camera.get("last_frame_age_s")
    if state == "running":
        what = "no frame yet" if age is None else f"last frame {float(age):.1f}s ago"
    else:
        what = str(state)
    error = camera.get("last_error")
    return f"camera {cam_id}: {what}" + (f" ({error})" if error else "")


@dataclass(frozen=True)
class HealthReport:
    """The verdict on one snapshot: status, why, and the JSON body ``/health`` returns."""

    status: Status
    reasons: list[str] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return 503 if self.status == "failing" else 200


def evaluate_health(snapshot: Snapshot, stale_after_s: float) -> HealthReport:
    """Derive ok/degraded/failing and the reasons from a snapshot (see the module doc)."""
    failing: list[str] = []
    degraded: list[str] = []
    models = snapshot.get("models") or {}
    if not models:
        failing.append("no model loaded")
    busy = snapshot.get("inference_busy_s")
    if isinstance(busy, (int, float)) and busy > stale_after_s:
        failing.append(f"inference stalled: one batch has run for {busy:.1f}s")
    cameras: Mapping[str, Mapping[str, Any]] = snapshot.get("cameras") or {}
    cam_checks: dict[str, Any] = {}
    down: list[str] = []
    for cam_id, cam in sorted(cameras.items()):
        producing = camera_producing(cam, stale_after_s)
        cam_checks[cam_id] = {**cam, "producing": producing}
        if not producing:
            down.append(_camera_problem(cam_id, cam, stale_after_s))
    if cameras and len(down) == len(cameras):
        failing.append("no camera producing frames: " + "; ".join(down))
    else:
        degraded.extend(down)
    inference = snapshot.get("inference") or {}
    error_age = inference.get("last_error_age_s")
    if isinstance(error_age, (int, float)) and error_age <= stale_after_s:
        degraded.append(f"inference failing: {inference.get('last_error')}")
    mqtt = snapshot.get("mqtt")
    if mqtt is not None and not mqtt.get("connected", False):
        error = mqtt.get("last_error")
        degraded.append(f"mqtt disconnected: {error}" if error else "mqtt disconnected")

    status: Status = "failing" if failing else "degraded" if degraded else "ok"
    reasons = failing + degraded
    body: dict[str, Any] = {
        "status": status,
        "reasons": reasons,
        **{k: v for k, v in snapshot.items() if k not in ("status", "reasons", "cameras")},
        "cameras": cam_checks,
    }
    return HealthReport(status, reasons, body)


class _SnapshotCollector(Collector):
    """Reads counters and gauges from the daemon's snapshot when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot_fn = self._metrics.snapshot_fn
        if snapshot_fn is None:
            return
        try:
            snap = snapshot_fn()
        except Exception as exc:  # a scrape must not take the endpoint down
            log.warning("metrics_snapshot_failed", error=str(exc))
            return
        yield from _families(snap, self._metrics.stale_after_s)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _families(snap: Snapshot, stale_after_s: float) -> Iterator[Metric]:
    cameras: Mapping[str, Mapping[str, Any]] = snap.get("cameras") or {}
    per_camera: list[tuple[type[CounterMetricFamily] | type[GaugeMetricFamily], str, str, str]] = [
        (CounterMetricFamily, "edged_frames_in", "Frames read from the camera.", "frames_in"),
        (
            CounterMetricFamily,
            "edged_frames_processed",
            "Frames run through the pipeline.",
            "frames_processed",
        ),
        (
            CounterMetricFamily,
            "edged_frames_dropped",
            "Frames overwritten by a newer one before the pipeline took them.",
            "dropped_frames",
        ),
        (
            CounterMetricFamily,
            "edged_frames_failed",
            "Frames dropped because inference failed on them.",
            "frames_failed",
        ),
        (
            CounterMetricFamily,
            "edged_camera_reconnects",
            "Times the camera was reopened after a failure.",
            "reconnects",
        ),
        (GaugeMetricFamily, "edged_faces", "Faces tracked on the camera now.", "faces"),
    ]
    for cls, name, doc, key in per_camera:
        fam = cls(name, doc, labels=["camera"])
        for cam_id, cam in sorted(cameras.items()):
            fam.add_metric([cam_id], _num(cam.get(key)))
        yield fam
    up = GaugeMetricFamily(
        "edged_camera_up",
        "1 when the camera is running and its frames are fresh.",
        labels=["camera"],
    )
    for cam_id, cam in sorted(cameras.items()):
        up.add_metric([cam_id], 1.0 if camera_producing(cam, stale_after_s) else 0.0)
    yield up

    mqtt: Mapping[str, Any] = snap.get("mqtt") or {}
    spool: Mapping[str, Any] = snap.get("spool") or {}
    yield CounterMetricFamily(
        "edged_events_published",
        "Events the broker acknowledged.",
        value=_num(mqtt.get("events_published")),
    )
    yield GaugeMetricFamily(
        "edged_mqtt_connected",
        "1 while connected to the MQTT broker.",
        value=1.0 if mqtt.get("connected") else 0.0,
    )
    yield GaugeMetricFamily(
        "edged_spool_pending",
        "Events waiting in the on-disk spool.",
        value=_num(spool.get("pending")),
    )
    yield CounterMetricFamily(
        "edged_spool_dropped",
        "Events dropped from the full spool (oldest first).",
        value=_num(spool.get("dropped")),
    )
    yield GaugeMetricFamily(
        "edged_uptime_seconds",
        "Seconds since the daemon started.",
        value=_num(snap.get("uptime_s")),
    )
    info = GaugeMetricFamily("edged_info", "Version and model phase.", labels=["version", "phase"])
    info.add_metric([str(snap.get("version", "")), str(snap.get("phase", ""))], 1.0)
    yield info
    models = GaugeMetricFamily(
        "edged_model_info",
        "Loaded models and their execution provider.",
        labels=["model", "provider"],
    )
    for name, provider in sorted((snap.get("models") or {}).items()):
        models.add_metric([str(name), str(provider)], 1.0)
    yield models


class Metrics:
    """The Prometheus registry of one daemon.

    ``observe_inference`` is thread-safe (called from the inference worker). Everything else
    comes from the snapshot attached with :meth:`attach` (the :class:`HealthServer` attaches
    its own when none is).
    """

    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stale_after_s = stale_after_s
        self.snapshot_fn: SnapshotFn | None = None
        self.inference_seconds = Histogram(
            "edged_inference_seconds",
            "Wall time of one inference call, by model and stage.",
            labelnames=("model", "stage"),
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SnapshotCollector(self))

    def attach(self, snapshot: SnapshotFn, stale_after_s: float | None = None) -> None:
        """Read per-camera, MQTT and spool figures from ``snapshot`` at every scrape."""
        self.snapshot_fn = snapshot
        if stale_after_s is not None:
            self.stale_after_s = stale_after_s

    def observe_inference(self, model: str, stage: str, seconds: float) -> None:
        """Record one inference call (``stage`` e.g. ``detect``, ``classify``)."""
        self.inference_seconds.labels(model=model, stage=stage).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)


class HealthServer:
    """Serves ``/health`` and ``/metrics`` on ``settings.host:settings.port`` (0 = any free).

    ``snapshot`` is called on the event loop for every request and must be cheap and
    non-blocking (return data the daemon already has).
    """

    def __init__(self, settings: HealthSettings, snapshot: SnapshotFn, metrics: Metrics) -> None:
        self.settings = settings
        self._snapshot = snapshot
        self.metrics = metrics
        if metrics.snapshot_fn is None:
            metrics.attach(snapshot, settings.stale_after_s)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``settings.port`` is 0); only after start."""
        if self._port is None:
            raise RuntimeError("HealthServer.port read before start()")
        return self._port

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; a port already in use raises :class:`EdgedError` naming it."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise EdgedError(
                f"health server cannot listen on {self.settings.host}:{self.settings.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("health_server_started", host=self.settings.host, port=self._port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("health_server_stopped")

    def report(self) -> HealthReport:
        """Evaluate the current snapshot (also what ``/health`` answers)."""
        try:
            snap = self._snapshot()
        except Exception as exc:
            log.warning("health_snapshot_failed", error=str(exc))
            reason = f"snapshot failed: {exc}"
            return HealthReport("failing", [reason], {"status": "failing", "reasons": [reason]})
        return evaluate_health(snap, self.settings.stale_after_s)

    async def _health(self, request: web.Request) -> web.Response:
        report = self.report()
        return web.Response(
            status=report.http_status,
            text=json.dumps(report.body, default=str),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
