"""MQTT publishing: status with last will, spooled at-least-once events, retained state,
heartbeats, Home Assistant discovery and the remote-configuration channel.

Design, and why:

* **paho-mqtt 2.x** (``CallbackAPIVersion.VERSION2``) runs its own network thread
  (``loop_start``) and connects with ``connect_async``, so neither start-up nor an absent
  broker ever blocks the daemon; paho reconnects with exponential backoff between
  ``[mqtt] reconnect_min_s`` and ``reconnect_max_s``.
* **Every event goes to the durable spool first** (:mod:`edged.mqtt.spool`), then one sender
  thread drains the spool in id order while connected, with at most ``max_inflight``
  unacknowledged events. A row is deleted only after its PUBACK (``on_publish`` with the
  mid we mapped to the row id). Nothing is ever "sent from memory", so a broker outage, a
  ``kill -9`` or a reboot all look the same: the spool still holds every unacknowledged
  event, and the next connection sends it.
* **Ordering across reconnects.** paho would re-send its own in-flight messages after a
  reconnect, interleaved with anything we publish in ``on_connect``; we instead drop paho's
  leftovers (``drop_out_messages``) at every CONNACK and let the sender restart from the
  oldest unacknowledged row. The generation bump and every event send are serialised by one
  lock, so no event of a new connection can overtake an older one still in the spool.
  Duplicates are possible (at-least-once); reordering of first deliveries is not.
* **State is "latest wins"**: the per-camera ``emotion``/``attributes`` and the discovery
  configs are remembered, not spooled, and re-published (retained) on every connection, so
  retained state is right after an outage even if the broker lost it.
* **Privacy is enforced again at this gate** (:mod:`edged.privacy`): events and attributes
  are minimised before they are encoded, per-person payloads are refused in aggregate mode,
  spooled events are re-shaped (or dropped) when the settings tighten, and spooled messages
  older than ``[privacy] spool_max_age_s`` are dropped before they could be sent.
* **Clean stop**: a clean DISCONNECT never fires the will, so :meth:`Publisher.stop`
  publishes the retained ``offline`` itself and waits (bounded) for its PUBACK.

* **The event loop never waits on the disk.** ``publish_state``, ``publish_discovery``,
  ``publish_heartbeat`` and ``publish_config_result`` are called from the daemon's asyncio
  loop; they only touch memory and queue packets with ``client.publish`` (paho's threaded
  mode only appends to its queue and pokes a non-blocking socket pair). The list of owned
  retained topics is marked dirty and written to the spool file by the sender thread, whose
  SQLite writes wait on the spool lock that ``put`` holds through an fsync.

Locking rules (deadlock freedom with paho's internal mutexes): paho calls ``on_publish``
while holding its outgoing-message mutex, so the bookkeeping condition ``_cv`` is never held
while calling into paho. ``_send_lock`` (event sends vs. new connection) and ``_state_lock``
(state publishes vs. their re-publication) may be held across ``client.publish``, and are
never taken by ``on_publish``/``on_message``/``on_disconnect``. No lock the ``publish_*``
methods take (``_state_lock``, ``_cv``) is ever held across SQLite or a network wait;
``_persist_lock`` (held across the owned-topics write) is taken only by the sender thread
and ``stop``. Order: persist → state → cv, send → cv.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged import __version__
from edged.config import MqttSettings, PrivacySettings, Settings
from edged.errors import ConfigError, PublishError, SpoolError
from edged.mqtt.spool import Spool, SpoolRow, spool_path
from edged.privacy import (
    AggregateReport,
    minimise_attributes,
    minimise_event,
    minimise_spooled_event,
    per_person_allowed,
)

log = structlog.get_logger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"

#: Spool key-value entry listing the retained topics this device owns.
_OWNED_KEY = "retained_topics"

#: Default number of spooled events handed to paho without a PUBACK yet.
DEFAULT_MAX_INFLIGHT = 20

#: A config/result that found no connection is sent on a connection made this soon after.
_RESULT_GRACE_S = 30.0

#: Home Assistant object ids allow only these characters.
_HA_ID_RE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Topics:
    """Every topic this device uses, derived once from the settings."""

    base: str
    ha_prefix: str

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    @property
    def config_set(self) -> str:
        return f"{self.base}/config/set"

    @property
    def config_result(self) -> str:
        return f"{self.base}/config/result"

    @property
    def ha_status(self) -> str:
        return f"{self.ha_prefix}/status"

    def event(self, camera_id: str) -> str:
        return f"{self.base}/{camera_id}/event"

    def emotion(self, camera_id: str) -> str:
        return f"{self.base}/{camera_id}/emotion"

    def attributes(self, camera_id: str) -> str:
        return f"{self.base}/{camera_id}/attributes"

    def aggregate(self, camera_id: str) -> str:
        """Aggregate mode's per-camera report (counts and an emotion distribution)."""
        return f"{self.base}/{camera_id}/aggregate"

    def ha_config(self, unique_id: str) -> str:
        return f"{self.ha_prefix}/sensor/{unique_id}/config"


def topics_for(settings: Settings) -> Topics:
    """``<topic_prefix>/<device id>`` and the Home Assistant discovery prefix."""
    return Topics(
        base=f"{settings.mqtt.topic_prefix}/{settings.device.id}",
        ha_prefix=settings.mqtt.homeassistant_prefix,
    )


def discovery_unique_id(device_id: str, camera_id: str) -> str:
    """Stable Home Assistant unique id (also the discovery object id) of a camera's sensor."""
    return _HA_ID_RE.sub("_", f"edged_{device_id}_{camera_id}_emotion")


def discovery_config(settings: Settings, camera_id: str) -> dict[str, Any]:
    """The Home Assistant MQTT discovery payload of one camera's emotion sensor."""
    topics = topics_for(settings)
    device_id = settings.device.id
    return {
        "name": f"{camera_id} emotion",
        "unique_id": discovery_unique_id(device_id, camera_id),
        "state_topic": topics.emotion(camera_id),
        "json_attributes_topic": topics.attributes(camera_id),
        "availability_topic": topics.status,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
        "icon": "mdi:emoticon-outline",
        "device": {
            "identifiers": [_HA_ID_RE.sub("_", f"edged_{device_id}")],
            "name": f"edged {device_id}",
            "model": "edged",
            "sw_version": __version__,
            "manufacturer": "edged",
        },
        "origin": {"name": "edged", "sw_version": __version__},
    }


def aggregate_unique_id(device_id: str, camera_id: str) -> str:
    """Home Assistant unique id of a camera's face-count sensor (aggregate mode)."""
    return _HA_ID_RE.sub("_", f"edged_{device_id}_{camera_id}_faces")


def aggregate_discovery_config(
    settings: Settings, camera_id: str, privacy: PrivacySettings
) -> dict[str, Any]:
    """Aggregate mode's Home Assistant sensor of one camera: the most faces seen at once in
    the last report, with the emotion distribution as attributes. It expires (shows
    unavailable) after three intervals without a report: none comes while fewer than
    ``min_faces`` faces are seen, and an old count must not pass for the present."""
    config = discovery_config(settings, camera_id)
    topic = topics_for(settings).aggregate(camera_id)
    config.update(
        {
            "name": f"{camera_id} faces",
            "unique_id": aggregate_unique_id(settings.device.id, camera_id),
            "state_topic": topic,
            "value_template": "{{ value_json.faces }}",
            "json_attributes_topic": topic,
            "json_attributes_template": "{{ value_json.emotions | tojson }}",
            "state_class": "measurement",
            "expire_after": max(1, round(3 * privacy.aggregate_interval_s)),
            "icon": "mdi:account-group",
        }
    )
    return config


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (``.item()``/``.tolist()``) become plain JSON values."""
    for attr in ("tolist", "item"):  # tolist first: item() fails on arrays
        convert = getattr(value, attr, None)
        if callable(convert):
            return convert()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"payload is not JSON serialisable: {exc}") from exc
    return text.encode("utf-8")


def _check_camera_id(camera_id: str) -> str:
    """Camera ids become topic levels: no empty level, no wildcard, no separator."""
    if not camera_id or any(c in camera_id for c in "/+#\0"):
        raise PublishError(f"camera id {camera_id!r} cannot be used as an MQTT topic level")
    return camera_id


class _Client(mqtt.Client):
    """paho's client, remembering why its last connection attempt failed.

    paho's network loop catches the OSError of a failed connect (a refused TCP connection,
    a server certificate the configured CA did not sign, a TLS protocol mismatch) and
    calls ``on_connect_fail`` without it, so the log said only "retrying" and /health
    "cannot connect". The reason is kept here for that callback to report.
    """

    last_connect_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            rc = super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        return rc


def connect_error_reason(exc: BaseException | None) -> str | None:
    """A one-line reason for a failed connection attempt (TLS errors say they are TLS)."""
    if exc is None:
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or repr(exc)


def _password_key(m: MqttSettings) -> object:
    """The password the client would log in with. A password file is compared by what it
    holds, not by its path: rotating the secret in place and reloading must reconnect. An
    unreadable file compares unequal to everything, so the reload goes on to build a client
    and is refused with the file's error instead of silently keeping the old login."""
    try:
        return (m.password_file, m.resolved_password())
    except ConfigError:
        return object()


def _connection_key(settings: Settings) -> tuple[Any, ...]:
    """Everything that needs a new MQTT client when it changes."""
    m = settings.mqtt
    return (
        m.host,
        m.port,
        m.username,
        _password_key(m),
        m.resolved_client_id(settings.device.id),
        m.protocol,
        m.keepalive_s,
        m.tls_ca,
        m.tls_cert,
        m.tls_key,
        m.tls_insecure,
        m.reconnect_min_s,
        m.reconnect_max_s,
        m.topic_prefix,
        m.homeassistant,
        m.homeassistant_prefix,
        settings.device.id,
    )


class Publisher:
    """The daemon's MQTT side. Build it from :class:`~edged.config.Settings`, then
    :meth:`start`; every ``publish_*`` method is thread-safe and returns without waiting
    for the network. ``publish_event`` waits for one fsync'ed SQLite commit (use
    :meth:`publish_event_async` on the loop); the others never touch SQLite, so they are
    safe to call directly on the event loop.

    ``on_config_set`` receives the raw payload of each (non-retained) ``<base>/config/set``
    message, on paho's network thread; marshal it to the event loop with
    ``loop.call_soon_threadsafe``. The subscription exists only while the hook is set.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_config_set: Callable[[bytes], None] | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        spool: Spool | None = None,
    ) -> None:
        if max_inflight < 1:
            raise PublishError("max_inflight must be >= 1")
        self.on_config_set = on_config_set
        self._settings = settings
        # The privacy settings every gate reads; changed (with the spool re-shaped) under
        # _privacy_lock, which publish_event holds from its check to its spool write, so no
        # event can be checked under the old settings and land in the spool after the
        # re-shaping for the new ones.
        self._privacy = settings.privacy
        self._privacy_lock = threading.Lock()
        # _connection_key of the settings the current client was built from (None: none
        # built yet), taken when it was built: a password file can change under it later
        self._client_key: tuple[Any, ...] | None = None
        self._topics = topics_for(settings)
        self._max_inflight = max_inflight
        self._owns_spool = spool is None
        self._spool = spool if spool is not None else self._open_spool(settings)

        self._cv = threading.Condition()
        # Held while acknowledged rows leave the spool and their counters move, and by
        # stats(): a reader never sees a drained spool with its events not yet counted.
        self._ack_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()

        # Guarded by _cv.
        self._client: mqtt.Client | None = None
        self._connected = False
        self._gen = 0
        self._inflight: dict[int, int | None] = {}  # mid -> spool id (None: not an event)
        self._early: dict[int, bool] = {}  # mid acked before we registered it -> failed?
        self._events_inflight = 0
        self._window = max_inflight
        self._acked: list[tuple[int, bool]] = []  # (spool id, rejected by broker)
        self._wake = False
        self._discovery_due = False
        self._sender_stop = False
        self._connects = 0
        self._events_published = 0
        self._events_rejected = 0
        self._last_error: str | None = None

        # Guarded by _state_lock.
        self._states: dict[str, tuple[str, bytes]] = {}
        self._sent_state: dict[str, tuple[int, str, bytes]] = {}  # camera -> (gen, emo, attrs)
        self._cameras: list[str] = []
        self._cameras_known = False  # publish_discovery called: stale topics can be told
        # Retained topics (state, discovery) this device has published content to, persisted
        # in the spool file so a camera removed while the daemon was down is cleaned up too.
        self._owned: set[str] = self._load_owned()
        # _owned changed since it was last written. Only the sender thread (and stop) write
        # it, so the publish_* methods called from the event loop never wait on SQLite.
        self._owned_dirty = False
        self._owned_save_failing = False
        self._clear_topics: set[str] = set()  # retained topics to empty when connected
        # The newest config/result that found no connection, and when (monotonic).
        self._unsent_result: tuple[bytes, float] | None = None

        self._sender: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- construction ----------------------------------------------------------------------

    def _load_owned(self) -> set[str]:
        try:
            raw = self._spool.get_value(_OWNED_KEY)
            topics = json.loads(raw) if raw else []
        except (SpoolError, ValueError) as exc:
            log.warning("retained_topics_unreadable", error=str(exc))
            return set()
        return {str(t) for t in topics} if isinstance(topics, list) else set()

    def _mark_owned_dirty(self) -> None:
        """Ask the sender thread to persist ``_owned`` (under ``_state_lock``; cheap).

        Writing it here would put an SQLite commit, which waits on the spool lock that
        ``put`` holds through an fsync, on the caller's thread: the event loop.
        """
        self._owned_dirty = True
        with self._cv:
            self._wake = True
            self._cv.notify_all()

    def _persist_owned(self) -> None:
        """Write ``_owned`` to the spool file if it changed (sender thread, or stop).

        ``_persist_lock`` keeps snapshots written in the order they were taken; the
        ``_state_lock`` is held only to take the snapshot, never across the write. A failed
        write stays dirty and is retried on the sender's next round.
        """
        with self._persist_lock:
            with self._state_lock:
                if not self._owned_dirty:
                    return
                self._owned_dirty = False
                snapshot = json.dumps(sorted(self._owned))
            try:
                self._spool.set_value(_OWNED_KEY, snapshot)
            except SpoolError as exc:  # only costs a stale retained topic after a restart
                with self._state_lock:
                    self._owned_dirty = True
                if not self._owned_save_failing:
                    log.warning("retained_topics_not_saved", error=str(exc), note="retrying")
                self._owned_save_failing = True
                return
            if self._owned_save_failing:
                log.info("retained_topics_saved")
            self._owned_save_failing = False

    def _own(self, *topics: str) -> None:
        """Record retained topics we published content to (under ``_state_lock``)."""
        if not set(topics) <= self._owned:
            self._owned.update(topics)
            self._mark_owned_dirty()

    def _reconcile(self) -> None:
        """Queue an empty retained payload for every owned topic the current settings and
        camera list no longer want (under ``_state_lock``)."""
        if not self._cameras_known:
            return
        wanted: set[str] = set()
        per_person = per_person_allowed(self._privacy)
        for camera in self._cameras:
            if per_person:
                wanted.update((self._topics.emotion(camera), self._topics.attributes(camera)))
            if self._settings.mqtt.homeassistant:
                wanted.add(self._topics.ha_config(self._discovery_uid(camera)))
        self._clear_topics = (self._clear_topics | (self._owned - wanted)) - wanted

    @staticmethod
    def _open_spool(settings: Settings) -> Spool:
        return Spool(
            spool_path(settings.device.state_dir),
            max_events=settings.mqtt.spool_max_events,
            max_bytes=settings.mqtt.spool_max_bytes,
        )

    def _build_client(self, settings: Settings) -> mqtt.Client:
        """A configured but unconnected paho client (TLS, credentials, will, callbacks).

        Everything in the settings that can be wrong on disk (password file, CA, client
        certificate and key) is read here, so building the client *is* the validation:
        :meth:`update_settings` builds first and only then touches the running connection.
        Raises :class:`~edged.errors.ConfigError` (password file) or
        :class:`~edged.errors.PublishError` (TLS material).
        """
        m = settings.mqtt
        v5 = m.protocol == "5"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.resolved_client_id(settings.device.id),
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=True,
        )
        # A bug in one of our callbacks must not kill paho's network thread (the default
        # re-raises there); paho logs it, at ERROR, through the stdlib logger instead.
        client.suppress_exceptions = True
        client.enable_logger(logging.getLogger("paho.mqtt"))
        # Our own window bounds the events in flight; paho's would only queue behind it.
        client.max_inflight_messages_set(0)
        client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)  # type: ignore[arg-type]
        if m.username:
            client.username_pw_set(m.username, m.resolved_password() or None)
        if m.tls_ca is not None or m.tls_cert is not None:
            try:
                client.tls_set(
                    ca_certs=str(m.tls_ca) if m.tls_ca is not None else None,
                    certfile=str(m.tls_cert) if m.tls_cert is not None else None,
                    keyfile=str(m.tls_key) if m.tls_key is not None else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
                if m.tls_insecure:
                    client.tls_insecure_set(True)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise PublishError(
                    f"mqtt TLS setup failed (tls_ca={m.tls_ca}, tls_cert={m.tls_cert}, "
                    f"tls_key={m.tls_key}): {exc}"
                ) from exc
        client.will_set(topics_for(settings).status, STATUS_OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background and start the spool sender; returns at once.

        Events a previous run left in the spool are first re-shaped for today's privacy
        settings (they may have been written under looser ones).
        """
        with self._lifecycle_lock:
            self._minimise_spool(self._privacy)
            self._start_locked(None)

    def _prepare_client(self, settings: Settings) -> mqtt.Client:
        """A built client with its connection parameters set, nothing started yet.

        ``connect_async`` only checks and stores host, port and keepalive (the network is
        touched by ``loop_start``), so every way these settings can be refused surfaces
        here, before a running connection is given up for them.
        """
        client = self._build_client(settings)
        m = settings.mqtt
        try:
            if m.protocol == "5":
                client.connect_async(m.host, m.port, m.keepalive_s, clean_start=True)
            else:
                client.connect_async(m.host, m.port, m.keepalive_s)
        except (OSError, ValueError) as exc:
            raise PublishError(f"mqtt connect to {m.host}:{m.port} failed: {exc}") from exc
        return client

    def _start_locked(self, client: mqtt.Client | None) -> None:
        """:meth:`start` under ``_lifecycle_lock``, with a client already prepared (and so
        validated) by :meth:`update_settings`, or ``None`` to prepare one now."""
        if self._spool.closed:
            self._spool = self._open_spool(self._settings)
            self._owns_spool = True
        with self._cv:
            if self._client is not None:
                return
        if client is None:
            self._client_key = _connection_key(self._settings)
            client = self._prepare_client(self._settings)
        m = self._settings.mqtt
        with self._cv:
            self._client = client
            self._sender_stop = False
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(
                target=self._sender_main, name="edged-mqtt-sender", daemon=True
            )
            self._sender.start()
        client.loop_start()
        log.info(
            "mqtt_starting",
            host=m.host,
            port=m.port,
            protocol=m.protocol,
            client_id=m.resolved_client_id(self._settings.device.id),
            tls=m.tls_ca is not None or m.tls_cert is not None,
            username=m.username or None,
            base_topic=self._topics.base,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what the spool can send, publish retained ``offline``, disconnect cleanly.

        Bounded by ``timeout`` seconds in total. Unsent events stay in the spool for the
        next start. Safe to call twice; the spool is closed if this publisher opened it.
        """
        with self._lifecycle_lock:
            self._stop_client(timeout, flush=True)
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._persist_owned()  # what the stopped sender had not written yet
            if self._owns_spool:
                self._spool.close()

    def _stop_client(self, timeout: float, *, flush: bool) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        reserve = min(1.0, max(timeout, 0.0) / 4)
        with self._cv:
            client = self._client
            connected = self._connected
        if client is None:
            return
        flushed_ok = True
        if flush and connected:
            flushed_ok = self._wait_flushed(deadline - reserve)
        self._stop_sender(deadline)
        with self._cv:
            connected = self._connected
        if connected:
            info = self._publish_raw(client, self._topics.status, STATUS_OFFLINE, 1, True)
            try:
                info.wait_for_publish(max(0.05, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt_offline_not_acknowledged", error=str(exc))
        try:
            self._process_acks()
        except Exception as exc:  # SpoolError: those events are simply sent again later
            log.warning("spool_ack_failed_on_stop", error=str(exc))
        with self._cv:
            self._client = None
            self._connected = False
            self._cv.notify_all()
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, name="edged-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        if stopper.is_alive():
            log.warning("mqtt_network_thread_still_running", note="left to exit on its own")
        log.info(
            "mqtt_stopped",
            spool_pending=self._spool.pending(),
            flushed=flushed_ok and self._spool.pending() == 0,
        )

    def _wait_flushed(self, until: float) -> bool:
        """Wait until the spool is empty (all acked) or the connection drops or time is up."""
        with self._cv:
            self._wake = True
            self._cv.notify_all()
            while True:
                if self._spool.pending() == 0 and not self._acked:
                    return True
                remaining = until - time.monotonic()
                if remaining <= 0 or not self._connected:
                    return False
                self._cv.wait(min(remaining, 0.2))

    def _stop_sender(self, deadline: float) -> None:
        with self._cv:
            self._sender_stop = True
            self._cv.notify_all()
        sender = self._sender
        if sender is not None:
            sender.join(max(0.1, deadline - time.monotonic()))
            if sender.is_alive():  # pragma: no cover - only if SQLite hangs
                log.warning("mqtt_sender_still_running")
            else:
                self._sender = None

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
        old = self._settings
        new_key = _connection_key(settings)
        reconnect = new_key != self._client_key
        # Validate before giving anything up; a client that is never started costs nothing.
        client = self._prepare_client(settings) if reconnect else None
        if settings.device.state_dir != old.device.state_dir:
            log.warning(
                "spool_state_dir_change_ignored",
                running=str(old.device.state_dir),
                configured=str(settings.device.state_dir),
                note="takes effect after a restart",
            )
        self._spool.set_limits(
            max_events=settings.mqtt.spool_max_events, max_bytes=settings.mqtt.spool_max_bytes
        )
        if settings.privacy != self._privacy:
            with self._privacy_lock:
                with self._state_lock:
                    self._privacy = settings.privacy
                    self._apply_privacy()
                self._minimise_spool(settings.privacy)
        if client is None:
            self._settings = settings
            return
        with self._lifecycle_lock:
            with self._cv:
                running = self._client is not None
            if running:
                self._stop_client(timeout, flush=False)
            with self._state_lock:
                self._settings = settings
                self._client_key = new_key
                self._topics = topics_for(settings)
                self._sent_state.clear()
                # Moved or disabled discovery and state: emptied on the next connection.
                self._reconcile()
            log.info("mqtt_settings_changed", reconnecting=running)
            if running:
                self._start_locked(client)

    # -- publishing API ----------------------------------------------------------------------

    def publish_event(self, camera_id: str, event: Mapping[str, Any]) -> int:
        """Spool an event (durably) for ``<base>/<camera>/event`` at QoS 1; returns its spool
        id (0 when it was too large for the spool and dropped, or when ``[privacy] mode`` is
        ``aggregate``, which publishes no per-person event). Raises
        :class:`~edged.errors.SpoolError` when the spool cannot be written.
        """
        topic = self._topics.event(_check_camera_id(camera_id))
        with self._privacy_lock:
            privacy = self._privacy
            if not per_person_allowed(privacy):
                log.debug("event_not_published", camera=camera_id, reason="privacy.mode aggregate")
                return 0
            return self._spool_put(topic, _json_bytes(minimise_event(event, privacy)))

    def publish_aggregate(self, camera_id: str, report: AggregateReport) -> int:
        """Spool an aggregate report for ``<base>/<camera>/aggregate`` at QoS 1 (not
        retained: a report describes its interval, not the present); returns its spool id.
        """
        topic = self._topics.aggregate(_check_camera_id(camera_id))
        return self._spool_put(topic, _json_bytes(report.to_json()))

    async def publish_aggregate_async(self, camera_id: str, report: AggregateReport) -> int:
        """:meth:`publish_aggregate` off the event loop, on the events' worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-spool")
        future = self._executor.submit(self.publish_aggregate, camera_id, report)
        return await asyncio.wrap_future(future)

    def _spool_put(self, topic: str, payload: bytes) -> int:
        row_id = self._spool.put(topic, payload, qos=1)
        with self._cv:
            self._wake = True
            self._cv.notify_all()
        return row_id

    def _minimise_spool(self, privacy: PrivacySettings) -> None:
        """Re-shape waiting events for ``privacy`` (dropped in aggregate mode)."""
        if self._spool.closed or self._spool.pending() == 0:
            return
        if per_person_allowed(privacy) and privacy.publish_boxes and privacy.publish_scores:
            return  # nothing an event could lose: do not read the whole spool for nothing

        def shape(row: SpoolRow) -> bytes | None:
            if not row.topic.endswith("/event"):
                return row.payload
            return minimise_spooled_event(row.payload, privacy)

        try:
            rewritten, dropped = self._spool.rewrite(shape)
        except SpoolError as exc:
            log.error("spool_not_minimised", error=str(exc))
            return
        if rewritten or dropped:
            log.info("spool_minimised", rewritten=rewritten, dropped=dropped, mode=privacy.mode)

    def _apply_privacy(self) -> None:
        """New privacy settings for the remembered state (under ``_state_lock``): gone in
        aggregate mode (its retained topics are emptied), re-shaped otherwise."""
        privacy = self._privacy
        if not per_person_allowed(privacy):
            self._states.clear()
            self._sent_state.clear()
        for camera, (emotion, attrs) in list(self._states.items()):
            try:
                shaped = _json_bytes(minimise_attributes(json.loads(attrs), privacy))
            except (ValueError, PublishError):
                continue
            self._states[camera] = (emotion, shaped)
        self._reconcile()
        self._flush_clears()
        self._send_discovery()  # the sensor of the mode now in force
        for camera in list(self._states):
            self._send_state(camera)

    async def publish_event_async(self, camera_id: str, event: Mapping[str, Any]) -> int:
        """:meth:`publish_event` off the event loop, on one worker thread so order is kept."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-spool")
        future = self._executor.submit(self.publish_event, camera_id, dict(event))
        return await asyncio.wrap_future(future)

    def publish_state(self, camera_id: str, emotion: str, attributes: Mapping[str, Any]) -> None:
        """Retained ``<base>/<camera>/emotion`` (plain string) and ``.../attributes`` (JSON).

        Latest wins: remembered and re-published on every connection; unchanged values
        are not re-sent on the same connection.
        """
        _check_camera_id(camera_id)
        privacy = self._privacy
        if not per_person_allowed(privacy):
            return
        attrs = _json_bytes(minimise_attributes(attributes, privacy))
        with self._state_lock:
            self._states[camera_id] = (emotion, attrs)
            self._clear_topics.discard(self._topics.emotion(camera_id))
            self._clear_topics.discard(self._topics.attributes(camera_id))
            self._send_state(camera_id)

    def _send_state(self, camera_id: str) -> None:
        """Publish a camera's remembered state if it differs from what this connection has."""
        with self._cv:
            gen, connected = self._gen, self._connected
        if not connected or camera_id not in self._states:
            return
        emotion, attrs = self._states[camera_id]
        sent = self._sent_state.get(camera_id)
        ok = True
        if sent is None or sent[0] != gen or sent[1] != emotion:
            ok = self._publish_if_connected(self._topics.emotion(camera_id), emotion, 1, True)
        if ok and (sent is None or sent[0] != gen or sent[2] != attrs):
            ok = self._publish_if_connected(self._topics.attributes(camera_id), attrs, 1, True)
        if ok:
            self._sent_state[camera_id] = (gen, emotion, attrs)
            self._own(self._topics.emotion(camera_id), self._topics.attributes(camera_id))

    def publish_heartbeat(self, payload: Mapping[str, Any]) -> bool:
        """``<base>/heartbeat`` at QoS 0, not retained; dropped (``False``) when offline."""
        return self._publish_if_connected(self._topics.heartbeat, _json_bytes(payload), 0, False)

    def publish_config_result(self, ok: bool, error: str | None) -> bool:
        """``<base>/config/result`` ``{ok, error, ts}`` at QoS 1, not retained.

        ``False`` while disconnected; the newest such answer is then sent on the next
        connection if that comes within ``_RESULT_GRACE_S``: a change of the MQTT settings
        reconnects while it is applied, and its sender must still get the answer.
        """
        if error is not None:  # an echoed value may hold what UTF-8 cannot encode
            error = error.encode("utf-8", "backslashreplace").decode("utf-8")
        body = _json_bytes({"ok": ok, "error": error, "ts": _utc_now_iso()})
        with self._state_lock:
            sent = self._publish_if_connected(self._topics.config_result, body, 1, False)
            self._unsent_result = None if sent else (body, time.monotonic())
        return sent

    def publish_discovery(self, cameras: list[str]) -> None:
        """Announce one Home Assistant emotion sensor per camera (retained configs).

        Call at start and after every reload with the full camera list. Every retained
        topic this device owns (remembered across restarts) that the list and settings no
        longer want is emptied: the discovery config and retained emotion/attributes of a
        removed camera, and every config when ``[mqtt] homeassistant = false``. Configs are
        re-sent on every connection and whenever ``<ha prefix>/status`` says ``online``.
        """
        with self._state_lock:
            wanted = [_check_camera_id(c) for c in dict.fromkeys(cameras)]
            for camera in self._cameras:
                if camera not in wanted:
                    self._states.pop(camera, None)
                    self._sent_state.pop(camera, None)
            self._cameras = wanted
            self._cameras_known = True
            self._reconcile()
            self._flush_clears()
            self._send_discovery()

    def _flush_clears(self) -> None:
        cleared = []
        for topic in sorted(self._clear_topics):
            if self._publish_if_connected(topic, b"", 1, True):
                cleared.append(topic)
        if cleared:
            self._clear_topics.difference_update(cleared)
            self._owned.difference_update(cleared)
            self._mark_owned_dirty()
            log.info("retained_topics_cleared", topics=cleared)

    def _discovery_uid(self, camera: str) -> str:
        """The camera's HA sensor: its emotion, or in aggregate mode its face count."""
        if per_person_allowed(self._privacy):
            return discovery_unique_id(self._settings.device.id, camera)
        return aggregate_unique_id(self._settings.device.id, camera)

    def _send_discovery(self) -> None:
        if not self._settings.mqtt.homeassistant:
            return
        per_person = per_person_allowed(self._privacy)
        for camera in self._cameras:
            topic = self._topics.ha_config(self._discovery_uid(camera))
            config = (
                discovery_config(self._settings, camera)
                if per_person
                else aggregate_discovery_config(self._settings, camera, self._privacy)
            )
            body = _json_bytes(config)
            if self._publish_if_connected(topic, body, 1, True):
                self._own(topic)

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for heartbeat, /health and /metrics."""
        with self._ack_lock, self._cv:
            return {
                "connected": self._connected,
                "spool_pending": self._spool.pending(),
                "spool_dropped": self._spool.dropped(),
                "spool_expired": self._spool.expired(),
                "events_published": self._events_published,
                "events_rejected": self._events_rejected,
                "inflight": self._events_inflight,
                "reconnects": max(self._connects - 1, 0),
                "last_error": self._last_error,
            }

    @property
    def connected(self) -> bool:
        with self._cv:
            return self._connected

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def spool(self) -> Spool:
        return self._spool

    # -- paho plumbing -----------------------------------------------------------------------

    def _publish_raw(
        self, client: mqtt.Client, topic: str, payload: str | bytes, qos: int, retain: bool
    ) -> mqtt.MQTTMessageInfo:
        """``client.publish`` plus mid registration (so ``on_publish`` can tell it apart)."""
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._register(info.mid, None)
        return info

    def _publish_if_connected(
        self, topic: str, payload: str | bytes, qos: int, retain: bool
    ) -> bool:
        with self._cv:
            client, connected = self._client, self._connected
        if client is None or not connected:
            return False
        info = self._publish_raw(client, topic, payload, qos, retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _register(self, mid: int, spool_id: int | None) -> None:
        with self._cv:
            if mid in self._early:
                rejected = self._early.pop(mid)
                if spool_id is not None:
                    self._acked.append((spool_id, rejected))
                    self._wake = True
                    self._cv.notify_all()
                return
            self._inflight[mid] = spool_id
            if spool_id is not None:
                self._events_inflight += 1

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cv:
            if client is not self._client:
                return
        if reason_code.is_failure:
            error = f"connection refused: {reason_code}"
            with self._cv:
                repeated = self._last_error == error
                self._last_error = error
            if not repeated:  # paho retries with backoff; say it once, not every attempt
                log.error("mqtt_connect_refused", reason=str(reason_code), note="retrying")
            return
        window = self._max_inflight
        receive_max = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            window = max(1, min(window, receive_max - 8))
        with self._send_lock:
            stale = client.drop_out_messages()
            with self._cv:
                self._gen += 1
                self._connected = True
                self._connects += 1
                self._inflight.clear()
                self._early.clear()
                self._events_inflight = 0
                self._window = window
                self._wake = True
                self._cv.notify_all()
        subs: list[tuple[str, int]] = []
        if self.on_config_set is not None:
            subs.append((self._topics.config_set, 1))
        if self._settings.mqtt.homeassistant:
            subs.append((self._topics.ha_status, 1))
        if subs:
            client.subscribe(subs)
        log.info(
            "mqtt_connected",
            host=self._settings.mqtt.host,
            port=self._settings.mqtt.port,
            reconnects=max(self._connects - 1, 0),
            spool_pending=self._spool.pending(),
            dropped_stale=len(stale),
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        m = self._settings.mqtt
        reason = connect_error_reason(getattr(client, "last_connect_error", None))
        error = f"cannot connect to {m.host}:{m.port}" + (f": {reason}" if reason else "")
        with self._cv:
            if client is not self._client:
                return
            first = self._last_error != error
            self._last_error = error
        if first:  # paho retries with backoff; say it when the reason changes, not every time
            log.warning(
                "mqtt_connect_failed", host=m.host, port=m.port, reason=reason, note="retrying"
            )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cv:
            if client is not self._client:
                return
            was = self._connected
            self._connected = False
            if reason_code.is_failure or reason_code.value != 0:
                self._last_error = f"disconnected: {reason_code}"
            self._cv.notify_all()
        if was:
            log.warning(
                "mqtt_disconnected",
                reason=str(reason_code),
                spool_pending=self._spool.pending(),
            )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        rejected = bool(reason_code.is_failure)
        with self._cv:
            if client is not self._client:
                return
            if mid not in self._inflight:
                self._early[mid] = rejected
                return
            spool_id = self._inflight.pop(mid)
            if spool_id is None:
                return
            self._events_inflight -= 1
            self._acked.append((spool_id, rejected))
            self._wake = True
            self._cv.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cv:
            if client is not self._client:
                return
        if msg.topic == self._topics.ha_status:
            if msg.payload.strip() == STATUS_ONLINE.encode():
                with self._cv:
                    self._discovery_due = True
                    self._wake = True
                    self._cv.notify_all()
            return
        if msg.topic == self._topics.config_set:
            if msg.retain:
                log.warning(
                    "config_set_retained_ignored",
                    topic=msg.topic,
                    note="publish config/set without the retain flag",
                )
                return
            hook = self.on_config_set
            if hook is None:
                return
            try:
                hook(bytes(msg.payload))
            except Exception as exc:  # the paho thread must survive a faulty hook
                log.exception("config_set_hook_failed", error=str(exc))

    # -- the sender thread -------------------------------------------------------------------

    def _process_acks(self) -> None:
        with self._cv:
            acked, self._acked = self._acked, []
        if not acked:
            return
        rejected = [sid for sid, bad in acked if bad]
        with self._ack_lock:
            self._spool.ack_many([sid for sid, _ in acked])
            with self._cv:
                self._events_published += len(acked) - len(rejected)
                self._events_rejected += len(rejected)
                if rejected:
                    self._last_error = f"broker rejected {len(rejected)} event(s)"
                self._cv.notify_all()
        if rejected:
            log.warning(
                "mqtt_events_rejected",
                count=len(rejected),
                note="the broker refused them (PUBACK reason code); not retried",
            )

    def _sender_main(self) -> None:
        """Drain the spool in order while connected; re-announce state on new connections."""
        my_gen = -1
        cursor = 0
        while True:
            with self._cv:
                if not self._wake and not self._sender_stop:
                    self._cv.wait(1.0)
                if self._sender_stop:
                    return
                self._wake = False
                gen, connected = self._gen, self._connected
                discovery_due, self._discovery_due = self._discovery_due, False
            try:
                self._process_acks()
                self._expire_spool()
                if connected:
                    if gen != my_gen:
                        my_gen, cursor = gen, 0
                        self._announce_connection()
                    elif discovery_due:
                        with self._state_lock:
                            self._send_discovery()
                    cursor = self._drain(my_gen, cursor)
                self._persist_owned()
            except Exception as exc:  # keep the sender alive through disk/broker trouble
                with self._cv:
                    self._last_error = f"sender: {exc}"
                log.exception("mqtt_sender_error", error=str(exc))
                time.sleep(1.0)

    def _expire_spool(self) -> None:
        """Drop spooled messages older than ``[privacy] spool_max_age_s`` (sender thread)."""
        max_age = self._privacy.spool_max_age_s
        if max_age > 0 and self._spool.pending():
            self._spool.expire(max_age)

    def _announce_connection(self) -> None:
        """First thing on a new connection: ``online``, pending clears, discovery, state."""
        self._publish_if_connected(self._topics.status, STATUS_ONLINE, 1, True)
        with self._state_lock:
            unsent, self._unsent_result = self._unsent_result, None
            if unsent is not None and time.monotonic() - unsent[1] < _RESULT_GRACE_S:
                self._publish_if_connected(self._topics.config_result, unsent[0], 1, False)
            self._flush_clears()
            self._send_discovery()
            for camera in list(self._states):
                self._send_state(camera)

    def _drain(self, my_gen: int, cursor: int) -> int:
        """Hand spooled rows after ``cursor`` to paho, within the in-flight window."""
        while True:
            with self._cv:
                if not self._connected or self._gen != my_gen or self._sender_stop:
                    return cursor
                room = self._window - self._events_inflight
                client = self._client
            if room <= 0 or client is None:
                return cursor
            self._process_acks()  # keep the spool (and pending count) current while streaming
            self._expire_spool()  # an expired row is never handed to paho
            rows = self._spool.peek(room, after=cursor)
            if not rows:
                return cursor
            for row in rows:
                with self._send_lock:
                    with self._cv:
                        if not self._connected or self._gen != my_gen:
                            return cursor
                    try:
                        info = client.publish(
                            row.topic, row.payload, qos=row.qos, retain=row.retain
                        )
                    except ValueError as exc:  # a row paho can never send: do not block on it
                        log.error("mqtt_event_unsendable", spool_id=row.id, error=str(exc))
                        with self._cv:
                            self._acked.append((row.id, True))
                        cursor = row.id
                        continue
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return cursor  # not connected after all: resent after reconnect
                    self._register(info.mid, row.id)
                cursor = row.id
