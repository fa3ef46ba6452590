"""The MQTT connection: one paho client at a time, its state, and the mid → ack registry.

paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``) runs its own network thread
(``loop_start``) and connects with ``connect_async``, so neither start-up nor an absent
broker ever blocks the daemon; paho reconnects with exponential backoff between
``[mqtt] reconnect_min_s`` and ``reconnect_max_s``.

**Ordering across reconnects.** paho would re-send its own in-flight messages after a
reconnect, interleaved with anything published on the new connection; :class:`Link` drops
them (``drop_out_messages``) at every CONNACK and bumps the connection generation, so the
spool sender restarts from the oldest unacknowledged row. The generation bump and every
event send are serialised by ``_send_lock``, so no event of a new connection can overtake
an older one still in the spool.

Locking (deadlock freedom with paho's internal mutexes): paho calls ``on_publish`` while
holding its outgoing-message mutex, so ``cv`` is never held while calling into paho.
``_send_lock`` is held across ``client.publish`` and never taken by a paho callback other
than ``on_connect`` (which paho calls without its message mutex). Order: send → cv.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttSettings, Settings
from edged.errors import ConfigError, PublishError
from edged.mqtt.spool import SpoolRow
from edged.mqtt.topics import STATUS_OFFLINE, topics_for

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Meta:
    """MQTT 5 properties of one message; ignored on a 3.1.1 connection, which has none.

    ``content_type`` tells a generic subscriber how to read the payload, ``expiry_s`` lets
    the broker drop a message nobody read in time (a heartbeat is stale after two
    intervals), ``correlation_data`` ties an answer to its request.
    """

    content_type: str | None = None
    expiry_s: int | None = None
    correlation_data: bytes | None = None

    def properties(self, packet: int = PacketTypes.PUBLISH) -> Properties | None:
        """paho's properties for this meta (``None`` when there is nothing to say)."""
        if self == NO_META:
            return None
        props = Properties(packet)  # type: ignore[no-untyped-call]
        if self.content_type is not None:
            props.ContentType = self.content_type
        if self.expiry_s is not None:
            props.MessageExpiryInterval = max(1, int(self.expiry_s))
        if self.correlation_data is not None:
            props.CorrelationData = self.correlation_data
        return props


NO_META = Meta()
JSON = Meta(content_type="application/json")
TEXT = Meta(content_type="text/plain")


def is_v5(client: mqtt.Client) -> bool:
    return client.protocol == MQTTProtocolVersion.MQTTv5


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


def connection_key(settings: Settings) -> tuple[object, ...]:
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


def _set_tls(client: mqtt.Client, m: MqttSettings) -> None:
    if m.tls_ca is None and m.tls_cert is None:
        return
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


def build_client(settings: Settings, link: Link) -> mqtt.Client:
    """A configured client with its connection parameters set, nothing started yet.

    Everything in the settings that can be wrong on disk (password file, CA, client
    certificate and key) is read here, and ``connect_async`` only checks and stores host,
    port and keepalive (the network is touched by ``loop_start``), so building the client
    *is* the validation: a reload builds first and only then touches the running
    connection. Raises :class:`~edged.errors.ConfigError` (password file) or
    :class:`~edged.errors.PublishError` (TLS material, connection parameters).
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
    _set_tls(client, m)
    will = TEXT.properties(PacketTypes.WILLMESSAGE) if v5 else None
    client.will_set(
        topics_for(settings).status, STATUS_OFFLINE, qos=1, retain=True, properties=will
    )
    link.bind(client)
    try:
        if v5:
            client.connect_async(m.host, m.port, m.keepalive_s, clean_start=True)
        else:
            client.connect_async(m.host, m.port, m.keepalive_s)
    except (OSError, ValueError) as exc:
        raise PublishError(f"mqtt connect to {m.host}:{m.port} failed: {exc}") from exc
    return client


class Link:
    """The current paho client and what is known about its connection.

    ``cv`` guards every field and is notified on each change (connection up or down, an
    acknowledged event), so the spool sender can wait on it; ``wake`` is its "work to do"
    flag. ``on_connected(client, dropped)`` runs on paho's thread after each CONNACK
    (subscriptions, logging); ``on_message`` receives every inbound message.
    """

    def __init__(
        self,
        max_inflight: int,
        *,
        on_connected: Callable[[mqtt.Client, int], None],
        on_message: Callable[[mqtt.MQTTMessage], None],
        pending: Callable[[], int],
    ) -> None:
        self._max_inflight = max_inflight
        self._on_connected = on_connected
        self._on_message_hook = on_message
        self._pending = pending
        # Guards the fields below; notified on every change. Never held calling into paho.
        self.cv = threading.Condition()
        # Serialises event sends against a new connection's generation bump.
        self._send_lock = threading.Lock()
        self.wake = False
        self._client: mqtt.Client | None = None
        self._address = ("", 0)
        self._connected = False
        self.gen = 0
        self._connects = 0
        self._inflight: dict[int, int | None] = {}  # mid -> spool id (None: not an event)
        self._early: dict[int, bool] = {}  # mid acked before we registered it -> failed?
        self.events_inflight = 0
        self.window = max_inflight
        self.acked: list[tuple[int, bool]] = []  # (spool id, rejected by broker)
        self.last_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self, client: mqtt.Client) -> None:
        """Route a new client's callbacks here (it is not current until :meth:`attach`)."""
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    def attach(self, client: mqtt.Client, host: str, port: int) -> None:
        with self.cv:
            self._client = client
            self._address = (host, port)

    def detach(self) -> None:
        """Forget the current client: its callbacks are ignored from now on."""
        with self.cv:
            self._client = None
            self._connected = False
            self.cv.notify_all()

    def shut_down(self, client: mqtt.Client, deadline: float) -> None:
        """Detach ``client``, disconnect it cleanly and stop its network thread (waiting
        until ``deadline`` at most: a stuck thread is left to exit on its own)."""
        self.detach()
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, name="edged-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        if stopper.is_alive():
            log.warning("mqtt_network_thread_still_running", note="left to exit on its own")

    def poke(self) -> None:
        """Tell the sender there is work (a new spool row, a dirty owned-topic list)."""
        with self.cv:
            self.wake = True
            self.cv.notify_all()

    @property
    def client(self) -> mqtt.Client | None:
        with self.cv:
            return self._client

    @property
    def connected(self) -> bool:
        with self.cv:
            return self._connected

    @property
    def connected_locked(self) -> bool:
        """:attr:`connected` for a caller already holding ``cv``."""
        return self._connected

    @property
    def reconnects(self) -> int:
        return max(self._connects - 1, 0)

    # -- publishing -----------------------------------------------------------------------

    def publish_on(
        self,
        client: mqtt.Client,
        topic: str,
        payload: str | bytes,
        qos: int,
        retain: bool,
        meta: Meta = NO_META,
    ) -> mqtt.MQTTMessageInfo:
        """``client.publish`` plus mid registration (so ``on_publish`` can tell it apart);
        ``meta`` becomes MQTT 5 properties on a v5 connection and is dropped on 3.1.1."""
        props = meta.properties() if is_v5(client) else None
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._register(info.mid, None)
        return info

    def publish(
        self, topic: str, payload: str | bytes, qos: int, retain: bool, meta: Meta = NO_META
    ) -> bool:
        """Publish (not an event) if connected; ``False`` when not handed to paho."""
        with self.cv:
            client, connected = self._client, self._connected
        if client is None or not connected:
            return False
        info = self.publish_on(client, topic, payload, qos, retain, meta)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def say_offline(self, client: mqtt.Client, status_topic: str, deadline: float) -> None:
        """Publish the retained ``offline`` a clean DISCONNECT would not (the will fires
        only on an unclean one) and wait for its PUBACK until ``deadline`` at most."""
        if not self.connected:
            return
        info = self.publish_on(client, status_topic, STATUS_OFFLINE, 1, True, TEXT)
        try:
            info.wait_for_publish(max(0.05, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:
            log.warning("mqtt_offline_not_acknowledged", error=str(exc))

    def room(self, gen: int) -> tuple[mqtt.Client, int] | None:
        """The client and free window on connection ``gen``; ``None`` once it is gone."""
        with self.cv:
            if not self._connected or self.gen != gen or self._client is None:
                return None
            return self._client, self.window - self.events_inflight

    def send_row(self, client: mqtt.Client, gen: int, row: SpoolRow) -> bool:
        """Hand one spooled event to paho on connection ``gen``; ``False``: stop draining
        (the connection went away: the row is sent again after the reconnect)."""
        with self._send_lock:
            with self.cv:
                if not self._connected or self.gen != gen:
                    return False
            try:
                # Every spooled row (event, aggregate report) is JSON.
                props = JSON.properties() if is_v5(client) else None
                info = client.publish(
                    row.topic, row.payload, qos=row.qos, retain=row.retain, properties=props
                )
            except ValueError as exc:  # a row paho can never send: do not block on it
                log.error("mqtt_event_unsendable", spool_id=row.id, error=str(exc))
                with self.cv:
                    self.acked.append((row.id, True))
                return True
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            self._register(info.mid, row.id)
        return True

    def take_acks(self) -> list[tuple[int, bool]]:
        with self.cv:
            acked, self.acked = self.acked, []
        return acked

    def _register(self, mid: int, spool_id: int | None) -> None:
        with self.cv:
            if mid in self._early:
                rejected = self._early.pop(mid)
                if spool_id is not None:
                    self.acked.append((spool_id, rejected))
                    self.wake = True
                    self.cv.notify_all()
                return
            self._inflight[mid] = spool_id
            if spool_id is not None:
                self.events_inflight += 1

    def _note_error_locked(self, error: str) -> bool:
        """Record ``error`` (``cv`` held); ``True`` when it differs from the last one, so a
        retrying failure is logged when its reason changes, not on every attempt."""
        changed = self.last_error != error
        self.last_error = error
        return changed

    # -- paho callbacks (paho's network thread) --------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cv:
            if client is not self._client:
                return
            changed = reason_code.is_failure and self._note_error_locked(
                f"connection refused: {reason_code}"
            )
        if reason_code.is_failure:
            if changed:  # paho retries with backoff; say it once, not every attempt
                log.error("mqtt_connect_refused", reason=str(reason_code), note="retrying")
            return
        window = self._max_inflight
        receive_max = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            window = max(1, min(window, receive_max - 8))
        with self._send_lock:
            stale = client.drop_out_messages()
            with self.cv:
                self.gen += 1
                self._connected = True
                self._connects += 1
                self._inflight.clear()
                self._early.clear()
                self.events_inflight = 0
                self.window = window
                self.wake = True
                self.cv.notify_all()
        self._on_connected(client, len(stale))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        reason = connect_error_reason(getattr(client, "last_connect_error", None))
        with self.cv:
            if client is not self._client:
                return
            host, port = self._address
            error = f"cannot connect to {host}:{port}" + (f": {reason}" if reason else "")
            changed = self._note_error_locked(error)
        if changed:  # paho retries with backoff; say it when the reason changes, not every time
            log.warning("mqtt_connect_failed", host=host, port=port, reason=reason, note="retrying")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cv:
            if client is not self._client:
                return
            was = self._connected
            self._connected = False
            if reason_code.is_failure or reason_code.value != 0:
                self.last_error = f"disconnected: {reason_code}"
            self.cv.notify_all()
        if was:
            log.warning("mqtt_disconnected", reason=str(reason_code), spool_pending=self._pending())

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        rejected = bool(reason_code.is_failure)
        with self.cv:
            if client is not self._client:
                return
            if mid not in self._inflight:
                self._early[mid] = rejected
                return
            spool_id = self._inflight.pop(mid)
            if spool_id is None:
                return
            self.events_inflight -= 1
            self.acked.append((spool_id, rejected))
            self.wake = True
            self.cv.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cv:
            if client is not self._client:
                return
        self._on_message_hook(msg)
