"""MQTT publishing: the facade the daemon uses, composing one module per job.

* :mod:`edged.mqtt.topics` — every topic, from the settings;
* :mod:`edged.mqtt.link` — the paho client (TLS, auth, 3.1.1/5, will), its connection
  state and the mid → ack registry;
* :mod:`edged.mqtt.sender` — the spool sender thread (ordered, acked, expiring);
* :mod:`edged.mqtt.retained` — retained state and the owned-topic bookkeeping;
* :mod:`edged.mqtt.homeassistant` — discovery configs and unique ids;
* :mod:`edged.mqtt.router` — inbound ``config/set`` and Home Assistant birth messages;
* :mod:`edged.mqtt.gate` — the way into the spool: privacy gate and writer thread.

**MQTT 5** (``[mqtt] protocol = "5"``): every payload carries its content type
(``application/json`` or ``text/plain``), heartbeats a message expiry of two intervals, and
a ``config/result`` goes to the request's response topic with its correlation data when
the request gave them. Under 3.1.1 none of these exist and nothing else changes.

**Privacy is enforced again at the gate** (:mod:`edged.mqtt.gate`, :mod:`edged.privacy`):
events and attributes are minimised before they are encoded, per-person payloads are
refused in aggregate mode, spooled events are re-shaped (or dropped) when the settings
tighten.

**Clean stop**: a clean DISCONNECT never fires the will, so :meth:`Publisher.stop`
publishes the retained ``offline`` itself and waits (bounded) for its PUBACK.

Lock order, over all modules: lifecycle → privacy → retained → link send → link cv.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import paho.mqtt.client as mqtt
import structlog

from edged.config import Settings
from edged.contracts.events import (
    AggregateReport,
    ConfigResult,
    EmotionEvent,
    StateAttributes,
    json_bytes,
)
from edged.contracts.publisher import PublisherStatus
from edged.errors import PublishError
from edged.mqtt.gate import SpoolGate
from edged.mqtt.homeassistant import aggregate_unique_id, discovery_unique_id
from edged.mqtt.link import (
    TEXT,
    Link,
    Meta,
    build_client,
    connect_error_reason,
    connection_key,
)
from edged.mqtt.retained import RetainedState, load_owned
from edged.mqtt.router import ConfigRequest, Router, reply_topic, sendable_result
from edged.mqtt.sender import Sender
from edged.mqtt.spool import Spool
from edged.mqtt.topics import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Topics,
    check_camera_id,
    topics_for,
)

log = structlog.get_logger(__name__)

#: Default number of spooled events handed to paho without a PUBACK yet.
DEFAULT_MAX_INFLIGHT = 20


class JsonPayload(Protocol):
    """A typed payload (``edged.contracts``): its ``to_json()`` is its wire form."""

    def to_json(self) -> Mapping[str, object]: ...


def _legacy_hook(hook: Callable[[bytes], None]) -> Callable[[ConfigRequest], None]:
    """A ``config/set`` hook that takes the raw payload only (the pre-MQTT 5 signature)."""
    return lambda request: hook(request.payload)


def _log_starting(settings: Settings, topics: Topics) -> None:
    m = settings.mqtt
    log.info(
        "mqtt_starting",
        host=m.host,
        port=m.port,
        protocol=m.protocol,
        client_id=m.resolved_client_id(settings.device.id),
        tls=m.tls_ca is not None or m.tls_cert is not None,
        username=m.username or None,
        base_topic=topics.base,
    )


class Publisher:
    """The daemon's MQTT side. Build it from :class:`~edged.config.Settings`, then
    :meth:`start`; every ``publish_*`` method is thread-safe and returns without waiting
    for the network. ``publish_event`` waits for one fsync'ed SQLite commit (use
    :meth:`publish_event_async` on the loop); the others never touch SQLite, so they are
    safe to call directly on the event loop.

    ``on_config_request`` receives each (non-retained) ``<base>/config/set`` message as a
    :class:`~edged.mqtt.router.ConfigRequest` (payload, request id, MQTT 5 response topic
    and correlation data), on paho's network thread; marshal it to the event loop with
    ``loop.call_soon_threadsafe``. ``on_config_set`` is the older form that receives the
    raw payload only. The subscription exists only while a hook is set. ``on_online`` is
    called on the sender thread each time a new connection has said ``online`` (marshal it
    too).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_config_set: Callable[[bytes], None] | None = None,
        on_config_request: Callable[[ConfigRequest], None] | None = None,
        on_online: Callable[[], None] | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        spool: Spool | None = None,
    ) -> None:
        if max_inflight < 1:
            raise PublishError("max_inflight must be >= 1")
        self._settings = settings
        self._topics = topics_for(settings)
        self._on_online = on_online
        # Serialises start, stop and client replacement.
        self._lifecycle_lock = threading.Lock()
        # connection_key of the settings the current client was built from (None: none yet)
        self._client_key: tuple[object, ...] | None = None
        self._gate = SpoolGate(settings, spool, on_put=lambda: self._link.poke())
        if on_config_request is None and on_config_set is not None:
            on_config_request = _legacy_hook(on_config_set)
        self._router = Router(on_config_request, self._on_homeassistant_online)
        self._link = Link(
            max_inflight,
            on_connected=self._on_connected,
            on_message=lambda msg: self._router.dispatch(self._topics, msg),
            pending=lambda: self._gate.spool.pending(),
        )
        self._retained = RetainedState(self._link, settings, load_owned(self._gate.spool))
        self._sender = Sender(
            self._link,
            self._gate.spool,
            announce=self._announce,
            rediscover=self._retained.rediscover,
            housekeeping=lambda: self._retained.persist(self._gate.spool),
            max_age_s=lambda: self._gate.privacy.spool_max_age_s,
        )

    @property
    def on_config_request(self) -> Callable[[ConfigRequest], None] | None:
        return self._router.on_config_set

    @on_config_request.setter
    def on_config_request(self, hook: Callable[[ConfigRequest], None] | None) -> None:
        self._router.on_config_set = hook

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background and start the spool sender; returns at once.

        Events a previous run left in the spool are first re-shaped for today's privacy
        settings (they may have been written under looser ones).
        """
        with self._lifecycle_lock:
            self._gate.minimise()
            self._start_locked(None)

    def _start_locked(self, client: mqtt.Client | None) -> None:
        """:meth:`start` under ``_lifecycle_lock``, with a client already built (and so
        validated) by :meth:`update_settings`, or ``None`` to build one now."""
        if self._gate.reopen():
            self._sender.spool = self._gate.spool
        if self._link.client is not None:
            return
        if client is None:
            self._client_key = connection_key(self._settings)
            client = build_client(self._settings, self._link)
        self._link.attach(client, self._settings.mqtt.host, self._settings.mqtt.port)
        self._sender.start()
        client.loop_start()
        _log_starting(self._settings, self._topics)

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what the spool can send, publish retained ``offline``, disconnect cleanly.

        Bounded by ``timeout`` seconds in total. Unsent events stay in the spool for the
        next start. Safe to call twice; the spool is closed if this publisher opened it.
        """
        with self._lifecycle_lock:
            sender_exited = self._stop_client(timeout, flush=True)
            self._gate.shut_down()
            if sender_exited:  # the sender is the owned topics' only writer while it runs
                self._retained.persist(self._gate.spool)
            self._gate.close()

    def _stop_client(self, timeout: float, *, flush: bool) -> bool:
        """Stop the sender and the client; ``True`` when the sender thread has exited."""
        deadline = time.monotonic() + max(timeout, 0.0)
        reserve = min(1.0, max(timeout, 0.0) / 4)
        client = self._link.client
        if client is None:
            return self._sender.stop(deadline)
        flushed_ok = True
        if flush and self._link.connected:
            flushed_ok = self._sender.wait_flushed(deadline - reserve)
        exited = self._sender.stop(deadline)
        self._link.say_offline(client, self._topics.status, deadline)
        try:
            self._sender.process_acks()
        except Exception as exc:  # SpoolError: those events are simply sent again later
            log.warning("spool_ack_failed_on_stop", error=str(exc))
        self._link.shut_down(client, deadline)
        pending = self._gate.spool.pending()
        log.info("mqtt_stopped", spool_pending=pending, flushed=flushed_ok and pending == 0)
        return exited

    def update_settings(self, settings: Settings, timeout: float = 2.0) -> None:
        """Apply a reloaded config. Spool bounds change in place; a change to anything the
        connection depends on (broker, credentials, TLS, ids, prefixes) replaces the client:
        ``offline`` on the old status topic, then a fresh connection. The spool is kept
        (its file stays where it was opened: a new ``state_dir`` needs a restart).
        Blocks for at most ``timeout`` seconds; call it from an executor.

        All-or-nothing: the new client is built and its connection parameters set first
        (reading the password file and the TLS files). If that raises
        (:class:`~edged.errors.ConfigError`, :class:`~edged.errors.PublishError`), the
        running client, settings and spool bounds are left exactly as they were and the
        exception propagates, so the daemon can refuse the reload and keep publishing.
        """
        new_key = connection_key(settings)
        # Validate before giving anything up; a client that is never started costs nothing.
        client = build_client(settings, self._link) if new_key != self._client_key else None
        self._gate.update(settings, on_privacy=self._retained.set_privacy)
        if client is None:
            self._settings = settings
            return
        self._replace_client(settings, new_key, client, timeout)

    def _replace_client(
        self, settings: Settings, key: tuple[object, ...], client: mqtt.Client, timeout: float
    ) -> None:
        with self._lifecycle_lock:
            running = self._link.client is not None
            if running:
                self._stop_client(timeout, flush=False)
            self._settings = settings
            self._client_key = key
            self._topics = topics_for(settings)
            # Moved or disabled discovery and state: emptied on the next connection.
            self._retained.configure(settings)
            log.info("mqtt_settings_changed", reconnecting=running)
            if running:
                self._start_locked(client)

    # -- publishing API ----------------------------------------------------------------------

    def publish_event(self, camera_id: str, event: EmotionEvent) -> int:
        """Spool an event (durably) for ``<base>/<camera>/event`` at QoS 1; returns its spool
        id (0 when it was too large for the spool and dropped, or when ``[privacy] mode`` is
        ``aggregate``, which publishes no per-person event). Raises
        :class:`~edged.errors.SpoolError` when the spool cannot be written.
        """
        topic = self._topics.event(check_camera_id(camera_id))
        return self._gate.put_event(topic, camera_id, event)

    async def publish_event_async(self, camera_id: str, event: EmotionEvent) -> int:
        """:meth:`publish_event` off the event loop, on one worker thread so order is kept."""
        return await asyncio.wrap_future(self._gate.submit(self.publish_event, camera_id, event))

    def publish_aggregate(self, camera_id: str, report: AggregateReport) -> int:
        """Spool an aggregate report for ``<base>/<camera>/aggregate`` at QoS 1 (not
        retained: a report describes its interval, not the present); returns its spool id.
        """
        topic = self._topics.aggregate(check_camera_id(camera_id))
        return self._gate.put(topic, json_bytes(report.to_json()))

    async def publish_aggregate_async(self, camera_id: str, report: AggregateReport) -> int:
        """:meth:`publish_aggregate` off the event loop, on the events' worker thread."""
        future = self._gate.submit(self.publish_aggregate, camera_id, report)
        return await asyncio.wrap_future(future)

    def publish_state(self, camera_id: str, emotion: str, attributes: StateAttributes) -> None:
        """Retained ``<base>/<camera>/emotion`` (plain string) and ``.../attributes`` (JSON).

        Latest wins: remembered and re-published on every connection; unchanged values
        are not re-sent on the same connection. Nothing in aggregate mode.
        """
        self._retained.set_state(camera_id, emotion, attributes)

    def publish_camera_status(self, camera_id: str, online: bool) -> None:
        """Retained ``<base>/<camera>/status`` ``online``/``offline``: is the camera producing
        frames (Home Assistant's per-camera availability). Remembered, re-sent on every
        connection, emptied when the camera leaves the list given to
        :meth:`publish_discovery`."""
        self._retained.set_camera_status(camera_id, online)

    def publish_heartbeat(self, payload: Mapping[str, object] | JsonPayload) -> bool:
        """``<base>/heartbeat`` at QoS 0, not retained; dropped (``False``) when offline.
        Under MQTT 5 it expires after two intervals: a late one describes the past."""
        body = payload if isinstance(payload, Mapping) else payload.to_json()
        expiry = Meta("application/json", expiry_s=round(2 * self._settings.mqtt.heartbeat_s))
        return self._link.publish(self._topics.heartbeat, json_bytes(body), 0, False, expiry)

    def publish_config_result(
        self,
        result: ConfigResult | bool,
        error: str | None = None,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> bool:
        """Answer a ``config/set`` at QoS 1, not retained: on ``<base>/config/result``, or
        under MQTT 5 on the request's ``response_topic`` (with its ``correlation_data``)
        when it gave one. ``result`` is a :class:`~edged.contracts.events.ConfigResult`
        (its ``id`` echoes the request's), or the older ``(ok, error)`` pair.

        ``False`` while disconnected; the newest such answer is then sent on the next
        connection if that comes soon (``RESULT_GRACE_S``): a change of the MQTT settings
        reconnects while it is applied, and its sender must still get the answer.
        """
        body = json_bytes(sendable_result(result, error).to_json())
        v5 = self._settings.mqtt.protocol == "5"
        topic = reply_topic(response_topic) if v5 else None
        meta = Meta("application/json", correlation_data=correlation_data if v5 else None)
        return self._retained.publish_result(body, topic, meta)

    def publish_discovery(
        self, cameras: Sequence[str], labels: Sequence[str] | None = None
    ) -> None:
        """Announce Home Assistant devices: edged itself and one per camera (retained).

        ``labels`` are the running classifier's canonical labels (the emotion sensor's
        options, with ``none``); without them the last ones given, at first the
        contract's eight. Call at start and after every reload with the full camera list.
        Every retained topic this device owns (remembered across restarts) that the list
        and settings no longer want is emptied: a removed camera's device config, status
        and retained emotion/attributes, every config when ``[mqtt] homeassistant =
        false``, and per-entity configs of earlier releases. Configs are re-sent on every
        connection and whenever ``<ha prefix>/status`` says ``online``.
        """
        self._retained.set_cameras(cameras, labels)

    # -- connection events -------------------------------------------------------------------

    def _on_connected(self, client: mqtt.Client, dropped_stale: int) -> None:
        """After each CONNACK (paho's thread): subscribe, and say so."""
        subs = self._router.subscriptions(self._topics, self._settings.mqtt.homeassistant)
        if subs:
            client.subscribe(subs)
        log.info(
            "mqtt_connected",
            host=self._settings.mqtt.host,
            port=self._settings.mqtt.port,
            reconnects=self._link.reconnects,
            spool_pending=self._gate.spool.pending(),
            dropped_stale=dropped_stale,
        )

    def _on_homeassistant_online(self) -> None:
        self._sender.request_discovery()

    def _announce(self) -> None:
        """First thing on a new connection (sender thread): ``online``, then retained state,
        then the ``on_online`` hook (the daemon's heartbeat follows at once)."""
        self._link.publish(self._topics.status, STATUS_ONLINE, 1, True, TEXT)
        self._retained.announce()
        if self._on_online is not None:
            self._on_online()

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> PublisherStatus:
        """Counters for heartbeat, /health and /metrics."""
        with self._sender.ack_lock, self._link.cv:
            return PublisherStatus(
                connected=self._link.connected_locked,
                spool_pending=self._gate.spool.pending(),
                spool_dropped=self._gate.spool.dropped(),
                spool_expired=self._gate.spool.expired(),
                events_published=self._sender.events_published,
                events_rejected=self._sender.events_rejected,
                inflight=self._link.events_inflight,
                reconnects=self._link.reconnects,
                last_error=self._link.last_error,
            )

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def spool(self) -> Spool:
        return self._gate.spool


__all__ = [
    "DEFAULT_MAX_INFLIGHT",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "ConfigRequest",
    "JsonPayload",
    "Publisher",
    "Topics",
    "aggregate_unique_id",
    "connect_error_reason",
    "discovery_unique_id",
    "topics_for",
]
