"""A real Mosquitto broker and a real paho subscriber for tests.

``MosquittoBroker`` runs ``mosquitto`` on a free 127.0.0.1 port with a generated config; it
can be stopped and started again *on the same port* (outage tests) or killed. Extra
config lines (password file, TLS listener options) go in ``extra_config``.

``MqttRecorder`` subscribes (to ``#`` by default) on its own paho network thread, keeps
every message as ``(topic, payload, retain)``, re-subscribes after a broker restart, and
offers :meth:`MqttRecorder.wait_for` so tests wait on a condition, never on a sleep.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

MOSQUITTO_MISSING = (
    "mosquitto is not installed: `.ci/run` installs it (apt-get install mosquitto); "
    "the MQTT tests need a real broker"
)


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or fail the test with how to install it."""
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        pytest.fail(MOSQUITTO_MISSING, pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One mosquitto process; ``start``/``stop``/``kill`` keep the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
        persistence: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.persistence = persistence
        self.port = port if port is not None else free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary = find_mosquitto()

    def _write_config(self) -> None:
        extra = self.extra_config.strip()
        lines = [f"listener {self.port} {self.host}"]
        if "allow_anonymous" not in extra:
            lines.append("allow_anonymous true")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        # Started as root, mosquitto would switch to the "mosquitto" user and then fail to
        # write its persistence file in our temporary directory.
        lines += [f"user {getpass.getuser()}", f"log_dest file {self.log_path}", "log_type all"]
        self.config_path.write_text("\n".join([*lines, extra, ""]), encoding="utf-8")

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._write_config()
        self._proc = subprocess.Popen(
            [self._binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: {err}\n{self.log()}"
                )
            if port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port}\n{self.log()}")

    def stop(self) -> None:
        """Terminate (SIGTERM) and wait; clients see their connection drop."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._close(proc)

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(5)
        self._close(proc)

    @staticmethod
    def _close(proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        """The broker's log, its last ``tail`` characters (0: all of it)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]
        except OSError:
            return ""


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class MqttRecorder:
    """A real subscriber: records every message it receives, reconnecting as needed."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: Sequence[str] = ("#",),
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        clean_session: bool = True,
        tls: dict[str, Any] | None = None,
        protocol: str = "3.1.1",
    ) -> None:
        self.messages: list[Message] = []
        #: ``(topic, MQTT 5 properties or None)`` of every message, in arrival order.
        self.properties: list[tuple[str, Any]] = []
        self._cv = threading.Condition()
        self._topics = list(topics)
        self._subscribed = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"recorder-{id(self):x}",
            protocol=MQTTProtocolVersion.MQTTv5
            if protocol == "5"
            else MQTTProtocolVersion.MQTTv311,
            clean_session=clean_session if protocol != "5" else None,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(**tls)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        with self._cv:
            self._subscribed += 1
            self._cv.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cv:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.properties.append((msg.topic, getattr(msg, "properties", None)))
            self._cv.notify_all()

    def wait_subscribed(self, timeout: float = 10.0, count: int = 1) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self._subscribed >= count, timeout):
                raise AssertionError("recorder never subscribed to the broker")

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0, what: str = ""
    ) -> list[Message]:
        """Wait until ``predicate(messages)`` holds; returns a snapshot of the messages."""
        with self._cv:
            if self._cv.wait_for(lambda: predicate(self.messages), timeout):
                return list(self.messages)
            seen = "\n".join(
                f"  {m.topic} {m.payload[:120]!r} retain={m.retain}" for m in self.messages[-40:]
            )
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; "
                f"last messages:\n{seen}"
            )

    def on(self, topic: str) -> list[Message]:
        with self._cv:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def last(self, topic: str) -> Message | None:
        found = self.on(topic)
        return found[-1] if found else None

    def clear(self) -> None:
        with self._cv:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition that has no event to wait on (e.g. another object's counter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
