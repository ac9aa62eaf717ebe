"""How the CLI shows things: rich tables on stdout for people, JSON for scripts, one-line
messages and progress on stderr (so `--json` output on stdout is never mixed with them)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from neffcache import humanize
from neffcache.digests import bare_hex


class OutputClosed(Exception):
    """stdout (or stderr) is a pipe whose reader has gone (`neffcache ls | head`): not a failure.
    Deliberately not an OSError: click turns an EPIPE OSError into exit 1."""


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's own answer is SystemExit(1); the command's entry point decides instead.
        self.quiet = True
        raise OutputClosed()


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200  # a pipe or a CI log: do not wrap 64-character keys at 80 columns
    return _Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


out = _console(stderr=False)
err = _console(stderr=True)


def say(message: str) -> None:
    """One plain line for people, on stderr (never wrapped: a log keeps it as one line)."""
    err.print(Text(message), soft_wrap=True)


def note(message: str) -> None:
    """A dim line on stderr, about the run rather than its result (which service answered)."""
    err.print(Text(message, style="dim"), soft_wrap=True)


def write(text: str) -> None:
    """Raw text on stdout (a compiler log), flushed."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed() from None


def print_json(data: Any) -> None:
    write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def line(message: str) -> None:
    """One plain line of a command's result, on stdout."""
    out.print(Text(message))


# Identifiers are copied from the output: never wrap them, let the other columns give way.
NO_WRAP = {"key", "job", "sha256", "worker", "file", "name"}


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=c in NO_WRAP)
    for row in rows:
        t.add_row(*[cell if isinstance(cell, Text) else Text("" if cell is None else str(cell)) for cell in row])
    out.print(t)


def human_bytes(n: int | float | None) -> str:
    return "" if n is None else humanize.human_bytes(n)


def human_seconds(s: float | None) -> str:
    return "" if s is None else humanize.human_seconds(s)


def when(iso: str | None, ago: bool = True) -> str:
    """ISO timestamp -> '2026-01-02 03:04:05Z (5 min ago)'."""
    if not iso:
        return ""
    try:
        ts = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    stamp = ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if not ago:
        return stamp
    seconds = (datetime.now(UTC) - ts).total_seconds()
    return f"{stamp} ({human_seconds(max(seconds, 0))} ago)"


def short(value: str | None, n: int = 12) -> str:
    if not value:
        return ""
    return bare_hex(value)[:n]


def transfer_progress(disable: bool = False) -> Progress:
    """A byte progress bar on stderr; drawn only on a terminal (CI logs stay clean)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=disable or not err.is_terminal,
        transient=False,
    )
