"""systemd notification protocol (``sd_notify``) without libsystemd.

``Type=notify`` services tell systemd they are ready, reloading or stopping, and feed the
watchdog, by sending newline-separated ``KEY=value`` lines as one datagram to the unix socket
named in ``$NOTIFY_SOCKET``. The protocol is small and stable, so edged speaks it directly
instead of depending on a binding that may be missing on a Jetson image.

``$NOTIFY_SOCKET`` is read when a :class:`Notifier` is constructed (never at import), so a
test or a reload can build one from any mapping. When it is unset the daemon was not started
by systemd (or not as ``Type=notify``) and every call is a silent no-op.

Sending never raises: a notification that cannot be delivered is logged and reported as
``False``, because a daemon must keep working when its supervisor's socket misbehaves.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

#: A datagram to systemd is tiny; never let a full socket buffer stall the caller for long.
_SEND_TIMEOUT_S = 1.0


class Notifier:
    """Sends ``sd_notify`` messages to ``$NOTIFY_SOCKET``; a no-op when it is not set.

    ``environ`` defaults to ``os.environ`` and is read once, here. A ``NOTIFY_SOCKET`` that
    starts with ``@`` names a socket in the Linux abstract namespace (``@`` becomes a NUL
    byte), anything else is a filesystem path.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            # systemd >= 254 may hand out vsock: addresses (VMs); edged runs on hosts.
            log.warning("sd_notify_unsupported_socket", notify_socket=raw)
        self._watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured (i.e. systemd is listening)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; ``True`` when it was sent.

        ``False`` when no socket is configured or the send failed (logged, never raised).
        """
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(_SEND_TIMEOUT_S)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", message=assignments[0], error=str(exc))
            self.close()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup is complete (models warm, cameras opened)."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd >= 253 requires it for
        ``Type=notify-reload`` and uses it to order the reload against ``READY=1``). Send
        :meth:`ready` again when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive; send every :meth:`watchdog_interval`."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """``STATUS=...``: the one-line state shown by ``systemctl status``."""
        return self.notify(*_status(text))

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or ``None``.

        ``None`` when the watchdog is not enabled for this process: ``WATCHDOG_USEC`` unset,
        invalid or zero, or ``WATCHDOG_PID`` naming another process (the variables were
        inherited by a child).
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket (a later notification opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    # A newline would start a new assignment; STATUS is one line.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("sd_notify_bad_watchdog_pid", watchdog_pid=pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("sd_notify_bad_watchdog_usec", watchdog_usec=raw)
        return None
    return usec if usec > 0 else None
