"""Retained state: per-camera emotion/attributes/status, discovery configs, and the topics
we own.

**State is "latest wins"**: the per-camera ``emotion``/``attributes``/``status`` and the
discovery configs are remembered, not spooled, and re-published (retained) on every connection, so
retained state is right after an outage even if the broker lost it; unchanged values are
not re-sent on the same connection.

**Owned topics.** Every retained topic this device published content to is remembered in
the spool file (key ``retained_topics``), so one the settings or camera list no longer
want, even after a restart, is emptied on the next connection: a removed camera's state,
status and discovery, every config when ``[mqtt] homeassistant = false``, all per-person
state in aggregate mode, and the per-entity configs (``<ha>/sensor/<id>/config``) of
releases before device-based discovery.

**The event loop never waits on the disk.** The ``set_*`` methods only touch memory and
queue packets with ``client.publish``; the owned list is marked dirty and written by the
spool sender thread (:meth:`RetainedState.persist`), the only writer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence

import structlog

from edged.config import PrivacySettings, Settings
from edged.contracts.events import StateAttributes, json_bytes
from edged.errors import SpoolError
from edged.models.catalog import CANONICAL_LABELS
from edged.mqtt.homeassistant import Discovery, discovery_configs
from edged.mqtt.link import JSON, TEXT, Link, Meta
from edged.mqtt.spool import Spool
from edged.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, check_camera_id, topics_for
from edged.privacy import minimise_attributes, per_person_allowed

log = structlog.get_logger(__name__)

#: Spool key-value entry listing the retained topics this device owns.
OWNED_KEY = "retained_topics"

#: A config/result that found no connection is sent on a connection made this soon after.
RESULT_GRACE_S = 30.0


def load_owned(spool: Spool) -> set[str]:
    """The owned retained topics a previous run saved (empty when unreadable)."""
    try:
        raw = spool.get_value(OWNED_KEY)
        topics = json.loads(raw) if raw else []
    except (SpoolError, ValueError) as exc:
        log.warning("retained_topics_unreadable", error=str(exc))
        return set()
    return {str(t) for t in topics} if isinstance(topics, list) else set()


class RetainedState:
    """What is retained on the broker, and what must be emptied there.

    Publishes through ``link`` only while connected; whatever could not be sent is sent by
    :meth:`announce` on the next connection.
    """

    def __init__(self, link: Link, settings: Settings, owned: set[str]) -> None:
        self._link = link
        # Guards every field below. Held across client.publish (never taken by a paho
        # callback), never across SQLite or a network wait.
        self._lock = threading.Lock()
        self._settings = settings
        self._topics = topics_for(settings)
        self._privacy = settings.privacy
        self._states: dict[str, tuple[str, StateAttributes]] = {}
        self._sent: dict[str, tuple[int, str, bytes]] = {}  # camera -> (gen, emotion, attrs)
        self._cameras: list[str] = []
        self._cameras_known = False  # set_cameras called: stale topics can be told
        self._labels: tuple[str, ...] = CANONICAL_LABELS  # the emotion sensor's options
        self._camera_online: dict[str, bool] = {}
        self._status_sent: dict[str, tuple[int, bool]] = {}  # camera -> (gen, online)
        self._owned = owned
        self._owned_dirty = False  # changed since last written (by persist)
        self._save_failing = False
        self._clears: set[str] = set()  # retained topics to empty when connected
        # The newest config/result that found no connection: topic, body, meta, monotonic.
        self._unsent_result: tuple[str, bytes, Meta, float] | None = None

    # -- configuration ----------------------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """New connection settings (topics may move): state is re-sent on the next
        connection, and what moved or was disabled is emptied there."""
        with self._lock:
            self._settings = settings
            self._topics = topics_for(settings)
            self._sent.clear()
            self._status_sent.clear()
            self._reconcile()

    def set_privacy(self, privacy: PrivacySettings) -> None:
        """Remembered state under new privacy settings: gone in aggregate mode (its retained
        topics are emptied), re-shaped otherwise; discovery switches sensor."""
        with self._lock:
            self._privacy = privacy
            if not per_person_allowed(privacy):
                self._states.clear()
                self._sent.clear()
            for camera, (emotion, attrs) in list(self._states.items()):
                self._states[camera] = (emotion, minimise_attributes(attrs, privacy))
            self._reconcile()
            self._flush_clears()
            self._send_discovery()
            for camera in list(self._states):
                self._send_state(camera)

    def set_cameras(self, cameras: Iterable[str], labels: Sequence[str] | None = None) -> None:
        """The full camera list (and the classifier's labels, when known): discovery for
        each, stale owned topics emptied."""
        with self._lock:
            wanted = [check_camera_id(c) for c in dict.fromkeys(cameras)]
            if labels:
                self._labels = tuple(dict.fromkeys(labels))
            for camera in self._cameras:
                if camera not in wanted:
                    self._states.pop(camera, None)
                    self._sent.pop(camera, None)
                    self._camera_online.pop(camera, None)
                    self._status_sent.pop(camera, None)
            self._cameras = wanted
            self._cameras_known = True
            self._reconcile()
            self._flush_clears()
            self._send_discovery()

    # -- publishing -------------------------------------------------------------------------

    def set_state(self, camera_id: str, emotion: str, attributes: StateAttributes) -> None:
        """Remember and (if connected and changed) publish a camera's retained state."""
        check_camera_id(camera_id)
        with self._lock:
            if not per_person_allowed(self._privacy):
                return
            attrs = minimise_attributes(attributes, self._privacy)
            self._states[camera_id] = (emotion, attrs)
            self._clears.discard(self._topics.emotion(camera_id))
            self._clears.discard(self._topics.attributes(camera_id))
            self._send_state(camera_id)

    def set_camera_status(self, camera_id: str, online: bool) -> None:
        """Remember and (if connected and changed) publish ``<base>/<camera>/status``.

        A camera the current list does not name is ignored: its topic would only be
        emptied again by the next reconciliation."""
        check_camera_id(camera_id)
        with self._lock:
            if self._cameras_known and camera_id not in self._cameras:
                log.debug("camera_status_ignored", camera=camera_id, reason="not configured")
                return
            self._camera_online[camera_id] = online
            self._clears.discard(self._topics.camera_status(camera_id))
            self._send_status(camera_id)

    def publish_result(self, body: bytes, topic: str | None = None, meta: Meta = JSON) -> bool:
        """A config/result (to ``topic``, default ``config/result``); kept for the next
        connection when there is none now."""
        target = topic or self._topics.config_result
        with self._lock:
            sent = self._link.publish(target, body, 1, False, meta)
            self._unsent_result = None if sent else (target, body, meta, time.monotonic())
        return sent

    def announce(self) -> None:
        """A new connection: the unsent result, pending clears, discovery, every state."""
        with self._lock:
            unsent, self._unsent_result = self._unsent_result, None
            if unsent is not None and time.monotonic() - unsent[3] < RESULT_GRACE_S:
                self._link.publish(unsent[0], unsent[1], 1, False, unsent[2])
            self._flush_clears()
            self._send_discovery()
            for camera in list(self._camera_online):
                self._send_status(camera)
            for camera in list(self._states):
                self._send_state(camera)

    def rediscover(self) -> None:
        """Home Assistant came online: its discovery configs again."""
        with self._lock:
            self._send_discovery()

    def persist(self, spool: Spool) -> None:
        """Write the owned topics to the spool file if they changed (sender thread only).

        The lock is held only to take the snapshot, never across the write. A failed write
        stays dirty and is retried on the sender's next round.
        """
        with self._lock:
            if not self._owned_dirty:
                return
            self._owned_dirty = False
            snapshot = json.dumps(sorted(self._owned))
        try:
            spool.set_value(OWNED_KEY, snapshot)
        except SpoolError as exc:  # only costs a stale retained topic after a restart
            with self._lock:
                self._owned_dirty = True
            if not self._save_failing:
                log.warning("retained_topics_not_saved", error=str(exc), note="retrying")
            self._save_failing = True
            return
        if self._save_failing:
            log.info("retained_topics_saved")
        self._save_failing = False

    # -- internals (under _lock) ------------------------------------------------------------

    def _own(self, *topics: str) -> None:
        if not set(topics) <= self._owned:
            self._owned.update(topics)
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        """Ask the sender thread to persist the owned topics: writing here would put an
        SQLite commit (waiting on an fsync) on the caller's thread, the event loop."""
        self._owned_dirty = True
        self._link.poke()

    def _reconcile(self) -> None:
        """Queue an empty payload for every owned topic no longer wanted."""
        if not self._cameras_known:
            return
        wanted: set[str] = set()
        per_person = per_person_allowed(self._privacy)
        for camera in self._cameras:
            if per_person:
                wanted.update((self._topics.emotion(camera), self._topics.attributes(camera)))
            if camera in self._camera_online:
                wanted.add(self._topics.camera_status(camera))
        if self._settings.mqtt.homeassistant:
            wanted.update(d.topic for d in self._discovery())
        self._clears = (self._clears | (self._owned - wanted)) - wanted

    def _flush_clears(self) -> None:
        cleared = [t for t in sorted(self._clears) if self._link.publish(t, b"", 1, True)]
        if cleared:
            self._clears.difference_update(cleared)
            self._owned.difference_update(cleared)
            self._mark_dirty()
            log.info("retained_topics_cleared", topics=cleared)

    def _discovery(self) -> list[Discovery]:
        return discovery_configs(self._settings, self._privacy, self._cameras, self._labels)

    def _send_discovery(self) -> None:
        if not self._settings.mqtt.homeassistant or not self._cameras_known:
            return
        for item in self._discovery():
            if self._link.publish(item.topic, json_bytes(item.config), 1, True, JSON):
                self._own(item.topic)

    def _send_status(self, camera_id: str) -> None:
        """Publish a camera's status if it differs from what this connection has."""
        with self._link.cv:
            gen, connected = self._link.gen, self._link.connected_locked
        online = self._camera_online.get(camera_id)
        if not connected or online is None or self._status_sent.get(camera_id) == (gen, online):
            return
        topic = self._topics.camera_status(camera_id)
        payload = STATUS_ONLINE if online else STATUS_OFFLINE
        if self._link.publish(topic, payload, 1, True, TEXT):
            self._status_sent[camera_id] = (gen, online)
            self._own(topic)

    def _send_state(self, camera_id: str) -> None:
        """Publish a camera's remembered state if it differs from what this connection has."""
        with self._link.cv:
            gen, connected = self._link.gen, self._link.connected_locked
        if not connected or camera_id not in self._states:
            return
        emotion, attributes = self._states[camera_id]
        attrs = json_bytes(attributes.to_json())
        sent = self._sent.get(camera_id)
        emotion_topic, attrs_topic = (
            self._topics.emotion(camera_id),
            self._topics.attributes(camera_id),
        )
        ok = True
        if sent is None or sent[0] != gen or sent[1] != emotion:
            ok = self._link.publish(emotion_topic, emotion, 1, True, TEXT)
        if ok and (sent is None or sent[0] != gen or sent[2] != attrs):
            ok = self._link.publish(attrs_topic, attrs, 1, True, JSON)
        if ok:
            self._sent[camera_id] = (gen, emotion, attrs)
            self._own(emotion_topic, attrs_topic)
