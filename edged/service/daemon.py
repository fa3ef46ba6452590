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
    PrivacySettings,
    Settings,
    SmoothingSettings,
    build_settings,
    load_settings,
    merge_config,
    settings_data,
)
from edged.contracts.status import (
    CameraHeartbeat,
    HealthSnapshot,
    Heartbeat,
    ModelStatus,
    SpoolStatus,
)
from edged.errors import ConfigError, EdgedError
from edged.models.loader import session_factory
from edged.mqtt.publisher import Publisher
from edged.pipeline import Pipeline, build_pipeline
from edged.privacy import check_remote_privacy, per_person_allowed
from edged.runtime.capture import Frame
from edged.runtime.tracking import Tracker, iso_utc
from edged.service import remote
from edged.service.cameras import Cameras, camera_changes
from edged.service.health import HealthServer, Metrics
from edged.service.lifecycle import FORCED_EXIT_CODE, Step, StopSignals, run_steps
from edged.service.reload import diff
from edged.service.scheduler import Components, Scheduler
from edged.service.sdnotify import Notifier
from edged.service.workers import in_thread, wait_event

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
#: READY waits at most this long for the cameras to open.
CAMERAS_OPEN_TIMEOUT_S = 10.0


def run_daemon(settings: Settings, config_path: Path | None) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    return asyncio.run(Daemon(settings, config_path).run())


def faces_shown(faces: int | None, privacy: PrivacySettings) -> int | None:
    """The face count a report may carry. In aggregate mode with ``min_faces`` set, a count
    below the minimum is withheld (``None``): no report leaving the device may describe
    fewer people than that, not even by their presence."""
    if not per_person_allowed(privacy) and 0 < (faces or 0) < privacy.min_faces:
        return None
    return faces


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
        self._reload_lock = asyncio.Lock()
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
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def request_stop(self) -> None:
        self._stop.set()

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
        self.c.pipeline = await self._build_pipeline(s)
        publisher = self.c.publisher = Publisher(s, on_config_set=self._on_config_set_threadsafe)
        publisher.start()
        for cam in s.enabled_cameras():
            self._add_camera(cam)
        publisher.publish_discovery(list(self.cameras))
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

    async def _build_pipeline(self, s: Settings) -> Pipeline:
        """Load and warm the models off the loop (TensorRT engine builds take minutes)."""
        pipeline = await in_thread(lambda: build_pipeline(s, session_factory(s)))
        log.info("pipeline_loaded", models=pipeline.models, providers=pipeline.providers)
        return pipeline

    def _tracker_settings(self) -> SmoothingSettings:
        """The phase decides whether smoothing runs (sota_phase1 has none)."""
        s, pipeline = self.settings, self.pipeline
        loaded = pipeline.loaded if pipeline is not None else None
        phase_smooths = loaded.smoothing if loaded is not None else True
        return s.smoothing.model_copy(update={"enabled": s.smoothing.enabled and phase_smooths})

    def _new_tracker(self, cam_id: str) -> Tracker:
        s = self.settings
        return Tracker(self._tracker_settings(), cam_id, s.device.id, privacy=s.privacy)

    def _add_camera(self, cam: Any) -> None:
        loop = self._loop
        assert loop is not None

        def wake(_frame: Frame) -> None:
            loop.call_soon_threadsafe(self._frame_ready.set)

        self.cameras.add(cam, self._new_tracker(cam.id), wake)

    # ------------------------------------------------------------------ heartbeat/health

    async def _heartbeat_loop(self) -> None:
        """Every ``heartbeat_s``, and at once after (re)connecting, so nobody waits 30 s."""
        last = 0.0
        was_connected = False
        while not self._stop.is_set():
            if self.publisher is not None:
                connected = self.publisher.connected
                now = time.monotonic()
                due = now - last >= self.settings.mqtt.heartbeat_s
                if connected and (due or not was_connected):
                    self.publisher.publish_heartbeat(self.heartbeat().to_json())
                    last = now
                was_connected = connected
            await wait_event(self._stop, min(self.settings.mqtt.heartbeat_s, 0.5))

    async def _watchdog_loop(self) -> None:
        """Ping systemd's watchdog only while the loop and the inference thread make progress."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not self._stop.is_set():
            busy_s = self.scheduler.rt.busy_s()
            if busy_s > 4 * interval:
                log.error("watchdog_withheld", reason="inference thread stuck", busy_s=busy_s)
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def inference_busy_s(self) -> float:
        return self.scheduler.rt.busy_s()

    def _models(self) -> ModelStatus:
        pipeline = self.pipeline
        if pipeline is None:
            return ModelStatus()
        loaded = pipeline.loaded
        fallbacks = [f"{f.kind} {f.name}: {f.reason}" for f in loaded.fallbacks] if loaded else []
        return ModelStatus(dict(pipeline.models), dict(pipeline.providers), tuple(fallbacks))

    def _status_line(self) -> str:
        return f"{len(self.cameras)} camera(s), models {self._models().providers}"

    def _heartbeat_camera(self, stats: Mapping[str, Any]) -> dict[str, object]:
        """One camera's heartbeat fields from its figures (as :meth:`heartbeat` writes them)."""
        cam = CameraHeartbeat(
            stats["state"],
            stats["fps_in"],
            stats["fps_processed"],
            faces_shown(stats["faces"], self.settings.privacy),
            stats["dropped_frames"],
            stats["last_frame_age_s"],
        )
        return cam.to_json()

    def heartbeat(self) -> Heartbeat:
        mqtt = self.publisher.stats() if self.publisher else {}
        privacy = self.settings.privacy
        return Heartbeat(
            ts=iso_utc(time.time()),
            device=self.settings.device.id,
            uptime_s=round(time.monotonic() - self.scheduler.rt.started, 1),
            version=__version__,
            phase=self.settings.pipeline.phase,
            models=self._models(),
            cameras={
                cid: st.heartbeat(faces_shown(st.faces, privacy))
                for cid, st in self.cameras.status().items()
            },
            spool=SpoolStatus.from_publisher(mqtt),
        )

    def snapshot(self) -> HealthSnapshot:
        """What /health and /metrics read: cheap, taken on the loop, never blocks."""
        mqtt = self.publisher.stats() if self.publisher else {"connected": False}
        rt = self.scheduler.rt
        return HealthSnapshot(
            uptime_s=time.monotonic() - rt.started,
            version=__version__,
            phase=self.settings.pipeline.phase,
            models=self._models(),
            cameras=self.cameras.status(),
            mqtt=mqtt,
            spool=SpoolStatus.from_publisher(mqtt),
            inference_busy_s=rt.busy_s(),
            inference=rt.inference_status(),
        )

    # ------------------------------------------------------------------ reload

    async def reload_from_file(self) -> None:
        """SIGHUP: re-read the config file; an invalid one keeps the running config."""
        self.notifier.reloading()
        try:
            new, _ = await in_thread(load_settings, self.config_path)
            await self.apply(new, source="sighup")
        except EdgedError as exc:
            log.error("config_reload_rejected", source="sighup", reason=sources.redact(str(exc)))
        except Exception as exc:  # a bug; the running config stays, the daemon too
            log.exception("config_reload_failed", source="sighup", error=sources.redact(repr(exc)))
        finally:
            self.notifier.ready(status=self._status_line())

    def _on_config_set_threadsafe(self, payload: bytes) -> None:
        """Called on paho's thread: hand the payload to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn_reload, self.remote_config(payload))

    async def remote_config(self, payload: bytes) -> None:
        """``config/set``: validate the guard, merge, validate, apply; answer on config/result.

        Ignored (logged, not answered) while ``[mqtt] remote_config`` is off, as the
        contract says; refused with an answer while the daemon is still starting (the
        subscription exists once MQTT connects, which can be minutes before READY).
        """
        if not self.settings.mqtt.remote_config:
            log.info("config_set_ignored", reason="remote_config is off")
            return
        if not self._started:
            log.info("config_set_refused", reason="starting")
            self._answer_config_set(False, "edged is starting; send the change once it is ready")
            return
        try:
            change = self.check_remote_change(payload)
            new = build_settings(merge_config(settings_data(self.settings), change), "config/set")
            check_remote_privacy(self.settings.privacy, new.privacy)
            await self.apply(new, source="mqtt")
        except EdgedError as exc:
            reason = sources.redact(str(exc))
            log.warning("config_reload_rejected", source="mqtt", reason=reason)
            self._answer_config_set(False, reason)
            return
        except Exception as exc:  # a bug: the sender still gets an answer, the log the trace
            log.exception("config_reload_failed", source="mqtt", error=sources.redact(repr(exc)))
            self._answer_config_set(
                False, f"internal error ({type(exc).__name__}); nothing changed, see the log"
            )
            return
        self._answer_config_set(True, None)

    def _answer_config_set(self, ok: bool, error: str | None) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish_config_result(ok, error)
        except Exception as exc:  # the answer is best effort; the reload must not die on it
            log.exception("config_result_failed", error=repr(exc))

    def check_remote_change(self, payload: bytes) -> dict[str, Any]:
        """The guard of the contract (:func:`edged.service.remote.check_remote_change`)."""
        return remote.check_remote_change(self.settings, payload)

    async def apply(self, new: Settings, source: str) -> None:
        """Apply validated settings without a restart, or raise and change nothing.

        Everything that can fail is prepared first (models built and warmed, camera
        sources parsed, the MQTT client rebuilt); only then is anything switched over.
        """
        async with self._reload_lock:
            old = self.settings
            plan = diff(old, new)
            plan.check_restart_only()
            for cam in new.enabled_cameras():
                sources.parse(cam.source)  # raises a clear error before anything changes
            pipeline = self.pipeline
            rebuild = pipeline is None or "pipeline" in plan.rebuild
            if rebuild:
                # Build first: a change whose models do not load is refused as a whole.
                pipeline = await self._build_pipeline(new)
            if self._stop.is_set():
                raise ConfigError("edged is stopping")
            if self.publisher is not None and plan.touches("publisher"):
                # Builds the new client before dropping the old one; raises on bad creds/TLS.
                await in_thread(self.publisher.update_settings, new)
            # ---- nothing below can fail on bad input: switch over.
            assert pipeline is not None
            if not rebuild:
                pipeline.reconfigure(new)
            labels_changed = _labels(pipeline) != _labels(self.pipeline)
            self.c.settings, self.c.pipeline = new, pipeline
            self.metrics.stale_after_s = new.health.stale_after_s
            if self.health is not None and plan.touches("health"):
                self.health.reconfigure(new.health)
            await self._apply_trackers(labels_changed)
            await self._apply_cameras(old, new)
            log.info(
                "config_reloaded",
                source=source,
                cameras=list(self.cameras),
                models=self._models().providers,
                models_rebuilt=rebuild,
            )

    async def _apply_trackers(self, labels_changed: bool) -> None:
        """New smoothing settings keep tracks; a classifier with other labels restarts them."""
        smoothing, privacy = self._tracker_settings(), self.settings.privacy
        now = time.monotonic()
        for cam_id, slot in self.cameras.items():
            if labels_changed:
                await self.scheduler.emit_events(cam_id, slot.tracker.flush(now))
                slot.tracker = self._new_tracker(cam_id)
            slot.reconfigure(smoothing, privacy)

    async def _apply_cameras(self, old: Settings, new: Settings) -> None:
        """Restart the cameras that changed; their open tracks end with ``left`` first."""
        removed, added = camera_changes(old, new)
        now = time.monotonic()
        for cam_id in removed:
            slot = self.cameras.get(cam_id)
            if slot is not None:
                await self.scheduler.emit_events(cam_id, slot.tracker.flush(now))
        await self.cameras.stop(removed)
        for cam in added:
            self._add_camera(cam)
        if self.publisher is not None and (removed or added):
            # Cameras no longer listed get their retained state and discovery emptied.
            self.publisher.publish_discovery(list(self.cameras))


def _labels(pipeline: Pipeline | None) -> tuple[str, ...]:
    if pipeline is None or pipeline.classifier is None:
        return ()
    return tuple(pipeline.classifier.labels)


__all__ = ["Daemon", "faces_shown", "in_thread", "run_daemon", "wait_event"]
