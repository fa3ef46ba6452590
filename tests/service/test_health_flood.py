"""The health endpoint under abuse: idle connection floods, garbage, huge headers.

The flood test runs a real ``edged run`` with a low descriptor limit (RLIMIT_NOFILE set in
the child before exec, so the test stays cheap) and opens more idle connections than that
limit allows; the daemon must keep publishing events and answering /health. Before the
connection guard, ~1,000 idle connections took every descriptor of a daemon with the
default limit of 1,024: /health stopped answering, a camera could not reopen its file and
asyncio logged a traceback for every failed accept().
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.config import HealthSettings
from edged.service.health import HealthServer, Metrics
from tests.mqtt_helpers import MosquittoBroker, MqttRecorder, free_port, wait_until
from tests.service.test_daemon import (
    FPS,
    DaemonProcess,
    Scene,
    daemons,
    events,
    scene,
    write_config,
)

__all__ = ["daemons", "scene"]  # fixtures of test_daemon, used here too

REPO = Path(__file__).resolve().parents[2]
#: The daemon's descriptor limit in the flood test, and the idle connections opened: more.
NOFILE = 160
FLOOD = NOFILE + 90


def health(port: int, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            return r.status, dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_the_unit_raises_the_descriptor_limit() -> None:
    unit = (REPO / "systemd/edged.service").read_text(encoding="utf-8").splitlines()
    limit = [ln for ln in unit if ln.startswith("LimitNOFILE=")]
    assert limit and int(limit[0].split("=", 1)[1]) >= 4096, limit


def test_an_idle_connection_flood_beyond_the_descriptor_limit_stops_neither_health_nor_events(
    tmp_path: Path, mqtt_broker: MosquittoBroker, models_dir: Path, scene: Scene, daemons: list
) -> None:
    rec = MqttRecorder(mqtt_broker.host, mqtt_broker.port)
    rec.wait_subscribed()
    port = free_port()
    cfg = write_config(
        tmp_path / "edged.toml",
        mqtt_broker,
        tmp_path / "state",
        models_dir,
        # A short file that loops: every loop reopens it, which needs a free descriptor.
        cameras=[{"id": "cam", "source": str(scene.video), "fps": FPS, "loop": True}],
        health_port=port,
        health={"max_connections": 32},
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log", preexec_fn=_low_nofile)
    daemons.append(d)
    rec.wait_for(lambda ms: len(events(rec)) >= 1, 60, "first event")
    assert health(port)[0] == 200

    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        assert len(flood) > NOFILE
        # Under the flood: /health answers and the daemon keeps publishing events.
        before = len(events(rec))
        status, body = health(port, timeout=30)
        assert status in (200, 503) and "status" in body, body
        rec.wait_for(lambda ms: len(events(rec)) >= before + 2, 60, "events during the flood")
        # The camera kept reopening its looping file (it needs a descriptor each time).
        assert body["cameras"]["cam"]["state"] == "running", body
        # A second wave while the first is still open on the client side.
        for _ in range(FLOOD // 2):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        assert health(port, timeout=30)[0] == 200
    finally:
        for sock in flood:
            sock.close()
    wait_until(lambda: health(port)[0] == 200, 20, "health after the flood")
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.tail()
    text = d.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, d.tail()
    assert "socket.accept() out of system resource" not in text
    rec.close()


# --- the server alone, in a loop thread of its own, fuzzed with raw bytes -----------------


class ServedHealth:
    """A HealthServer on an ephemeral port, its loop on a thread, for blocking clients."""

    def __init__(self, **health: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        snapshot = {
            "models": {"yunet": "cpu"},
            "cameras": {},
            "mqtt": {"connected": True},
        }
        self.server = HealthServer(
            HealthSettings(port=0, **health), lambda: dict(snapshot), Metrics()
        )
        self.call(self.server.start())
        self.port = self.server.port

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def open_connections(self) -> int:
        async def count() -> int:
            return self.server.open_connections

        return int(self.call(count()))

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[ServedHealth]:
    s = ServedHealth(max_connections=8, idle_timeout_s=1.0, request_timeout_s=3.0)
    try:
        yield s
    finally:
        s.close()


def test_silent_connections_are_closed_after_the_idle_timeout(served: ServedHealth) -> None:
    socks = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(5)]
    try:
        wait_until(lambda: served.open_connections() == 5, 10, "connections seen")
        for sock in socks:  # the server closes each: the client reads EOF or a reset
            sock.settimeout(20)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        assert served.open_connections() == 0
    finally:
        for sock in socks:
            sock.close()


def test_a_dribbled_request_is_cut_off_by_the_request_timeout(served: ServedHealth) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 40
        deadline = time.monotonic() + 30
        closed = False
        for byte in request:  # one byte at a time, never idle for the idle timeout
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:
                closed = True
                break
            assert time.monotonic() < deadline, "the dribbled request was never cut off"
        assert closed
    finally:
        sock.close()


def test_more_clients_than_the_limit_evict_the_silent_ones_and_health_answers(
    served: ServedHealth,
) -> None:
    socks = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(40)]
    try:
        status, body = health(served.port)
        assert status == 200 and body["status"] == "ok"
        assert served.open_connections() <= 8
    finally:
        for sock in socks:
            sock.close()


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, read what comes back until the server closes or 5 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                out += chunk
        return out


_request_parts = st.sampled_from(
    [
        b"GET /health HTTP/1.1\r\n",
        b"GET /metrics HTTP/1.0\r\n",
        b"POST /health HTTP/1.1\r\nContent-Length: 999999999\r\n",
        b"Host: x\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"X-Big: " + b"a" * 70000 + b"\r\n",
        b"\r\n",
        b"\r\n\r\n",
        b"\x00\xff\xfe",
        b"GET /" + b"%" * 5000 + b" HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello's start
    ]
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(max_size=4096),
        st.lists(st.one_of(_request_parts, st.binary(max_size=64)), max_size=8).map(b"".join),
    )
)
def test_fuzz_garbage_and_huge_headers_never_stop_health(served: ServedHealth, data: bytes) -> None:
    reply = _exchange(served.port, data)
    if reply:  # whatever was asked, any answer is HTTP
        assert reply.startswith(b"HTTP/1."), reply[:80]
    status, body = health(served.port)
    assert status == 200 and body["status"] == "ok"


async def test_failed_accepts_are_logged_once_in_a_while_without_a_traceback() -> None:
    """What asyncio reports when accept() fails with EMFILE (injected: the loop's own
    exception-handler call), a hundred times: one log line, no traceback."""
    from structlog.testing import capture_logs

    server = HealthServer(HealthSettings(port=0), lambda: {}, Metrics())
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        with capture_logs() as logs:
            for _ in range(100):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
    finally:
        await server.stop()
    failed = [e for e in logs if e["event"] == "health_accept_failed"]
    assert len(failed) == 1 and "Too many open files" in failed[0]["error"], logs
    assert all("exc_info" not in e for e in logs)
    assert loop.get_exception_handler() is None  # stop() put the previous handler back
