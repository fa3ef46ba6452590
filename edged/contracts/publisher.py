"""The MQTT publisher's status, as the heartbeat, ``/health`` and ``/metrics`` read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublisherStatus:
    """A consistent snapshot of the publisher: a drained spool is never seen with its
    events not yet counted as published."""

    connected: bool
    spool_pending: int
    spool_dropped: int
    spool_expired: int
    events_published: int
    events_rejected: int
    inflight: int
    reconnects: int
    last_error: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "spool_pending": self.spool_pending,
            "spool_dropped": self.spool_dropped,
            "spool_expired": self.spool_expired,
            "events_published": self.events_published,
            "events_rejected": self.events_rejected,
            "inflight": self.inflight,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }


__all__ = ["PublisherStatus"]
