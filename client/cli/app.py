"""The `neffcache` app: its commands, and the entry point that turns every ending into an exit code.

Output contract (every command): results on stdout (a table or lines; JSON with --json); errors
are one line on stderr, never a traceback (with --json the error body is also printed on
stdout). For people (without --json) the last line on stderr names the service that answered:
a dim `service: URL` line, or appended to the error line. A closed stdout (`neffcache ls |
head`) is not a failure: exit 0, quietly.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Annotated

import httpx
import pydantic
import typer
from rich.text import Text
from typer.exceptions import TyperException

from neffcache.client import output
from neffcache.client.cli import compile, inspection, jobs, pin, prewarm, pull, push, session
from neffcache.client.cli.exits import Finished
from neffcache.client.cli.options import TokenOpt, UrlOpt
from neffcache.errors import (
    EXIT_SUCCESS,
    EXIT_USAGE,
    NeffcacheError,
    Unreachable,
    UsageError,
)

app = typer.Typer(
    name="neffcache",
    help="Compile farm and artifact cache for AWS Neuron: compile, look up and pull NEFFs; inspect the cache.\n\n"
    "Exit codes: 0 ok, 1 compile failed, 2 bad usage or spec refused, 3 timed out, 4 miss or not found, "
    "5 integrity or runtime mismatch, 6 unreachable or unauthorised.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# In this order in --help.
COMMANDS = (
    ("compile", compile.compile_cmd), ("push", push.push_cmd), ("lookup", compile.lookup_cmd),
    ("pull", pull.pull_cmd), ("lock", pull.lock_cmd), ("prewarm", prewarm.prewarm_cmd),
    ("ls", inspection.ls_cmd), ("show", inspection.show_cmd), ("stats", inspection.stats_cmd),
    ("hits", inspection.hits_cmd), ("jobs", jobs.jobs_cmd), ("logs", jobs.logs_cmd), ("cancel", jobs.cancel_cmd),
    ("workers", inspection.workers_cmd), ("toolchains", inspection.toolchains_cmd),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)
# Commands with subcommands (`neffcache pin add|rm|ls`), after the others in --help.
GROUPS = (("pin", pin.app),)
for _name, _group in GROUPS:
    app.add_typer(_group, name=_name)


def _version(value: bool) -> None:
    if value:
        try:
            from importlib.metadata import version

            v = version("neffcache")
        except Exception:  # noqa: BLE001 - running from a checkout
            v = "0.1.0 (not installed)"
        output.line(f"neffcache {v}")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    url: UrlOpt = None,
    token: TokenOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    session.run.url = url
    session.run.token = token


_FORESEEN = (Finished, TyperException, typer.Abort, NeffcacheError, httpx.HTTPError, pydantic.ValidationError)


def _ending(exc: BaseException) -> tuple[int, str | None, NeffcacheError | None]:
    """(exit code, last line for stderr, the error whose body --json prints) for how a run ended."""
    if isinstance(exc, Finished):
        return exc.code, exc.reason, None
    if isinstance(exc, TyperException):  # typer's usage errors: bad option, missing argument, bad value
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        return EXIT_USAGE, f"neffcache: {' '.join(exc.format_message().split())}{hint}", None
    if isinstance(exc, typer.Abort):
        return 130, "neffcache: aborted", None
    if isinstance(exc, KeyboardInterrupt):
        return 130, "neffcache: interrupted", None
    if isinstance(exc, NeffcacheError):
        error = exc
    elif isinstance(exc, httpx.HTTPError):  # anything the client class did not translate
        error = Unreachable(f"HTTP error: {exc}")
    elif isinstance(exc, pydantic.ValidationError):  # a bad NEFFCACHE_* client setting
        problems = "; ".join(f"NEFFCACHE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        error = UsageError(f"bad setting: {problems}")
    else:  # a bug: still one line unless asked for the traceback
        error = NeffcacheError(
            f"unexpected error: {type(exc).__name__}: {exc} (set NEFFCACHE_DEBUG=1 for the traceback)"
        )
    return error.exit_code, f"neffcache: {' '.join((error.detail or error.code).split())}", error


def _run(args: list[str], json_mode: bool) -> int:
    reason: str | None = None
    try:
        code = app(args=args, prog_name="neffcache", standalone_mode=False)
        code = code if isinstance(code, int) else EXIT_SUCCESS
    except SystemExit:
        # typer's answer to a closed stdout (its own writes: --help) is exit 1, with stdout wrapped
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            raise output.OutputClosed() from None
        raise
    except (output.OutputClosed, BrokenPipeError):
        raise
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `neffcache`: the help, as help
            sys.stderr.write(exc.format_message() + "\n")  # type: ignore[attr-defined]
            return EXIT_USAGE
        if os.environ.get("NEFFCACHE_DEBUG") and not isinstance(exc, _FORESEEN):
            raise
        code, reason, error = _ending(exc)
        if isinstance(exc, Finished) and exc.human_only and json_mode:
            reason = None
        if error is not None and json_mode:
            output.print_json(error.to_body())
    except KeyboardInterrupt as exc:
        code, reason, _ = _ending(exc)
    sys.stdout.flush()  # a closed stdout shows here, not at exit
    note = None if json_mode else session.service_note()
    if reason:
        output.err.print(Text(reason + (f" [{note}]" if note else "")), soft_wrap=True)
    elif note:
        output.note(note)
    return code


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    session.reset()
    try:
        code = _run(args, json_mode="--json" in args)
    except (output.OutputClosed, BrokenPipeError):
        # The reader of stdout (or stderr) went away: nothing more to say, and not a failure.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                os.dup2(devnull, stream.fileno())  # type: ignore[union-attr]
            except (OSError, ValueError, AttributeError):
                pass
        code = EXIT_SUCCESS
    # The run is over and the process ends here: spare the interpreter's exit a walk of the cycle
    # collector over every object typer, pydantic, rich and httpx made (50-90 ms of CPU a run).
    gc.freeze()
    sys.exit(code)
