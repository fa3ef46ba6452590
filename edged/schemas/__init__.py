"""The JSON Schemas (draft 2020-12) of every JSON payload edged publishes or accepts.

Shipped as package data (``edged/schemas/<name>.schema.json``) so a subscriber can take
them from the installed package (``edged schema NAME``) and the test suite validates every
payload it receives against the same files. Each payload carries ``"schema": 1``; a
change that breaks a subscriber increments it, added keys do not.
"""

from __future__ import annotations

import json
from importlib import resources

from edged.errors import EdgedError

#: Schema name -> what it describes.
SCHEMAS: dict[str, str] = {
    "event": "<prefix>/<device>/<camera>/event: an emotion appeared, changed or left",
    "attributes": "<prefix>/<device>/<camera>/attributes (retained): faces and live tracks",
    "aggregate": "<prefix>/<device>/<camera>/aggregate: privacy aggregate report",
    "heartbeat": "<prefix>/<device>/heartbeat: liveness, models, cameras, spool",
    "config-set": "<prefix>/<device>/config/set (accepted): a change to the running config",
    "config-result": "<prefix>/<device>/config/result: the answer to a config/set",
    "health": "GET /health: status, reasons and checks",
}


def schema_text(name: str) -> str:
    """The shipped schema ``name`` as written; raises EdgedError for an unknown name."""
    if name not in SCHEMAS:
        raise EdgedError(f"no schema {name!r}; known: {', '.join(SCHEMAS)}")
    return resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")


def load_schema(name: str) -> dict[str, object]:
    """The shipped schema ``name`` as a JSON object."""
    data = json.loads(schema_text(name))
    if not isinstance(data, dict):
        raise EdgedError(f"schema {name} is not a JSON object")
    return data


__all__ = ["SCHEMAS", "load_schema", "schema_text"]
