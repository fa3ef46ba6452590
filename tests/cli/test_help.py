"""What `edged ... --help` shows, option choices, and shell completion, through the real CLI.

Help texts name config keys as `[section] key`; a markup renderer would take `[models]` for
a style tag and drop it, so every command's help is rendered and searched for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from edged.cli.app import app

SECTION = re.compile(r"\[[a-z_]+\]")


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env, prog_name="edged")


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group of the CLI (click objects) with its argument path."""
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from commands(sub, (*path, name))


def help_texts(cmd: Any) -> list[str]:
    texts = [cmd.help or ""]
    texts += [getattr(p, "help", None) or "" for p in cmd.params]
    return texts


ALL = list(commands(typer.main.get_command(app)))


def test_the_command_tree_is_complete() -> None:
    paths = {" ".join(p) for p, _ in ALL}
    assert paths >= {
        "run",
        "check-config",
        "analyze",
        "config show",
        "models list",
        "models fetch",
        "models verify",
        "models import",
        "cameras probe",
    }


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize(("path", "cmd"), ALL, ids=[" ".join(p) or "edged" for p, _ in ALL])
def test_help_keeps_config_section_names_and_shows_no_rst_literals(
    path: tuple[str, ...], cmd: Any, columns: str
) -> None:
    res = invoke(*path, "--help", env={"COLUMNS": columns})
    assert res.exit_code == 0, res.output
    wanted = {m for text in help_texts(cmd) for m in SECTION.findall(text)}
    assert [s for s in sorted(wanted) if s not in res.output] == []
    assert "``" not in res.output
    # An emptied reference leaves a double space before ')' or a word ("default:  dir").
    assert "default:  " not in res.output and "then  " not in res.output


def test_the_section_references_are_there_to_check() -> None:
    """The help test above has something to find: the option help names its sections."""
    found = {m for _, cmd in ALL for text in help_texts(cmd) for m in SECTION.findall(text)}
    assert {"[models]", "[pipeline]"} <= found


@pytest.mark.parametrize("command", [("run",), ("analyze", "x.jpg")])
def test_log_level_outside_its_choices_is_refused_with_the_choices(
    command: tuple[str, ...],
) -> None:
    res = invoke(*command, "--log-level", "loud")
    assert res.exit_code == 2
    assert "--log-level" in res.output and "'loud'" in res.output
    for level in ("debug", "info", "warning", "error"):
        assert level in res.output


def test_log_level_choices_are_listed_in_the_help() -> None:
    res = invoke("run", "--help", env={"COLUMNS": "200"})
    assert "debug|info|warning|error" in res.output
    assert "auto|json|console" in res.output


def test_root_help_offers_shell_completion() -> None:
    res = invoke("--help")
    assert "--install-completion" in res.output and "--show-completion" in res.output


def complete(words: str) -> list[str]:
    """What the bash completion script receives for the command line ``words``."""
    parts = words.split(" ")
    env = {
        "_EDGED_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
    }
    res = CliRunner().invoke(app, [], env=env, prog_name="edged")
    assert res.exit_code == 0, res.output
    return res.output.split()


def test_completion_completes_commands_subcommands_and_choices() -> None:
    assert complete("edged mo") == ["models"]
    assert complete("edged models v") == ["verify"]
    assert complete("edged run --log-level ") == ["debug", "info", "warning", "error"]
