"""``edged config ...``: the effective configuration."""

from __future__ import annotations

import typer

from edged.cli.common import ConfigOpt, JsonOpt, group, load

app = group("Inspect the configuration.")


@app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The effective configuration (file + environment + defaults), secrets redacted.

    The TOML output is a valid config file again.
    """
    from edged.cli import render

    data = load(config).redacted()
    if as_json:
        render.print_json(data)
    else:
        typer.echo(render.to_toml(data), nl=False)
