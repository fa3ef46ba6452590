"""Reload as data: which components a settings change rebuilds, reconfigures, or refuses.

:func:`diff` compares two validated :class:`~edged.config.Settings` key by key and reads
each changed key's policy from the config models' metadata (:class:`edged.config.Reload`),
so the policy lives next to the key it governs and the daemon only executes the plan.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import BaseModel

from edged import sources
from edged.config import (
    CameraSettings,
    Change,
    Component,
    Settings,
    SmoothingSettings,
    build_settings,
    key_policy,
    load_settings,
    merge_config,
    settings_data,
)
from edged.contracts.events import ConfigResult
from edged.errors import ConfigError, EdgedError
from edged.mqtt.publisher import Publisher
from edged.mqtt.router import ConfigRequest
from edged.pipeline import Pipeline
from edged.privacy import check_remote_privacy
from edged.runtime.tracking import Tracker
from edged.service.cameras import Cameras, camera_changes
from edged.service.health import HealthServer, Metrics
from edged.service.scheduler import Components, Scheduler
from edged.service.sdnotify import Notifier
from edged.service.status import StatusReporter
from edged.service.workers import in_thread

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReloadPlan:
    """What applying new settings takes, derived from the keys that changed."""

    #: Every dotted key whose value differs (``cameras`` as a whole).
    changed: tuple[str, ...] = ()
    #: Changed keys only a restart applies; a plan with any is refused.
    restart_only: tuple[str, ...] = ()
    #: Components built anew before anything switches over.
    rebuild: frozenset[Component] = frozenset()
    #: Components whose ``reconfigure`` takes the new settings in place.
    reconfigure: frozenset[Component] = frozenset()

    def touches(self, component: Component) -> bool:
        return component in self.rebuild or component in self.reconfigure

    def check_restart_only(self) -> None:
        """Raise :class:`ConfigError` naming the first key only a restart can change."""
        if self.restart_only:
            raise ConfigError(f"{self.restart_only[0]} cannot change while running; restart edged")


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ: ``section.key`` for sections, the name otherwise."""
    after = dict(new)
    keys: list[str] = []
    for name, before in old:
        now = after[name]
        if isinstance(before, BaseModel) and isinstance(now, BaseModel):
            fields = dict(now)
            keys.extend(f"{name}.{k}" for k, v in before if fields[k] != v)
        elif before != now:
            keys.append(name)
    return keys


def diff(old: Settings, new: Settings) -> ReloadPlan:
    """The plan that takes a running daemon from ``old`` to ``new``."""
    changed = changed_keys(old, new)
    restart: list[str] = []
    rebuild: set[Component] = set()
    reconfigure: set[Component] = set()
    for key in changed:
        policy = key_policy(key)
        if policy is None or policy.change is Change.RESTART:
            restart.append(key)
        elif policy.change is Change.REBUILD:
            rebuild.update(policy.components)
        else:
            reconfigure.update(policy.components)
    return ReloadPlan(
        tuple(changed), tuple(restart), frozenset(rebuild), frozenset(reconfigure - rebuild)
    )


class ReloadTarget(Protocol):
    """What a reload reads and swaps: the daemon's components (it is the daemon)."""

    c: Components
    config_path: Path | None
    notifier: Notifier
    metrics: Metrics
    cameras: Cameras
    scheduler: Scheduler
    status: StatusReporter
    health: HealthServer | None

    @property
    def settings(self) -> Settings: ...
    @property
    def pipeline(self) -> Pipeline | None: ...
    @property
    def publisher(self) -> Publisher | None: ...
    @property
    def started(self) -> bool: ...
    @property
    def stopping(self) -> bool: ...

    async def build_pipeline(self, s: Settings) -> Pipeline: ...
    def tracker_settings(self) -> SmoothingSettings: ...
    def new_tracker(self, cam_id: str) -> Tracker: ...
    def add_camera(self, cam: CameraSettings) -> None: ...
    def check_remote_change(self, payload: bytes) -> dict[str, Any]: ...
    async def apply(self, new: Settings, source: str) -> None: ...


class Reloader:
    """Executes a :class:`ReloadPlan` on the daemon's components, one reload at a time."""

    def __init__(self, daemon: ReloadTarget, lock: asyncio.Lock) -> None:
        self._daemon = daemon
        self._lock = lock

    async def reload_from_file(self) -> None:
        """SIGHUP: re-read the config file; an invalid one keeps the running config.

        Every outcome is counted in ``edged_config_changes_total{source="sighup"}``: a
        file that does not load, validate or apply (a bug included) as ``refused``."""
        d = self._daemon
        d.notifier.reloading()
        try:
            new, _ = await in_thread(load_settings, d.config_path)
            await d.apply(new, source="sighup")
        except EdgedError as exc:
            d.metrics.config_change("sighup", "refused")
            log.error("config_reload_rejected", source="sighup", reason=sources.redact(str(exc)))
        except Exception as exc:  # a bug; the running config stays, the daemon too
            d.metrics.config_change("sighup", "refused")
            log.exception("config_reload_failed", source="sighup", error=sources.redact(repr(exc)))
        else:
            d.metrics.config_change("sighup", "applied")
        finally:
            d.notifier.ready(status=d.status.line())

    async def config_set(self, request: ConfigRequest) -> None:
        """``config/set``: validate the guard, merge, validate, apply; answer on config/result.

        Ignored (logged, not answered) while ``[mqtt] remote_config`` is off, as the
        contract says; refused with an answer while the daemon is still starting (the
        subscription exists once MQTT connects, which can be minutes before READY).
        Every answered request is counted in ``edged_config_changes_total{source="mqtt"}``
        as ``applied`` or ``refused``; an ignored one is not a change and is not counted.
        """
        d = self._daemon
        if not d.settings.mqtt.remote_config:
            log.info("config_set_ignored", reason="remote_config is off")
            return
        if not d.started:
            d.metrics.config_change("mqtt", "refused")
            log.info("config_set_refused", reason="starting")
            self._answer_config_set(
                request, False, "edged is starting; send the change once it is ready"
            )
            return
        try:
            change = d.check_remote_change(request.payload)
            new = build_settings(merge_config(settings_data(d.settings), change), "config/set")
            check_remote_privacy(d.settings.privacy, new.privacy)
            await d.apply(new, source="mqtt")
        except EdgedError as exc:
            reason = sources.redact(str(exc))
            d.metrics.config_change("mqtt", "refused")
            log.warning("config_reload_rejected", source="mqtt", reason=reason)
            self._answer_config_set(request, False, reason)
            return
        except Exception as exc:  # a bug: the sender still gets an answer, the log the trace
            d.metrics.config_change("mqtt", "refused")
            log.exception("config_reload_failed", source="mqtt", error=sources.redact(repr(exc)))
            self._answer_config_set(
                request,
                False,
                f"internal error ({type(exc).__name__}); nothing changed, see the log",
            )
            return
        d.metrics.config_change("mqtt", "applied")
        self._answer_config_set(request, True, None)

    def _answer_config_set(self, request: ConfigRequest, ok: bool, error: str | None) -> None:
        """``config/result`` echoing the request's ``id`` (and under MQTT 5 to its response
        topic with its correlation data)."""
        d = self._daemon
        if d.publisher is None:
            return
        try:
            d.publisher.publish_config_result(
                ConfigResult.now(ok, error, request.request_id),
                response_topic=request.response_topic,
                correlation_data=request.correlation_data,
            )
        except Exception as exc:  # the answer is best effort; the reload must not die on it
            log.exception("config_result_failed", error=repr(exc))

    async def apply(self, new: Settings, source: str) -> None:
        """Apply validated settings without a restart, or raise and change nothing.

        Everything that can fail is prepared first (models built and warmed, camera
        sources parsed, the MQTT client rebuilt); only then is anything switched over.
        """
        d = self._daemon
        async with self._lock:
            old = d.settings
            plan = diff(old, new)
            plan.check_restart_only()
            for cam in new.enabled_cameras():
                sources.parse(cam.source)  # raises a clear error before anything changes
            pipeline = d.pipeline
            rebuild = pipeline is None or "pipeline" in plan.rebuild
            if rebuild:
                # Build first: a change whose models do not load is refused as a whole.
                pipeline = await d.build_pipeline(new)
            if d.stopping:
                raise ConfigError("edged is stopping")
            if d.publisher is not None and plan.touches("publisher"):
                # Builds the new client before dropping the old one; raises on bad creds/TLS.
                await in_thread(d.publisher.update_settings, new)
            # ---- nothing below can fail on bad input: switch over.
            assert pipeline is not None
            if not rebuild:
                pipeline.reconfigure(new)
            labels_changed = classifier_labels(pipeline) != classifier_labels(d.pipeline)
            d.c.settings, d.c.pipeline = new, pipeline
            d.metrics.stale_after_s = new.health.stale_after_s
            if d.health is not None and plan.touches("health"):
                d.health.reconfigure(new.health)
            await self.apply_trackers(labels_changed)
            await self.apply_cameras(old, new, labels_changed)
            log.info(
                "config_reloaded",
                source=source,
                cameras=list(d.cameras),
                models=d.status.models().providers,
                models_rebuilt=rebuild,
            )

    async def apply_trackers(self, labels_changed: bool) -> None:
        """New smoothing settings keep tracks; a classifier with other labels restarts them."""
        d = self._daemon
        smoothing, privacy = d.tracker_settings(), d.settings.privacy
        now = time.monotonic()
        for cam_id, slot in d.cameras.items():
            if labels_changed:
                await d.scheduler.emit_events(cam_id, slot.tracker.flush(now))
                slot.tracker = d.new_tracker(cam_id)
            slot.reconfigure(smoothing, privacy, d.settings.pipeline)

    async def apply_cameras(
        self, old: Settings, new: Settings, labels_changed: bool = False
    ) -> None:
        """Restart the cameras that changed; their open tracks end with ``left`` first."""
        d = self._daemon
        removed, added = camera_changes(old, new)
        now = time.monotonic()
        for cam_id in removed:
            slot = d.cameras.get(cam_id)
            if slot is not None:
                await d.scheduler.emit_events(cam_id, slot.tracker.flush(now))
        await d.cameras.stop(removed)
        for cam in added:
            d.add_camera(cam)
        if d.publisher is not None and (removed or added or labels_changed):
            # Cameras no longer listed get their retained state and discovery emptied; a
            # classifier with other labels changes the emotion sensors' options.
            d.publisher.publish_discovery(list(d.cameras), classifier_labels(d.c.pipeline) or None)


def classifier_labels(pipeline: Pipeline | None) -> tuple[str, ...]:
    """The canonical labels of the pipeline's classifier (empty for detection only)."""
    if pipeline is None or pipeline.classifier is None:
        return ()
    return tuple(pipeline.classifier.labels)


__all__ = ["ReloadPlan", "Reloader", "changed_keys", "classifier_labels", "diff"]
