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
        "door": {"state": "running",            # capture state (edged.runtime.capture)
                 "last_frame_age_s": 0.04,      # None before the first frame
                 "fps_in": 25.0, "fps_processed": 5.0, "faces": 1,
                 "frames_in": 1234, "frames_processed": 250,    # monotonic counts
                 "dropped_frames": 984, "reconnects": 0, "last_error": None},
      },
      "mqtt": {"connected": True, "events_published": 17,    # PublisherStatus.to_json()
               "events_rejected": 0, "reconnects": 2, "spool_expired": 0},
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
drift from the heartbeat's. Fed directly are only what no snapshot holds: the inference
latency histogram (:meth:`Metrics.observe_inference`), because a distribution cannot be
rebuilt from a count, and the config changes by source and outcome
(:meth:`Metrics.config_change`, counted by :class:`edged.service.reload.Reloader` where the
outcome is known). The registry also carries prometheus_client's process collector
(``process_*``: RSS, CPU seconds, open and maximum descriptors, start time; Linux only, it
reads ``/proc``) and platform collector (``python_info``), which the global registry would
have had and a private one does not get by itself.

MQTT figures: ``edged_mqtt_reconnects_total`` counts connections after the first one (the
link's own count); ``edged_mqtt_events_rejected_total`` counts events the broker refused
with a failure reason code in its PUBACK (MQTT 5 only; e.g. not authorised, quota, payload
format): they are removed from the spool and not retried, so they are neither published nor
pending. ``edged_spool_expired_total`` counts events dropped for being older than
``[privacy] spool_max_age_s``; they are also in ``edged_spool_dropped_total``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged.config import HealthSettings
from edged.contracts.status import HealthSnapshot
from edged.errors import EdgedError

log = structlog.get_logger(__name__)

#: Version of the ``/health`` body (edged/schemas/health.schema.json).
HEALTH_SCHEMA = 1

#: The daemon's :class:`HealthSnapshot`, or its JSON form (a mapping).
Snapshot = HealthSnapshot | Mapping[str, Any]
SnapshotFn = Callable[[], Snapshot]
Status = Literal["ok", "degraded", "failing"]
#: Where a config change came from, and what became of it (``edged_config_changes_total``).
ChangeSource = Literal["mqtt", "sighup"]
ChangeResult = Literal["applied", "refused"]
CHANGE_SOURCES: tuple[ChangeSource, ...] = ("mqtt", "sighup")
CHANGE_RESULTS: tuple[ChangeResult, ...] = ("applied", "refused")

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
    snapshot = _as_json(snapshot)
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
        "schema": HEALTH_SCHEMA,
        "status": status,
        "reasons": reasons,
        **{k: v for k, v in snapshot.items() if k not in ("status", "reasons", "cameras")},
        "cameras": cam_checks,
    }
    return HealthReport(status, reasons, body)


def _as_json(snapshot: Snapshot) -> Mapping[str, Any]:
    return snapshot.to_json() if isinstance(snapshot, HealthSnapshot) else snapshot


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
        yield from _families(_as_json(snap), self._metrics.stale_after_s)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _families(snap: Mapping[str, Any], stale_after_s: float) -> Iterator[Metric]:
    yield from _camera_families(snap.get("cameras") or {}, stale_after_s)
    yield from _daemon_families(snap)


def _camera_families(
    cameras: Mapping[str, Mapping[str, Any]], stale_after_s: float
) -> Iterator[Metric]:
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


#: Daemon-wide figures of the snapshot: (family, name, help, section, key); the section is
#: ``mqtt`` (the publisher's status), ``spool`` or ``""`` (the snapshot itself).
_DAEMON_FIGURES: list[tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, str, str]] = [
    (CounterMetricFamily, "edged_events_published", "Events the broker acknowledged.",
     "mqtt", "events_published"),
    (GaugeMetricFamily, "edged_mqtt_connected", "1 while connected to the MQTT broker.",
     "mqtt", "connected"),
    (GaugeMetricFamily, "edged_spool_pending", "Events waiting in the on-disk spool.",
     "spool", "pending"),
    (CounterMetricFamily, "edged_spool_dropped",
     "Events dropped from the spool: full (oldest first) or expired.", "spool", "dropped"),
    (CounterMetricFamily, "edged_spool_expired",
     "Events dropped from the spool for being older than [privacy] spool_max_age_s.",
     "mqtt", "spool_expired"),
    (CounterMetricFamily, "edged_mqtt_reconnects",
     "Connections to the MQTT broker after the first one.", "mqtt", "reconnects"),
    (CounterMetricFamily, "edged_mqtt_events_rejected",
     "Events the broker refused in its PUBACK (MQTT 5 reason code); not retried.",
     "mqtt", "events_rejected"),
    (GaugeMetricFamily, "edged_uptime_seconds", "Seconds since the daemon started.",
     "", "uptime_s"),
]  # fmt: skip


def _daemon_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    for cls, name, doc, section, key in _DAEMON_FIGURES:
        source: Mapping[str, Any] = (snap.get(section) or {}) if section else snap
        value = source.get(key)
        yield cls(name, doc, value=float(value) if isinstance(value, bool) else _num(value))
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

    ``observe_inference`` is thread-safe (called from the inference worker), and
    ``config_change`` is called by the reloader. Everything else comes from the snapshot
    attached with :meth:`attach` (the :class:`HealthServer` attaches its own when none is)
    and from the process and platform collectors.
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
        self.config_changes = Counter(
            "edged_config_changes",
            "Config changes by source (mqtt: config/set, sighup: the config file) and outcome.",
            labelnames=("source", "result"),
            registry=self.registry,
        )
        for source in CHANGE_SOURCES:  # every series exists from the start, at 0
            for result in CHANGE_RESULTS:
                self.config_changes.labels(source=source, result=result)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_SnapshotCollector(self))

    def attach(self, snapshot: SnapshotFn, stale_after_s: float | None = None) -> None:
        """Read per-camera, MQTT and spool figures from ``snapshot`` at every scrape."""
        self.snapshot_fn = snapshot
        if stale_after_s is not None:
            self.stale_after_s = stale_after_s

    def observe_inference(self, model: str, stage: str, seconds: float) -> None:
        """Record one inference call (``stage`` e.g. ``detect``, ``classify``)."""
        self.inference_seconds.labels(model=model, stage=stage).observe(seconds)

    def config_change(self, source: ChangeSource, result: ChangeResult) -> None:
        """Count one config change from ``source`` that was applied or refused."""
        self.config_changes.labels(source=source, result=result).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)


#: Connections the kernel queues for accept(); beyond it, clients wait in SYN retries. It
#: is also how many asyncio accepts in one go, so it bounds the descriptors a burst takes.
_BACKLOG = 32
#: Requests carry no body and a few headers: anything beyond is refused with 400.
_MAX_HEADERS = 32
_MAX_LINE = 4096
#: Rate limit of the log lines about refused and failed connections.
_LOG_EVERY_S = 30.0
_ACCEPT_FAILED = "socket.accept() out of system resource"


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen by the guard (open time, last data)."""

    def __init__(self, guard: _ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.opened = self.last_data = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._guard.opened(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()  # RST now: a silent client gets no lingering close
        elif self.transport is not None:
            self.transport.close()


class _ConnectionGuard:
    """Bounds the health server's connections in number and in time.

    aiohttp waits for a first request forever and keeps a silent keep-alive connection for
    an hour, so ~1,000 connections that never finish a request took every file descriptor
    of the process: /health stopped answering, cameras could not reopen their files, and
    every failed accept() logged a traceback. Here at most ``max_connections`` are open; a
    new one beyond closes the connection that has been silent the longest (an idle flood
    ages out, while a client that just sent its request is served), and a sweep closes
    connections silent for ``idle_timeout_s`` or open for ``request_timeout_s``.
    """

    def __init__(self, settings: Callable[[], HealthSettings], factory: Callable[[], Any]) -> None:
        self._settings = settings
        self._factory = factory
        self._open: dict[_Guarded, None] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.evicted = 0
        self.timed_out = 0
        self._logged_at = -_LOG_EVERY_S
        self._logged_counts = (0, 0)

    def protocol(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def opened(self, conn: _Guarded) -> None:
        limit = self._settings().max_connections
        while len(self._open) >= limit:
            oldest = min(self._open, key=lambda c: c.last_data)
            self._drop(oldest)
            self.evicted += 1
        self._open[conn] = None
        self._log_pressure()

    def closed(self, conn: _Guarded) -> None:
        self._open.pop(conn, None)

    def _drop(self, conn: _Guarded) -> None:
        self._open.pop(conn, None)
        conn.abort()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            self._drop(conn)

    def _sweep(self) -> None:
        s = self._settings()
        now = time.monotonic()
        for conn in list(self._open):
            if now - conn.last_data > s.idle_timeout_s or now - conn.opened > s.request_timeout_s:
                self._drop(conn)
                self.timed_out += 1
        self._log_pressure()
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _log_pressure(self) -> None:
        counts = (self.evicted, self.timed_out)
        now = time.monotonic()
        if counts == self._logged_counts or now - self._logged_at < _LOG_EVERY_S:
            return
        log.warning(
            "health_connections_closed",
            evicted=self.evicted - self._logged_counts[0],
            timed_out=self.timed_out - self._logged_counts[1],
            open=len(self._open),
            note="more clients than [health] max_connections, or silent connections",
        )
        self._logged_at, self._logged_counts = now, counts


class _AcceptErrorLog:
    """The loop's exception handler, with failed accept()s logged once in a while.

    When the process runs out of descriptors asyncio logs every failed accept() with a
    traceback and retries a second later: tens of MB of log under a flood. Each is
    counted here and logged at most every ``_LOG_EVERY_S`` seconds as one line; every
    other loop error goes to the handler that was set before.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._logged_at = -_LOG_EVERY_S
        self._suppressed = 0
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith(_ACCEPT_FAILED):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._logged_at < _LOG_EVERY_S:
            self._suppressed += 1
            return
        log.error(
            "health_accept_failed",
            error=str(context.get("exception")),
            repeated=self._suppressed,
            note="out of file descriptors? accepting again in 1 s",
        )
        self._logged_at, self._suppressed = now, 0

    def remove(self) -> None:
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)


class HealthServer:
    """Serves ``/health`` and ``/metrics`` on ``settings.host:settings.port`` (0 = any free).

    ``snapshot`` is called on the event loop for every request and must be cheap and
    non-blocking (return data the daemon already has). Connections are bounded in number
    and time (:class:`_ConnectionGuard`, ``[health] max_connections``, ``idle_timeout_s``,
    ``request_timeout_s``) and requests in size.
    """

    def __init__(self, settings: HealthSettings, snapshot: SnapshotFn, metrics: Metrics) -> None:
        self.settings = settings
        self._snapshot = snapshot
        self.metrics = metrics
        if metrics.snapshot_fn is None:
            metrics.attach(snapshot, settings.stale_after_s)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._guard: _ConnectionGuard | None = None
        self._accept_log: _AcceptErrorLog | None = None
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
        app = web.Application(client_max_size=1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.settings.idle_timeout_s,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_LINE,
            max_headers=_MAX_HEADERS,
        )
        await runner.setup()
        assert runner.server is not None
        guard = _ConnectionGuard(lambda: self.settings, runner.server)
        loop = asyncio.get_running_loop()
        try:
            listener = await loop.create_server(
                guard.protocol, self.settings.host, self.settings.port, backlog=_BACKLOG
            )
        except OSError as exc:
            await runner.cleanup()
            raise EdgedError(
                f"health server cannot listen on {self.settings.host}:{self.settings.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        guard.start()
        self._runner, self._listener, self._guard = runner, listener, guard
        self._accept_log = _AcceptErrorLog(loop)
        self._port = int(listener.sockets[0].getsockname()[1])
        log.info(
            "health_server_started",
            host=self.settings.host,
            port=self._port,
            max_connections=self.settings.max_connections,
        )

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("health_server_stopped")
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self._accept_log is not None:
            self._accept_log.remove()
            self._accept_log = None

    def reconfigure(self, settings: HealthSettings) -> None:
        """New limits and staleness in place; the socket (host, port) stays as it is (a
        restart-only change, refused before this is called)."""
        self.settings = settings
        self.metrics.stale_after_s = settings.stale_after_s

    @property
    def open_connections(self) -> int:
        """Connections open now (for tests and diagnostics)."""
        return self._guard.open_connections if self._guard is not None else 0

    def report(self) -> HealthReport:
        """Evaluate the current snapshot (also what ``/health`` answers)."""
        try:
            snap = self._snapshot()
        except Exception as exc:
            log.warning("health_snapshot_failed", error=str(exc))
            reason = f"snapshot failed: {exc}"
            body = {
                "schema": HEALTH_SCHEMA,
                "status": "failing",
                "reasons": [reason],
                "cameras": {},
            }
            return HealthReport("failing", [reason], body)
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
