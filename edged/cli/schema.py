"""``edged schema [NAME]``: print the JSON Schemas of the payloads edged publishes or accepts.

Without a name, every schema in one JSON object keyed by name (so a script can save them
all at once); with one, that schema exactly as shipped in the package.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from edged.errors import EdgedError
from edged.schemas import SCHEMAS, load_schema, schema_text


def schema(
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(help=f"One of: {', '.join(SCHEMAS)}. Default: all of them."),
    ] = None,
) -> None:
    """Print the JSON Schemas (draft 2020-12) of edged's payloads."""
    try:
        if name is None:
            typer.echo(json.dumps({n: load_schema(n) for n in SCHEMAS}, indent=2))
        else:
            typer.echo(schema_text(name), nl=False)
    except EdgedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
