"""Every payload a recorder receives in a service test is checked against its shipped
schema, as in tests/mqtt: the real daemon's events, heartbeats, state, discovery and
config/result all follow edged/schemas/."""

from __future__ import annotations

import pytest

from tests.schema_helpers import validated_payloads

__all__ = ["validated_payloads"]


@pytest.fixture(autouse=True)
def _every_payload_follows_its_schema(validated_payloads: list[str]) -> None:
    """Autouse wrapper: the check runs in every test of tests/service."""
