"""Typed payloads edged publishes or accepts: one frozen dataclass per payload, each with
one ``to_json()`` from which its bytes on the wire are derived, so every producer and the
transport agree on a payload's shape by type rather than by dictionary keys."""
