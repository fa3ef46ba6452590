"""The daemon's lifecycle: start everything, run the scheduling loop, reload, stop.

One asyncio loop owns the schedule and everything cheap (tracking, smoothing, building
payloads, the health server). Everything that blocks runs elsewhere:

- each camera reads in its own thread and keeps only its newest frame (``edged.capture``);
- inference runs on ONE worker thread: the loop collects the newest frame of every camera
  that is due under its fps cap and hands them over as one batch, and never submits the
  next batch before the previous one finished, so there is no queue to grow;
- the MQTT client has paho's network thread, and every event goes through the durable
  spool first (``edged.publishing``).

Reload (SIGHUP or ``config/set``) validates the new settings completely before touching
anything; a change that cannot be applied leaves the running config in place and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from edged import __version__
from edged.capture import Camera
from edged.catalog import PHASES
from edged.config import (
    CameraSettings,
    Settings,
    build_settings,
    iter_keys,
    load_settings,
    merge_config,
    settings_data,
)
from edged.errors import ConfigError, EdgedError
from edged.health import HealthServer, Metrics
from edged.loader import session_factory
from edged.pipeline import Pipeline, build_pipeline
from edged.publishing import Publisher
from edged.sdnotify import Notifier
from edged.tracking import Tracker

log = structlog.get_logger(__name__)

#: Keys a remote ``config/set`` may never change: where files are read or written, the
#: broker credentials, the health bind address, and the remote-config guard itself.
REMOTE_FORBIDDEN: tuple[str, ...] = (
    "device.",
    "models.dir",
    "mqtt.host",
    "mqtt.port",
    "mqtt.username",
    "mqtt.password",
    "mqtt.password_file",
    "mqtt.client_id",
    "mqtt.tls_",
    "mqtt.remote_config",
    "mqtt.topic_prefix",
    "health.host",
    "health.port",
    "health.enabled",
)

#: Keys only a restart can change (they name the daemon or where its state lives).
RESTART_ONLY: tuple[str, ...] = ("device.id", "device.state_dir")

SHUTDOWN_TIMEOUT_S = 10.0


def run_daemon(settings: Settings, config_path: Path | None) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    return asyncio.run(Daemon(settings, config_path).run())


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    last_state_key: str = ""
    last_state_at: float = 0.0


@dataclass
class _Runtime:
    started: float = field(default_factory=time.monotonic)
    last_batch_done: float = field(default_factory=time.monotonic)
    busy_since: float | None = None


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
        # One inference thread: batches are serialised, so nothing queues behind it.
        self._infer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-infer")
        # Blocking housekeeping (building models, joining camera threads) runs here.
        self._blocking = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edged-io")
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._install_signals()
        log.info(
            "daemon_starting",
            version=__version__,
            device=self.settings.device.id,
            phase=self.settings.pipeline.phase,
            config=str(self.config_path) if self.config_path else None,
        )
        try:
            await self._start()
        except EdgedError as exc:
            log.error("daemon_start_failed", error=str(exc))
            await self._shutdown()
            raise
        self.notifier.ready(status=self._status_line())
        log.info("daemon_ready", cameras=list(self.cameras), models=self._models())
        self._tasks = [
            asyncio.create_task(self._schedule_loop(), name="schedule"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
        ]
        await self._stop.wait()
        log.info("daemon_stopping")
        self.notifier.stopping()
        await self._shutdown()
        log.info("daemon_stopped")
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signals(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self.reload_from_file())
            )

    async def _start(self) -> None:
        s = self.settings
        s.device.state_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline = await self._build_pipeline(s)
        self.publisher = Publisher(s)
        self.publisher.on_config_set = self._on_config_set_threadsafe
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
            if all(slot.camera.stats()["state"] != "starting" for slot in self.cameras.values()):
                return
            await asyncio.sleep(0.05)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        now = time.monotonic()
        for cam_id, slot in list(self.cameras.items()):
            await self._emit_events(cam_id, slot.tracker.flush(now))
        await self._stop_cameras(list(self.cameras))
        if self.publisher is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._blocking, self.publisher.stop, SHUTDOWN_TIMEOUT_S / 2
            )
        if self.health is not None:
            await self.health.stop()
        self._infer.shutdown(wait=False, cancel_futures=True)
        self._blocking.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ components

    async def _build_pipeline(self, s: Settings) -> Pipeline:
        """Load and warm the models off the loop (TensorRT engine builds take minutes)."""
        loop = asyncio.get_running_loop()
        pipeline = await loop.run_in_executor(
            self._blocking, lambda: build_pipeline(s, session_factory(s))
        )
        log.info("pipeline_loaded", models=pipeline.models, providers=pipeline.providers)
        return pipeline

    def _smoothing_enabled(self, s: Settings) -> bool:
        return s.smoothing.enabled and PHASES[s.pipeline.phase].smoothing

    def _tracker_settings(self, s: Settings) -> Any:
        return s.smoothing.model_copy(update={"enabled": self._smoothing_enabled(s)})

    def _add_camera(self, cam: CameraSettings) -> None:
        camera = Camera(cam)
        tracker = Tracker(self._tracker_settings(self.settings), cam.id, self.settings.device.id)
        camera.start()
        self.cameras[cam.id] = CameraSlot(settings=cam, camera=camera, tracker=tracker)
        log.info("camera_added", camera=cam.id, source=_safe_source(cam.source), fps=cam.fps)

    async def _stop_cameras(self, ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        slots = [self.cameras.pop(i) for i in ids if i in self.cameras]
        await asyncio.gather(
            *(loop.run_in_executor(self._blocking, slot.camera.stop, 5.0) for slot in slots),
            return_exceptions=True,
        )

    # ------------------------------------------------------------------ scheduling

    async def _schedule_loop(self) -> None:
        """Collect due frames, run one batch at a time on the inference thread."""
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            batch: list[tuple[str, Any]] = []
            for cam_id, slot in self.cameras.items():
                if now < slot.next_due:
                    continue
                frame = slot.camera.latest()
                if frame is None:
                    continue
                slot.next_due = max(slot.next_due + 1.0 / slot.settings.fps, now)
                batch.append((cam_id, frame))
            if not batch or self.pipeline is None:
                await asyncio.sleep(self._idle_sleep(now))
                continue
            pipeline = self.pipeline
            self.rt.busy_since = time.monotonic()
            try:
                results = await loop.run_in_executor(
                    self._infer, pipeline.process, [f.image for _, f in batch]
                )
            except Exception as exc:  # a model failing at run time must not kill the loop
                log.error("inference_failed", error=str(exc), cameras=[c for c, _ in batch])
                self.rt.busy_since = None
                await asyncio.sleep(0.5)
                continue
            self.rt.busy_since = None
            self.rt.last_batch_done = time.monotonic()
            self._record_inference(pipeline, results)
            for (cam_id, frame), result in zip(batch, results, strict=True):
                target = self.cameras.get(cam_id)
                if target is None:  # removed by a reload while the batch ran
                    continue
                await self._after_frame(cam_id, target, frame, result)
            await self._expire_idle_tracks()

    def _idle_sleep(self, now: float) -> float:
        dues = [s.next_due for s in self.cameras.values()]
        if not dues:
            return 0.1
        return min(max(min(dues) - now, 0.002), 0.05)

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

    async def _after_frame(self, cam_id: str, slot: CameraSlot, frame: Any, result: Any) -> None:
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
        await self._emit_events(cam_id, events)
        self._publish_state(cam_id, slot)

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
                [
                    (t["track_id"], t["emotion"], round(t["confidence"] or 0.0, 1))
                    for t in attrs.get("tracks", [])
                ],
            ]
        )
        now = time.monotonic()
        if key == slot.last_state_key and now - slot.last_state_at < self.settings.mqtt.heartbeat_s:
            return
        if self.publisher is not None:
            self.publisher.publish_state(cam_id, emotion, attrs)
        slot.last_state_key = key
        slot.last_state_at = now

    async def _emit_events(self, cam_id: str, events: list[dict[str, Any]]) -> None:
        """Spool (fsync, off the loop, in order) and log each event."""
        if self.publisher is None:
            return
        for event in events:
            try:
                await self.publisher.publish_event_async(cam_id, event)
            except EdgedError as exc:  # spool unwritable: say so loudly, keep running
                log.error("event_spool_failed", camera=cam_id, error=str(exc))
            log.info(
                "emotion_event",
                id=event.get("id"),
                camera=cam_id,
                track_id=event.get("track_id"),
                type=event.get("type"),
                emotion=event.get("emotion"),
                confidence=event.get("confidence"),
            )

    def _record_inference(self, pipeline: Pipeline, results: list[Any]) -> None:
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
        while True:
            if self.publisher is not None:
                self.publisher.publish_heartbeat(self.heartbeat())
            await asyncio.sleep(self.settings.mqtt.heartbeat_s)

    async def _watchdog_loop(self) -> None:
        """Ping systemd's watchdog only while the loop and the inference thread make progress."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            busy = self.rt.busy_since
            busy_s = time.monotonic() - busy if busy is not None else 0.0
            if busy_s > 4 * interval:
                log.error("watchdog_withheld", reason="inference thread stuck", busy_s=busy_s)
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

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
            st = dict(slot.camera.stats())
            out[cam_id] = {
                "state": st.get("state"),
                "fps_in": round(float(st.get("fps_in") or 0.0), 2),
                "fps_processed": round(slot.fps_processed, 2),
                "faces": slot.faces,
                "frames_in": st.get("frames_in", 0),
                "frames_processed": slot.frames_processed,
                "dropped_frames": st.get("dropped_frames", 0),
                "last_frame_age_s": st.get("last_frame_age_s"),
                "reconnects": st.get("reconnects", 0),
                "last_error": st.get("last_error"),
            }
        return out

    def heartbeat(self) -> dict[str, Any]:
        pub = self.publisher.stats() if self.publisher else {}
        return {
            "schema": 1,
            "ts": utc_now_iso(),
            "device": self.settings.device.id,
            "uptime_s": round(time.monotonic() - self.rt.started, 1),
            "version": __version__,
            "phase": self.settings.pipeline.phase,
            "models": dict(self.pipeline.models) if self.pipeline else {},
            "providers": self._models(),
            "fallbacks": self._fallbacks(),
            "cameras": {
                cid: {
                    k: v
                    for k, v in st.items()
                    if k
                    in (
                        "state",
                        "fps_in",
                        "fps_processed",
                        "faces",
                        "dropped_frames",
                        "last_frame_age_s",
                    )
                }
                for cid, st in self.camera_stats().items()
            },
            "spool": {
                "pending": pub.get("spool_pending", 0),
                "dropped": pub.get("spool_dropped", 0),
            },
        }

    def snapshot(self) -> dict[str, Any]:
        """What /health and /metrics read: cheap, taken on the loop, never blocks."""
        mqtt = self.publisher.stats() if self.publisher else {"connected": False}
        return {
            "uptime_s": time.monotonic() - self.rt.started,
            "version": __version__,
            "phase": self.settings.pipeline.phase,
            "models": self._models(),
            "roles": dict(self.pipeline.models) if self.pipeline else {},
            "fallbacks": self._fallbacks(),
            "cameras": self.camera_stats(),
            "mqtt": mqtt,
            "spool": {
                "pending": mqtt.get("spool_pending", 0),
                "dropped": mqtt.get("spool_dropped", 0),
            },
            "inference_busy_s": (
                time.monotonic() - self.rt.busy_since if self.rt.busy_since is not None else 0.0
            ),
        }

    # ------------------------------------------------------------------ reload

    async def reload_from_file(self) -> None:
        """SIGHUP: re-read the config file; an invalid one keeps the running config."""
        self.notifier.reloading()
        try:
            new, _ = await asyncio.get_running_loop().run_in_executor(
                self._blocking, load_settings, self.config_path
            )
            await self.apply(new, source="sighup")
        except EdgedError as exc:
            log.error("config_reload_rejected", source="sighup", reason=str(exc))
        finally:
            self.notifier.ready(status=self._status_line())

    def _on_config_set_threadsafe(self, payload: bytes) -> None:
        """Called on paho's thread: hand the payload to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.remote_config(payload)))

    async def remote_config(self, payload: bytes) -> None:
        """``config/set``: validate the guard, merge, validate, apply; answer on config/result."""
        try:
            change = self.check_remote_change(payload)
            merged = merge_config(settings_data(self.settings), change)
            new = build_settings(merged, "config/set")
            await self.apply(new, source="mqtt")
        except EdgedError as exc:
            log.warning("config_reload_rejected", source="mqtt", reason=str(exc))
            if self.publisher is not None:
                self.publisher.publish_config_result(False, str(exc))
            return
        if self.publisher is not None:
            self.publisher.publish_config_result(True, None)

    def check_remote_change(self, payload: bytes) -> dict[str, Any]:
        """The guard of the contract: enabled, token, and nothing that touches files or creds."""
        mqtt = self.settings.mqtt
        if not mqtt.remote_config:
            raise ConfigError("remote configuration is disabled ([mqtt] remote_config = false)")
        try:
            change = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config/set payload is not JSON: {exc}") from exc
        if not isinstance(change, dict):
            raise ConfigError("config/set payload must be a JSON object")
        token = mqtt.remote_config_token.get_secret_value()
        given = change.pop("token", None)
        if token and not (isinstance(given, str) and hmac.compare_digest(given, token)):
            raise ConfigError("config/set refused: missing or wrong token")
        for key in iter_keys(change):
            if any(key == f or key.startswith(f) for f in REMOTE_FORBIDDEN):
                raise ConfigError(f"config/set may not change {key}")
        cameras = change.get("cameras")
        if cameras is not None:
            if not isinstance(cameras, list):
                raise ConfigError("config/set: cameras must be a list of camera tables")
            # A source the running config already reads is not a new way in.
            current = {c.source for c in self.settings.cameras}
            for cam in cameras:
                if isinstance(cam, Mapping) and str(cam.get("source", "")) not in current:
                    self._check_remote_source(str(cam.get("source", "")))
        return change

    def _check_remote_source(self, source: str) -> None:
        """Remote cameras may be URLs, devices, or files under the allowed media directory."""
        src = source.strip()
        if src.isdigit() or src.startswith("/dev/video"):
            return
        if src.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https"):
            return
        if "!" in src:
            raise ConfigError("config/set may not set a GStreamer pipeline as a camera source")
        allowed = self.settings.mqtt.remote_media_dir
        if allowed is not None:
            path = Path(src).resolve()
            if path.is_relative_to(allowed.resolve()):
                return
        raise ConfigError(
            f"config/set may not read the file {src!r}: file sources must be under "
            "[mqtt] remote_media_dir"
        )

    async def apply(self, new: Settings, source: str) -> None:
        """Apply validated settings without a restart, or raise and change nothing."""
        async with self._reload_lock:
            old = self.settings
            for key in RESTART_ONLY:
                section, name = key.split(".")
                if getattr(getattr(old, section), name) != getattr(getattr(new, section), name):
                    raise ConfigError(f"{key} cannot change while running; restart edged")
            pipeline = self.pipeline
            if new.pipeline != old.pipeline or new.models != old.models or self.pipeline is None:
                # Build first: a change whose models do not load is refused as a whole.
                pipeline = await self._build_pipeline(new)
            self.settings = new
            self.pipeline = pipeline
            tracker_settings = self._tracker_settings(new)
            for slot in self.cameras.values():
                slot.tracker.configure(tracker_settings)
            if self.publisher is not None and new.mqtt != old.mqtt:
                # May reconnect (offline on the old topic, wait for paho's thread): off-loop.
                await asyncio.get_running_loop().run_in_executor(
                    self._blocking, self.publisher.update_settings, new
                )
            await self._apply_cameras(old, new)
            log.info(
                "config_reloaded",
                source=source,
                cameras=list(self.cameras),
                models=self._models(),
            )

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


def _safe_source(source: str) -> str:
    """A camera source for logs, with any password in a URL masked."""
    if "://" in source and "@" in source.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = source.split("://", 1)
        creds, host = rest.split("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return source
