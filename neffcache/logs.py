"""Log lines: text for a person at a terminal, or one JSON object per line for a log pipeline
(NEFFCACHE_LOG_FORMAT=text|json), the same fields either way.

Every line written while a request, or a job on its worker, is being handled carries that
request's id (`request_id`) and the job's (`job_id`): context variables set by the service's
request log (service.request_log) and by the worker around a job (workers.tasks). A job records
the id of the request that created it (jobs.request_id), so its worker's lines carry the same id
as the API's: `grep <request id>` over both follows a job from its request to its artifact.

`job_transition` is the one line per change of a job's state, on the service (created,
cancelled) and on the worker (claimed, published, failed, retried, stopped).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# An incoming X-Request-Id is kept only if it looks like an id (no spaces, no control characters:
# it goes into log lines and a response header as it is); anything else gets a new one.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# The structured fields of a line (`extra={FIELDS: {...}}`): keys of the JSON object.
FIELDS = "neffcache_fields"

request_id: ContextVar[str | None] = ContextVar("neffcache_request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("neffcache_job_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(given: str | None) -> str:
    """The request's id: the caller's X-Request-Id when it looks like one, else a new one."""
    return given if given is not None and REQUEST_ID_PATTERN.fullmatch(given) else new_request_id()


@contextmanager
def bound(request: str | None = None, job: str | None = None) -> Iterator[None]:
    """Lines logged inside carry these ids (the ones not given are left as they are)."""
    tokens = [(var, var.set(value)) for var, value in ((request_id, request), (job_id, job)) if value is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _ids() -> dict[str, str]:
    return {name: value for name, value in (("request_id", request_id.get()), ("job_id", job_id.get()))
            if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids in
    context, the line's own fields, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_ids(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with the ids in context appended (`[request_id=... job_id=...]`)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = _ids()
        return text + (" [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" if ids else "")


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, level: int = logging.INFO) -> None:
    """The process's one handler (stderr), in `log_format`; replaces any handler already there."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a line with structured fields (None values left out)."""
    return {FIELDS: {k: v for k, v in values.items() if v is not None}}


def job_transition(logger: logging.Logger, *, job: str, key: str, state: str, step: str,
                   worker: str | None = None, request: str | None = None, **more: Any) -> None:
    """The line of one change of a job's state (after its commit: it happened)."""
    request = request or request_id.get()
    by = f" on {worker}" if worker else ""
    logger.info("job %s (key %s): %s, now %s%s", job, key[:12], step, state, by,
                extra=fields(event="job", job_id=job, key=key, state=state, step=step, worker=worker,
                             request_id=request, **more))
