"""The daemon's lifecycle: start everything, run the scheduling loop, reload, stop.

One asyncio loop owns the schedule and everything cheap (tracking, smoothing, building
payloads, the health server). Everything that blocks runs elsewhere:

- each camera reads in its own thread and keeps only its newest frame (``edged.runtime.capture``)
  and wakes the loop when one arrives;
- inference runs on ONE worker thread: the loop collects the newest frame of every camera
  that is due under its fps cap and hands them over as one batch, and never submits the
  next batch before the previous one finished, so there is no queue to grow;
- the MQTT client has paho's network thread, and every event goes through the durable
  spool first (``edged.mqtt.publisher``);
- model builds, camera joins and MQTT reconnects run on short-lived daemon threads, so a
  TensorRT build or a stuck driver can never hold the process at exit.

Reload (SIGHUP or ``config/set``) validates the new settings and prepares everything that
can fail (models, the MQTT client) before it changes anything; a change that cannot be
applied leaves the running config in place and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from edged import __version__, sources
from edged.config import (
    MAX_NESTING,
    CameraSettings,
    Settings,
    SmoothingSettings,
    build_settings,
    iter_keys,
    load_settings,
    merge_config,
    settings_data,
)
from edged.contracts.events import EmotionEvent
from edged.errors import ConfigError, EdgedError
from edged.models.detection.common import Limits
from edged.models.loader import session_factory
from edged.mqtt.publisher import Publisher
from edged.pipeline import FrameResult, Pipeline, build_pipeline
from edged.privacy import Aggregator, check_remote_privacy, per_person_allowed
from edged.runtime.capture import Camera, Frame
from edged.runtime.tracking import Tracker, iso_utc
from edged.service.health import HealthServer, Metrics
from edged.service.sdnotify import Notifier

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The only keys a remote ``config/set`` may change (an allow-list, so a key added later is
#: refused until someone decides it is safe): what runs and how, never where files are
#: read or written, the broker connection and credentials, or the health bind address.
REMOTE_ALLOWED: tuple[str, ...] = (
    "pipeline.",
    "smoothing.",
    "cameras",
    "mqtt.heartbeat_s",
    "mqtt.homeassistant",
    "health.stale_after_s",
    # Only towards less data: check_remote_privacy refuses the rest.
    "privacy.",
)
#: ``mqtt.homeassistant_prefix`` would let a remote sender write retained messages into
#: another topic tree: the prefix match above must not admit it.
REMOTE_DENIED: tuple[str, ...] = ("mqtt.homeassistant_prefix",)

#: Keys only a restart can change: who the daemon is, where its state lives, and the
#: health server's socket.
RESTART_ONLY: tuple[str, ...] = (
    "device.id",
    "device.state_dir",
    "health.enabled",
    "health.host",
    "health.port",
)

#: Pipeline keys that need the models rebuilt; the others are applied in place.
MODEL_KEYS: tuple[str, ...] = (
    "phase",
    "detector",
    "classifier",
    "providers",
    "tensorrt_fp16",
    "intra_op_threads",
    "det_size",
    "det_max_upscale",
    "crop",
)

#: A ``config/set`` payload larger than this is refused unread (a full config is ~5 KB).
MAX_CONFIG_SET_BYTES = 64 * 1024

SHUTDOWN_TIMEOUT_S = 10.0
#: The loop wakes at least this often without frames (to expire tracks of dead cameras).
IDLE_TICK_S = 0.25


def run_daemon(settings: Settings, config_path: Path | None) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    return asyncio.run(Daemon(settings, config_path).run())


def remote_key_matches(key: str, allowed: str) -> bool:
    """``pipeline.`` admits every key of the section; ``mqtt.heartbeat_s`` only itself.

    A plain prefix match let ``{"health": {"stale_after_s": {"x": 1}}}`` through as
    ``health.stale_after_s.x`` (the validation refused it, but the guard must not rely
    on that).
    """
    return key.startswith(allowed) if allowed.endswith(".") else key == allowed


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _json_nesting(text: str, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit``, before the (recursive) parser sees it."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise ConfigError(f"config/set payload is nested deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_config_set(
    payload: bytes, max_bytes: int = MAX_CONFIG_SET_BYTES, max_depth: int = MAX_NESTING
) -> dict[str, Any]:
    """The one reader of ``config/set`` payloads: a JSON object, or a ConfigError why not.

    Bounded before parsing (size, then nesting: Python's parser recurses and a payload
    nested thousands deep raised RecursionError on the loop), strict while parsing (no
    NaN/Infinity, no integer of thousands of digits), and after it (no string with a lone
    surrogate escape, which no answer or log line could encode).
    """
    if len(payload) > max_bytes:
        raise ConfigError(f"config/set payload is {len(payload)} bytes; at most {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config/set payload is not UTF-8 (offset {exc.start})") from exc
    _json_nesting(text, max_depth)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError as exc:  # not reachable below the nesting limit; kept as a guard
        raise ConfigError("config/set payload is nested too deeply") from exc
    except ValueError as exc:
        raise ConfigError(f"config/set payload is not JSON: {exc}") from exc
    stack = [value]
    while stack:
        item = stack.pop()
        texts: list[Any] = [item]
        if isinstance(item, dict):
            texts = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        for t in texts:
            if isinstance(t, str):
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ConfigError(
                        "config/set payload holds a lone surrogate escape (\\ud800-\\udfff)"
                    ) from exc
    if not isinstance(value, dict):
        raise ConfigError("config/set payload must be a JSON object")
    return value


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes, honouring cancellation.

    ``asyncio.wait_for`` before Python 3.12 returns the inner result instead of raising
    when a cancellation arrives in the same loop iteration as the inner completion
    (CPython gh-86296); with frames setting the event many times a second that race is
    real, and a cancelled loop would keep running through shutdown. ``asyncio.wait``
    never swallows the cancellation.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call on a fresh daemon thread (never joined at interpreter exit)."""
    future: Future[T] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    name = f"edged-{getattr(fn, '__name__', 'call')}"
    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wrap_future(future)


_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Worker:
    """One daemon thread running submitted calls in order (the inference thread).

    A ThreadPoolExecutor would be joined at interpreter exit, so a stuck ``session.run``
    would hold a stopping daemon until systemd kills it.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future: Future[T] = Future()
        self._queue.put((future, fn, args))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._queue.put(None)


@dataclass
class CameraSlot:
    """A running camera and everything the loop keeps for it."""

    settings: CameraSettings
    camera: Camera
    tracker: Tracker
    next_due: float = 0.0
    frames_processed: int = 0
    fps_processed: float = 0.0
    last_processed: float = 0.0
    faces: int = 0
    #: Frames dropped because inference raised (a model failing at run time).
    frames_failed: int = 0
    last_state_key: str = ""
    last_state_at: float = 0.0
    #: Aggregate mode only (``[privacy] mode``): the open interval's counts.
    aggregator: Aggregator | None = None


@dataclass
class _Runtime:
    started: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    inference_failures: int = 0
    last_inference_error: str | None = None
    last_inference_error_at: float | None = None
    last_inference_log: float = 0.0


#: The heartbeat's per-camera fields (the contract's list).
HEARTBEAT_CAMERA_KEYS = (
    "state",
    "fps_in",
    "fps_processed",
    "faces",
    "dropped_frames",
    "last_frame_age_s",
)


class Daemon:
    """Owns the components and the asyncio tasks that drive them."""

    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = Notifier()
        self.metrics = Metrics(settings.health.stale_after_s)
        self.cameras: dict[str, CameraSlot] = {}
        self.pipeline: Pipeline | None = None
        self.publisher: Publisher | None = None
        self.health: HealthServer | None = None
        self.rt = _Runtime()
        self.exit_code = 0
        self._infer: Worker | None = None
        self._stop = asyncio.Event()
        self._frame_ready = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop)
        log.info(
            "daemon_starting",
            version=__version__,
            device=self.settings.device.id,
            phase=self.settings.pipeline.phase,
            config=str(self.config_path) if self.config_path else None,
        )
        self._infer = Worker("edged-infer")
        # Starting can take minutes (TensorRT builds): SIGTERM must still stop it.
        start = asyncio.create_task(self._start(), name="start")
        stop = asyncio.create_task(self._stop.wait(), name="stop-wait")
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, EdgedError):
                await start
            log.info("daemon_start_cancelled")
            await self._shutdown()
            return 0
        stop.cancel()
        try:
            start.result()
        except EdgedError as exc:
            log.error("daemon_start_failed", error=str(exc))
            await self._shutdown()
            raise
        self._started = True
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGHUP, self._reload_signal)
        self.notifier.ready(status=self._status_line())
        log.info("daemon_ready", cameras=list(self.cameras), models=self._models())
        self._tasks = [
            asyncio.create_task(self._schedule_loop(), name="schedule"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        await self._stop.wait()
        log.info("daemon_stopping")
        self.notifier.stopping()
        await self._shutdown()
        log.info("daemon_stopped", exit_code=self.exit_code)
        return self.exit_code

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

    def _spawn_reload(self, coro: Any) -> None:
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
        self.pipeline = await self._build_pipeline(s)
        self.publisher = Publisher(s, on_config_set=self._on_config_set_threadsafe)
        self.publisher.start()
        for cam in s.enabled_cameras():
            self._add_camera(cam)
        self.publisher.publish_discovery(list(self.cameras))
        if s.health.enabled:
            self.health = HealthServer(s.health, self.snapshot, self.metrics)
            await self.health.start()
        await self._wait_cameras_opened(timeout=10.0)

    async def _wait_cameras_opened(self, timeout: float) -> None:
        """READY means cameras were opened: wait until none is still ``starting``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(slot.camera.state != "starting" for slot in self.cameras.values()):
                return
            await asyncio.sleep(0.05)

    async def _shutdown(self) -> None:
        """Bounded: flush tracks, stop cameras together, publish offline, close."""
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
        # A reload that was past its last await holds the lock until it finished applying.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._reload_lock.acquire(), SHUTDOWN_TIMEOUT_S / 4)
        now = time.monotonic()
        for cam_id, slot in list(self.cameras.items()):
            await self._emit_events(cam_id, slot.tracker.flush(now))
        await self._publish_aggregates(final=True)
        await self._stop_cameras(list(self.cameras))
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    in_thread(self.publisher.stop, SHUTDOWN_TIMEOUT_S / 2), SHUTDOWN_TIMEOUT_S
                )
        if self.health is not None:
            await self.health.stop()
        if self._infer is not None:
            self._infer.close()
        self.notifier.close()

    # ------------------------------------------------------------------ components

    async def _build_pipeline(self, s: Settings) -> Pipeline:
        """Load and warm the models off the loop (TensorRT engine builds take minutes)."""
        pipeline = await in_thread(lambda: build_pipeline(s, session_factory(s)))
        log.info("pipeline_loaded", models=pipeline.models, providers=pipeline.providers)
        return pipeline

    def _tracker_settings(self, s: Settings, pipeline: Pipeline | None) -> SmoothingSettings:
        """The phase decides whether smoothing runs (sota_phase1 has none)."""
        loaded = pipeline.loaded if pipeline is not None else None
        phase_smooths = loaded.smoothing if loaded is not None else True
        return s.smoothing.model_copy(update={"enabled": s.smoothing.enabled and phase_smooths})

    def _new_tracker(self, cam_id: str) -> Tracker:
        return Tracker(
            self._tracker_settings(self.settings, self.pipeline),
            cam_id,
            self.settings.device.id,
            privacy=self.settings.privacy,
        )

    def _add_camera(self, cam: CameraSettings) -> None:
        loop = self._loop
        assert loop is not None

        def wake(_frame: Frame) -> None:
            loop.call_soon_threadsafe(self._frame_ready.set)

        camera = Camera(cam, on_frame=wake)
        camera.start()
        self.cameras[cam.id] = CameraSlot(cam, camera, self._new_tracker(cam.id))
        log.info("camera_added", camera=cam.id, source=sources.redact(cam.source), fps=cam.fps)

    async def _stop_cameras(self, ids: list[str]) -> None:
        """Stop cameras in parallel against one deadline, not one timeout after another."""
        slots = [self.cameras.pop(i) for i in ids if i in self.cameras]
        await asyncio.gather(
            *(in_thread(slot.camera.stop, 5.0) for slot in slots), return_exceptions=True
        )

    # ------------------------------------------------------------------ scheduling

    async def _schedule_loop(self) -> None:
        """Collect due frames, run one batch at a time on the inference thread."""
        assert self._infer is not None
        while not self._stop.is_set():
            # Cleared before looking, so a frame arriving meanwhile wakes the wait below.
            self._frame_ready.clear()
            now = time.monotonic()
            batch: list[tuple[str, CameraSlot, Frame]] = []
            for cam_id, slot in self.cameras.items():
                if now < slot.next_due:
                    continue
                frame = slot.camera.latest()
                if frame is None:
                    continue
                slot.next_due = max(slot.next_due + 1.0 / slot.settings.fps, now)
                batch.append((cam_id, slot, frame))
            pipeline = self.pipeline
            if not batch or pipeline is None:
                await self._expire_idle_tracks()
                await self._publish_aggregates()
                await wait_event(self._frame_ready, self._idle_timeout(now))
                continue
            self.rt.busy_since = time.monotonic()
            try:
                results = await self._infer.run(pipeline.process, [f.image for _, _, f in batch])
            except EdgedError as exc:  # a model failing at run time must not kill the loop
                self._inference_failed(str(exc), batch)
                await asyncio.sleep(0.5)
                continue
            finally:
                self.rt.busy_since = None
            self._record_inference(pipeline, results)
            for (cam_id, slot, frame), result in zip(batch, results, strict=True):
                if self.cameras.get(cam_id) is not slot:  # removed or replaced by a reload
                    continue
                await self._after_frame(cam_id, slot, frame, result)
            await self._expire_idle_tracks()
            await self._publish_aggregates()

    def _inference_failed(self, error: str, batch: list[tuple[str, CameraSlot, Frame]]) -> None:
        """The batch's frames are dropped and counted; /health reports the error for a while.

        Logged when the error changes and otherwise at most every 10 s (with the count), so a
        model failing on every frame does not flood the journal.
        """
        now = time.monotonic()
        rt = self.rt
        for _, slot, _ in batch:
            slot.frames_failed += 1
        rt.inference_failures += len(batch)
        repeated = error == rt.last_inference_error and now - rt.last_inference_log < 10.0
        rt.last_inference_error = error
        rt.last_inference_error_at = now
        if not repeated:
            rt.last_inference_log = now
            log.error(
                "inference_failed",
                error=error,
                cameras=[c for c, _, _ in batch],
                frames_failed=rt.inference_failures,
            )

    def _idle_timeout(self, now: float) -> float:
        """Until the next camera is due under its fps cap, at most IDLE_TICK_S."""
        future = [s.next_due - now for s in self.cameras.values() if s.next_due > now]
        return min([IDLE_TICK_S, *future]) if future else IDLE_TICK_S

    async def _expire_idle_tracks(self) -> None:
        """End the tracks of cameras that stopped delivering frames (dead source, EOF).

        A tracker only learns that time passed when it is fed a frame; a camera without
        frames would otherwise keep its faces forever and never send ``left``.
        """
        now = time.monotonic()
        timeout = self.settings.smoothing.track_timeout_s
        for cam_id, slot in list(self.cameras.items()):
            if slot.tracker.track_ids and now - slot.last_processed > timeout:
                events = slot.tracker.update([], now, time.time())
                await self._emit_events(cam_id, events)
                self._publish_state(cam_id, slot)

    async def _after_frame(
        self, cam_id: str, slot: CameraSlot, frame: Frame, result: FrameResult
    ) -> None:
        now = time.monotonic()
        if slot.last_processed:
            inst = 1.0 / max(now - slot.last_processed, 1e-6)
            slot.fps_processed = (
                inst if not slot.fps_processed else 0.8 * slot.fps_processed + 0.2 * inst
            )
        slot.last_processed = now
        slot.frames_processed += 1
        slot.faces = len(result.faces)
        events = slot.tracker.update(result.faces, frame.ts, frame.wall_ts)
        if not per_person_allowed(self.settings.privacy):
            # Aggregate mode: the tracker still smooths each face, but only counts leave.
            if slot.aggregator is None:
                slot.aggregator = Aggregator(
                    cam_id, self.settings.device.id, self.settings.privacy, now
                )
            slot.aggregator.observe(slot.tracker.live_emotions())
            return
        slot.aggregator = None
        await self._emit_events(cam_id, events)
        self._publish_state(cam_id, slot)

    async def _publish_aggregates(self, final: bool = False) -> None:
        """Aggregate mode: close every camera's interval that is due (``final``: every one,
        at a stop) and spool its report (none when no frame had ``min_faces`` faces)."""
        now = time.monotonic()
        for cam_id, slot in list(self.cameras.items()):
            agg = slot.aggregator
            if agg is None or not (final or agg.due(now)) or self.publisher is None:
                continue
            report = agg.report(now, iso_utc(time.time()))
            if report is None:
                continue
            try:
                await self.publisher.publish_aggregate_async(cam_id, report)
            except EdgedError as exc:
                log.error("aggregate_spool_failed", camera=cam_id, error=str(exc))
                continue
            log.info(
                "aggregate_report",
                camera=cam_id,
                frames=report.frames,
                faces=report.faces,
                faces_mean=report.faces_mean,
            )

    def _publish_state(self, cam_id: str, slot: CameraSlot) -> None:
        """Retained emotion/attributes when what they say changed.

        Boxes move a little on every frame; re-publishing a retained message for each
        jitter would flood subscribers, so boxes alone refresh it at most once per
        heartbeat interval.
        """
        emotion, attrs = slot.tracker.state()
        key = json.dumps(
            [
                emotion,
                [(t.track_id, t.emotion, round(t.confidence or 0.0, 1)) for t in attrs.tracks],
            ]
        )
        now = time.monotonic()
        if key == slot.last_state_key and now - slot.last_state_at < self.settings.mqtt.heartbeat_s:
            return
        if not per_person_allowed(self.settings.privacy):
            return
        if self.publisher is not None:
            self.publisher.publish_state(cam_id, emotion, attrs)
        slot.last_state_key = key
        slot.last_state_at = now

    async def _emit_events(self, cam_id: str, events: list[EmotionEvent]) -> None:
        """Spool (fsync, off the loop, in order) and log each event; none in aggregate mode
        (neither sent nor written to the log: a per-person record either way)."""
        if self.publisher is None or not per_person_allowed(self.settings.privacy):
            return
        for event in events:
            try:
                await self.publisher.publish_event_async(cam_id, event)
            except EdgedError as exc:  # spool unwritable: say so loudly, keep running
                log.error("event_spool_failed", camera=cam_id, id=event.id, error=str(exc))
                continue
            log.info(
                "emotion_event",
                id=event.id,
                camera=cam_id,
                track_id=event.track_id,
                type=event.type,
                emotion=event.emotion,
                confidence=event.confidence,
            )

    def _record_inference(self, pipeline: Pipeline, results: list[FrameResult]) -> None:
        """Per-frame detection times, and the batch's crop/classify/post times once."""
        det = pipeline.detector.name
        for result in results:
            self.metrics.observe_inference(det, "detect", result.timings["detect"])
        shared = results[0].timings if results else {}
        if pipeline.classifier is not None and shared.get("classify"):
            cls = pipeline.classifier.name
            self.metrics.observe_inference(cls, "crop", shared["crop"])
            self.metrics.observe_inference(cls, "classify", shared["classify"])
        if shared:
            self.metrics.observe_inference("pipeline", "post", shared["post"])

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
                    self.publisher.publish_heartbeat(self.heartbeat())
                    last = now
                was_connected = connected
            await asyncio.sleep(min(self.settings.mqtt.heartbeat_s, 0.5))

    async def _watchdog_loop(self) -> None:
        """Ping systemd's watchdog only while the loop and the inference thread make progress."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not self._stop.is_set():
            busy_s = self.inference_busy_s()
            if busy_s > 4 * interval:
                log.error("watchdog_withheld", reason="inference thread stuck", busy_s=busy_s)
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def inference_busy_s(self) -> float:
        busy = self.rt.busy_since
        return time.monotonic() - busy if busy is not None else 0.0

    def _models(self) -> dict[str, Any]:
        """Loaded model name → the execution provider it actually runs on."""
        return dict(self.pipeline.providers) if self.pipeline else {}

    def _fallbacks(self) -> list[str]:
        loaded = self.pipeline.loaded if self.pipeline else None
        return [f"{f.kind} {f.name}: {f.reason}" for f in loaded.fallbacks] if loaded else []

    def _status_line(self) -> str:
        return f"{len(self.cameras)} camera(s), models {self._models()}"

    def camera_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cam_id, slot in self.cameras.items():
            st = slot.camera.stats()
            age = st.get("last_frame_age_s")
            out[cam_id] = {
                "state": st.get("state"),
                "fps_in": round(float(st.get("fps_in") or 0.0), 2),
                "fps_processed": round(slot.fps_processed, 2),
                "faces": slot.faces,
                "frames_in": st.get("frames_in", 0),
                "frames_processed": slot.frames_processed,
                "frames_failed": slot.frames_failed,
                "dropped_frames": st.get("dropped_frames", 0),
                "last_frame_age_s": round(age, 3) if isinstance(age, float) else age,
                "reconnects": st.get("reconnects", 0),
                "last_error": st.get("last_error"),
            }
        return out

    def _spool(self, mqtt: Mapping[str, Any]) -> dict[str, Any]:
        return {"pending": mqtt.get("spool_pending", 0), "dropped": mqtt.get("spool_dropped", 0)}

    def _heartbeat_camera(self, stats: Mapping[str, Any]) -> dict[str, Any]:
        """The heartbeat's fields of one camera. In aggregate mode with ``min_faces`` set, a
        face count below the minimum is withheld (``null``): no report leaving the device
        may describe fewer people than that, not even by their presence."""
        out = {k: stats[k] for k in HEARTBEAT_CAMERA_KEYS}
        p = self.settings.privacy
        if not per_person_allowed(p) and 0 < (out["faces"] or 0) < p.min_faces:
            out["faces"] = None
        return out

    def heartbeat(self) -> dict[str, Any]:
        mqtt = self.publisher.stats().to_json() if self.publisher else {}
        return {
            "schema": 1,
            "ts": iso_utc(time.time()),
            "device": self.settings.device.id,
            "uptime_s": round(time.monotonic() - self.rt.started, 1),
            "version": __version__,
            "phase": self.settings.pipeline.phase,
            "models": dict(self.pipeline.models) if self.pipeline else {},
            "providers": self._models(),
            "fallbacks": self._fallbacks(),
            "cameras": {cid: self._heartbeat_camera(st) for cid, st in self.camera_stats().items()},
            "spool": self._spool(mqtt),
        }

    def snapshot(self) -> dict[str, Any]:
        """What /health and /metrics read: cheap, taken on the loop, never blocks."""
        mqtt = self.publisher.stats().to_json() if self.publisher else {"connected": False}
        return {
            "uptime_s": time.monotonic() - self.rt.started,
            "version": __version__,
            "phase": self.settings.pipeline.phase,
            "models": self._models(),
            "roles": dict(self.pipeline.models) if self.pipeline else {},
            "fallbacks": self._fallbacks(),
            "cameras": self.camera_stats(),
            "mqtt": mqtt,
            "spool": self._spool(mqtt),
            "inference_busy_s": self.inference_busy_s(),
            "inference": self._inference_health(),
        }

    def _inference_health(self) -> dict[str, Any]:
        at = self.rt.last_inference_error_at
        return {
            "failures": self.rt.inference_failures,
            "last_error": self.rt.last_inference_error,
            "last_error_age_s": None if at is None else round(time.monotonic() - at, 3),
        }

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
            merged = merge_config(settings_data(self.settings), change)
            new = build_settings(merged, "config/set")
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
        """The guard of the contract: enabled, token, and only the allowed keys."""
        mqtt = self.settings.mqtt
        if not mqtt.remote_config:
            raise ConfigError("remote configuration is disabled ([mqtt] remote_config = false)")
        change = load_config_set(payload)
        token = mqtt.remote_config_token.get_secret_value()
        given = change.pop("token", None)
        # Compared as UTF-8 bytes: compare_digest refuses non-ASCII str, and a configured
        # token from the environment may even hold surrogate escapes.
        if token and not (
            isinstance(given, str) and hmac.compare_digest(_utf8(given), _utf8(token))
        ):
            raise ConfigError("config/set refused: missing or wrong token")
        for key in iter_keys(change):
            allowed = any(remote_key_matches(key, a) for a in REMOTE_ALLOWED)
            if not allowed or any(key.startswith(d) for d in REMOTE_DENIED):
                raise ConfigError(f"config/set may not change {key}")
        cameras = change.get("cameras")
        if cameras is not None:
            if not isinstance(cameras, list):
                raise ConfigError("config/set: cameras must be a list of camera tables")
            # A source the running config already reads is not a new way in.
            current = {c.source for c in self.settings.cameras}
            for cam in cameras:
                source = cam.get("source") if isinstance(cam, Mapping) else None
                if isinstance(source, bool) or not isinstance(source, (str, int)):
                    continue  # not a source at all: the validation refuses it
                if str(source) not in current:
                    sources.check_remote(str(source), self.settings.mqtt.remote_media_dir)
        return change

    async def apply(self, new: Settings, source: str) -> None:
        """Apply validated settings without a restart, or raise and change nothing.

        Everything that can fail is prepared first (models built and warmed, camera
        sources parsed, the MQTT client rebuilt); only then is anything switched over.
        """
        async with self._reload_lock:
            old = self.settings
            for key in RESTART_ONLY:
                section, name = key.split(".")
                if getattr(getattr(old, section), name) != getattr(getattr(new, section), name):
                    raise ConfigError(f"{key} cannot change while running; restart edged")
            for cam in new.enabled_cameras():
                sources.parse(cam.source)  # raises a clear error before anything changes
            pipeline = self.pipeline
            rebuild = (
                pipeline is None
                or new.models != old.models
                or any(getattr(new.pipeline, k) != getattr(old.pipeline, k) for k in MODEL_KEYS)
            )
            if rebuild:
                # Build first: a change whose models do not load is refused as a whole.
                pipeline = await self._build_pipeline(new)
            if self._stop.is_set():
                raise ConfigError("edged is stopping")
            if self.publisher is not None and (new.mqtt != old.mqtt or new.privacy != old.privacy):
                # Builds the new client before dropping the old one; raises on bad creds/TLS.
                await in_thread(self.publisher.update_settings, new)
            # ---- nothing below can fail on bad input: switch over.
            assert pipeline is not None
            if not rebuild:
                self._update_pipeline_in_place(pipeline, new)
            labels_changed = self._labels(pipeline) != self._labels(self.pipeline)
            self.settings = new
            self.pipeline = pipeline
            self.metrics.stale_after_s = new.health.stale_after_s
            if self.health is not None:
                self.health.settings = new.health
            await self._apply_trackers(labels_changed)
            await self._apply_cameras(old, new)
            log.info(
                "config_reloaded",
                source=source,
                cameras=list(self.cameras),
                models=self._models(),
                models_rebuilt=rebuild,
            )

    @staticmethod
    def _labels(pipeline: Pipeline | None) -> tuple[str, ...]:
        if pipeline is None or pipeline.classifier is None:
            return ()
        return tuple(pipeline.classifier.labels)

    @staticmethod
    def _update_pipeline_in_place(pipeline: Pipeline, new: Settings) -> None:
        """Thresholds and batching change without reloading (or re-warming) any model."""
        p = new.pipeline
        pipeline.crop_margin = p.crop_margin
        pipeline.max_batch = p.max_batch
        detector = pipeline.detector
        spec = getattr(detector, "spec", None)
        default = spec.default_threshold if spec is not None else 0.5
        if hasattr(detector, "limits"):
            detector.limits = Limits(
                p.det_threshold or default, p.nms_threshold, p.min_face_px, p.max_faces
            )

    async def _apply_trackers(self, labels_changed: bool) -> None:
        """New smoothing settings keep tracks; a classifier with other labels restarts them."""
        settings = self._tracker_settings(self.settings, self.pipeline)
        now = time.monotonic()
        for cam_id, slot in self.cameras.items():
            if labels_changed:
                await self._emit_events(cam_id, slot.tracker.flush(now))
                slot.tracker = self._new_tracker(cam_id)
            else:
                slot.tracker.configure(settings, self.settings.privacy)
            if slot.aggregator is not None:
                slot.aggregator.configure(self.settings.privacy)

    async def _apply_cameras(self, old: Settings, new: Settings) -> None:
        before = {c.id: c for c in old.enabled_cameras()}
        after = {c.id: c for c in new.enabled_cameras()}
        removed = [i for i in before if i not in after or before[i] != after[i]]
        added = [i for i in after if i not in before or before[i] != after[i]]
        now = time.monotonic()
        for cam_id in removed:
            slot = self.cameras.get(cam_id)
            if slot is not None:
                await self._emit_events(cam_id, slot.tracker.flush(now))
        await self._stop_cameras(removed)
        for cam_id in added:
            self._add_camera(after[cam_id])
        if self.publisher is not None and (removed or added):
            # Cameras no longer listed get their retained state and discovery emptied.
            self.publisher.publish_discovery(list(self.cameras))


__all__ = ["Daemon", "in_thread", "run_daemon"]
