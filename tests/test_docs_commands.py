"""Every jerpctl command the README and docs/ show parses as jerpctl parses it: the subcommand
exists, and every option and argument is accepted (placeholders such as SITE filled in). A doc
that names a removed option, or a command that never existed, fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from jerp_jobs.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {
    "SITE": "a.example.com", "S": "a.example.com", "APP": "erpnext", "JOB": "abc123", "JOB_ID": "abc123",
    "TAG": "v1.2.3", "N": "2", "PATH": "x.sql.gz", "TIME": "2026-12-04 03:00", "ST": "running",
}


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) of every line of a fenced block that starts with ``jerpctl ``."""
    found = []
    for path in DOCS:
        fenced, pending = False, ""
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            text = pending + line.strip()
            pending = ""
            if not fenced or not text.startswith("jerpctl ") or "──" in text:  # a diagram, not a command
                continue
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            found.append((f"{path.name}:{number}", text))
    return found


def as_argv(line: str) -> list[str]:
    """A documented line as an argv: comments and redirections dropped, ``[optional]`` parts kept
    (the first of ``a | b``), ``--x/--no-x`` as ``--x``, placeholders filled."""
    line = re.split(r"\s+#|\s+>", line)[0]
    while re.search(r"\[[^\[\]]*\]", line):
        line = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).split(" | ")[0], line)
    line = line.replace("...", "")
    line = line.split(" | ")[0]
    argv = []
    for token in shlex.split(line)[1:]:
        token = token.split("/")[0] if token.startswith("--") else token
        argv.append(PLACEHOLDERS.get(token, token))
    return argv


def parse(argv: list[str]) -> click.Context:
    ctx = cli.make_context("jerpctl", list(argv))
    while isinstance(ctx.command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        assert rest, f"{argv}: a group without a subcommand"
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


COMMANDS = documented_commands()


def test_the_docs_show_the_main_commands() -> None:
    shown = {" ".join(as_argv(line)[:2]) for _, line in COMMANDS}
    for needed in ("enqueue migrate-all", "enqueue restore-all", "enqueue offboard", "enqueue install-app-all",
                   "backups --rescan", "site clear-attention", "audit --site"):
        assert any(s.startswith(needed) for s in shown), needed


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses(where: str, line: str) -> None:
    try:
        parse(as_argv(line))
    except click.UsageError as exc:
        pytest.fail(f"{where}: `{line}` does not parse: {exc.format_message()}")


@pytest.mark.parametrize("argv", [["enqueue", "offboard", "a.example.com", "--no-such-flag"], ["enqueue", "nope"]])
def test_the_check_catches_a_wrong_command(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        parse(argv)
