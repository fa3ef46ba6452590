"""The daemon: composes the components, runs the lifecycle, applies reloads.

- cameras read in their own threads and keep only their newest frame
  (``edged.runtime.capture``, slots in :mod:`edged.service.cameras`);
- the scheduling loop batches due frames onto ONE inference thread
  (:mod:`edged.service.scheduler`);
- the MQTT client has paho's network thread, every event goes through the durable spool
  (``edged.mqtt.publisher``);
- model builds, camera joins and MQTT reconnects run on short-lived daemon threads
  (:mod:`edged.service.workers`), so nothing can hold the process at exit.

Lifecycle (:mod:`edged.service.lifecycle`): startup, the main loop until the stop event, a
shutdown of steps with deadlines; a second SIGTERM forces the exit. Reload (SIGHUP or
``config/set``, guarded by :mod:`edged.service.remote`) validates the new settings, asks
:func:`edged.service.reload.diff` what they take, and prepares everything that can fail
(models, the MQTT client) before it changes anything; a change that cannot be applied
leaves the running config in place and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import structlog

from edged import __version__, sources
from edged.config import (
    CameraSettings,
    Settings,
    SmoothingSettings,
)
from edged.contracts.status import (
    HealthSnapshot,
    Heartbeat,
    ModelStatus,
)
from edged.errors import EdgedError
from edged.models.loader import session_factory
from edged.mqtt.publisher import Publisher
from edged.mqtt.router import ConfigRequest
from edged.pipeline import Pipeline, build_pipeline
from edged.runtime.capture import Frame
from edged.runtime.tracking import Tracker
from edged.service import remote
from edged.service.cameras import Cameras
from edged.service.health import HealthServer, Metrics
from edged.service.lifecycle import FORCED_EXIT_CODE, Step, StopSignals, run_steps
from edged.service.reload import Reloader, classifier_labels
from edged.service.scheduler import Components, Scheduler
from edged.service.sdnotify import Notifier
from edged.service.status import StatusReporter, faces_shown
from edged.service.workers import in_thread, wait_event

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
#: READY waits at most this long for the cameras to open.
CAMERAS_OPEN_TIMEOUT_S = 10.0


def run_daemon(settings: Settings, config_path: Path | None) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    return asyncio.run(Daemon(settings, config_path).run())


class Daemon:
    """Owns the components and the asyncio tasks that drive them."""

    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.c = Components(settings)
        self.config_path = config_path
        self.notifier = Notifier()
        self.metrics = Metrics(settings.health.stale_after_s)
        self.cameras = Cameras()
        self.health: HealthServer | None = None
        self.exit_code = 0
        self._signals = StopSignals()
        self._stop = self._signals.stop
        self._frame_ready = asyncio.Event()
        self.scheduler = Scheduler(
            self.c, self.cameras, self.metrics, self._stop, self._frame_ready
        )
        self.status = StatusReporter(
            self.c, self.cameras, self.scheduler, self.notifier, self._stop
        )
        self.scheduler.on_frame = self.status.camera_produced
        self._reload_lock = asyncio.Lock()
        self.reloader = Reloader(self, self._reload_lock)
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[None]] = set()

    @property
    def settings(self) -> Settings:
        return self.c.settings

    @property
    def pipeline(self) -> Pipeline | None:
        return self.c.pipeline

    @property
    def publisher(self) -> Publisher | None:
        return self.c.publisher

    @publisher.setter
    def publisher(self, publisher: Publisher | None) -> None:
        self.c.publisher = publisher

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Startup, the main loop until the stop event, the bounded shutdown."""
        self._loop = asyncio.get_running_loop()
        self._signals.install(self._loop)
        log.info(
            "daemon_starting",
            version=__version__,
            device=self.settings.device.id,
            phase=self.settings.pipeline.phase,
            config=str(self.config_path) if self.config_path else None,
        )
        try:
            started = await self._startup()
        except EdgedError as exc:
            log.error("daemon_start_failed", error=str(exc))
            await self._shutdown()
            raise
        if started:
            self._serve()
            await self._stop.wait()
            log.info("daemon_stopping")
            self.notifier.stopping()
        if not await self._shutdown():
            log.warning("daemon_forced_exit", exit_code=FORCED_EXIT_CODE)
            return FORCED_EXIT_CODE
        log.info("daemon_stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _startup(self) -> bool:
        """Start everything; False when a stop arrived first (a TensorRT build can take
        minutes, and SIGTERM must still stop it)."""
        start = asyncio.create_task(self._start(), name="start")
        stop = asyncio.create_task(self._stop.wait(), name="stop-wait")
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, EdgedError):
                await start
            log.info("daemon_start_cancelled")
            return False
        stop.cancel()
        start.result()
        return True

    def _serve(self) -> None:
        """READY: SIGHUP reloads from now on, and the loops start."""
        self._started = True
        assert self._loop is not None
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGHUP, self._reload_signal)
        self.notifier.ready(status=self._status_line())
        log.info("daemon_ready", cameras=list(self.cameras), models=self._models().providers)
        self._tasks = [
            asyncio.create_task(self.scheduler.run(), name="schedule"),
            asyncio.create_task(self.status.heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self.status.watchdog_loop(), name="watchdog"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A loop that dies is fatal: stop with an error so systemd restarts us."""
        if task.cancelled() or self._stop.is_set():
            return
        exc = task.exception()
        if exc is None:  # finished on purpose (the watchdog loop without a watchdog)
            return
        log.error("task_died", task=task.get_name(), error=repr(exc), exc_info=exc)
        self.exit_code = 1
        self._stop.set()

    def _spawn_reload(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._reloads.add(task)
        task.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Task[None]) -> None:
        """Reloads catch their own errors; should one escape, it is logged, not lost."""
        self._reloads.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("config_reload_task_failed", error=sources.redact(repr(exc)), exc_info=exc)

    def _reload_signal(self) -> None:
        self._spawn_reload(self.reload_from_file())

    async def _start(self) -> None:
        s = self.settings
        try:
            s.device.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgedError(
                f"device.state_dir {s.device.state_dir}: cannot create: {exc.strerror or exc}"
            ) from exc
        self.c.pipeline = await self.build_pipeline(s)
        publisher = self.c.publisher = Publisher(
            s,
            on_config_request=self._on_config_request_threadsafe,
            on_online=self._on_publisher_online_threadsafe,
        )
        publisher.start()
        for cam in s.enabled_cameras():
            self.add_camera(cam)
        publisher.publish_discovery(list(self.cameras), classifier_labels(self.c.pipeline) or None)
        if s.health.enabled:
            self.health = HealthServer(s.health, self.snapshot, self.metrics)
            await self.health.start()
        deadline = time.monotonic() + CAMERAS_OPEN_TIMEOUT_S
        while not self.cameras.opened() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self) -> bool:
        """Bounded, step by step; False when a second signal forced the exit."""
        t = SHUTDOWN_TIMEOUT_S
        ok = await run_steps(
            [
                Step("tasks", t / 4 + 1, self._stop_tasks),
                # A reload that was past its last await holds the lock until it finished.
                Step("reload", t / 4, self._reload_lock.acquire),
                Step("flush_tracks", t / 2, self._flush_tracks),
                Step("cameras", t / 2 + 1, self._stop_all_cameras),
                Step("mqtt", t, self._stop_publisher),
                Step("health", t / 4, self._stop_health),
            ],
            self._signals.force,
        )
        self.scheduler.close()
        self.notifier.close()
        return ok

    async def _stop_tasks(self) -> None:
        tasks = [*self._tasks, *self._reloads]
        for task in tasks:
            task.cancel()
        # The loops also end on the stop flag, so a cancellation lost somewhere cannot
        # hold the stop; the wait is bounded all the same.
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S / 4)
            if pending:
                log.warning("tasks_not_stopped", tasks=sorted(t.get_name() for t in pending))
        for task in tasks:
            exc = task.exception() if task.done() and not task.cancelled() else None
            if exc is not None:
                log.warning("task_failed_while_stopping", task=task.get_name(), error=repr(exc))

    async def _flush_tracks(self) -> None:
        now = time.monotonic()
        for cam_id, slot in self.cameras.items():
            await self.scheduler.emit_events(cam_id, slot.tracker.flush(now))
        await self.scheduler.publish_aggregates(final=True)

    async def _stop_all_cameras(self) -> None:
        await self.cameras.stop(list(self.cameras))

    async def _stop_publisher(self) -> None:
        if self.publisher is not None:
            await in_thread(self.publisher.stop, SHUTDOWN_TIMEOUT_S / 2)

    async def _stop_health(self) -> None:
        if self.health is not None:
            await self.health.stop()

    # ------------------------------------------------------------------ components

    async def build_pipeline(self, s: Settings) -> Pipeline:
        """Load and warm the models off the loop (TensorRT engine builds take minutes)."""
        pipeline = await in_thread(lambda: build_pipeline(s, session_factory(s)))
        log.info("pipeline_loaded", models=pipeline.models, providers=pipeline.providers)
        return pipeline

    def tracker_settings(self) -> SmoothingSettings:
        """The phase decides whether smoothing runs (sota_phase1 has none)."""
        s, pipeline = self.settings, self.pipeline
        loaded = pipeline.loaded if pipeline is not None else None
        phase_smooths = loaded.smoothing if loaded is not None else True
        return s.smoothing.model_copy(update={"enabled": s.smoothing.enabled and phase_smooths})

    def new_tracker(self, cam_id: str) -> Tracker:
        s = self.settings
        return Tracker(self.tracker_settings(), cam_id, s.device.id, privacy=s.privacy)

    def add_camera(self, cam: CameraSettings) -> None:
        loop = self._loop
        assert loop is not None

        def wake(_frame: Frame) -> None:
            loop.call_soon_threadsafe(self._frame_ready.set)

        self.cameras.add(cam, self.new_tracker(cam.id), wake)

    # ------------------------------------------------------------------ status

    def _models(self) -> ModelStatus:
        return self.status.models()

    def _status_line(self) -> str:
        return self.status.line()

    def _heartbeat_camera(self, stats: Mapping[str, Any]) -> dict[str, object]:
        """One camera's heartbeat fields from its figures (as :meth:`heartbeat` writes them)."""
        return self.status.heartbeat_camera(stats)

    def heartbeat(self) -> Heartbeat:
        return self.status.heartbeat()

    def snapshot(self) -> HealthSnapshot:
        """What /health and /metrics read: cheap, taken on the loop, never blocks."""
        return self.status.snapshot()

    # ------------------------------------------------------------------ reload

    async def reload_from_file(self) -> None:
        """SIGHUP: re-read the config file; an invalid one keeps the running config."""
        await self.reloader.reload_from_file()

    def _on_publisher_online_threadsafe(self) -> None:
        """Called on the publisher's sender thread after each new connection's ``online``."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.status.publisher_online)

    def _on_config_request_threadsafe(self, request: ConfigRequest) -> None:
        """Called on paho's thread: hand the request to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn_reload, self.remote_config(request))

    async def remote_config(self, request: ConfigRequest | bytes) -> None:
        """``config/set`` (:meth:`edged.service.reload.Reloader.config_set`); bare bytes are
        a request without MQTT 5 properties."""
        if isinstance(request, bytes):
            request = ConfigRequest(request)
        await self.reloader.config_set(request)

    @property
    def started(self) -> bool:
        """READY was reached (``config/set`` is refused before)."""
        return self._started

    def check_remote_change(self, payload: bytes) -> dict[str, Any]:
        """The guard of the contract (:func:`edged.service.remote.check_remote_change`)."""
        return remote.check_remote_change(self.settings, payload)

    async def apply(self, new: Settings, source: str) -> None:
        """Apply validated settings without a restart, or raise and change nothing
        (:class:`edged.service.reload.Reloader`)."""
        await self.reloader.apply(new, source)


__all__ = ["Daemon", "faces_shown", "in_thread", "run_daemon", "wait_event"]
