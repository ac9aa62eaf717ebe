"""neffcache.logs: which request ids are kept, and what a line holds in each format: the ids in
context, its own fields, and a job transition's."""

from __future__ import annotations

import json
import logging

import pytest

from neffcache import logs


@pytest.mark.parametrize(("given", "kept"), [
    ("ci-1234", True),
    ("0f6c2a9e-5b1d-4c1e-9a35-2f0c9d1e7b42", True),
    ("Root=1-67891233-abcdef012345678912345678", True),  # an AWS load balancer's trace id
    ("a" * 128, True),
    ("a" * 129, False),
    ("", False),
    ("two words", False),
    ("line\nbreak", False),
    (None, False),
])
def test_a_request_id_is_kept_only_if_it_looks_like_one(given: str | None, kept: bool) -> None:
    accepted = logs.accepted_request_id(given)
    assert (accepted == given) is kept
    assert logs.REQUEST_ID_PATTERN.fullmatch(accepted)


def _record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("neffcache.test", logging.INFO, __file__, 1, message, args or ("world",), None)
    record.__dict__.update(logs.fields(**fields))
    return record


def test_a_json_line_has_the_ids_in_context_and_its_fields() -> None:
    with logs.bound(request="r-1", job="j-1"):
        line = json.loads(logs.JsonFormatter().format(_record(status=200, absent=None)))
    assert line["message"] == "hello world" and line["level"] == "INFO" and line["logger"] == "neffcache.test"
    assert (line["request_id"], line["job_id"], line["status"]) == ("r-1", "j-1", 200)
    assert "absent" not in line and line["time"].endswith("+00:00")
    # outside the context: no ids
    assert "request_id" not in json.loads(logs.JsonFormatter().format(_record()))


def test_a_text_line_ends_with_the_ids_in_context() -> None:
    with logs.bound(request="r-2"):
        assert logs.TextFormatter().format(_record()).endswith("neffcache.test: hello world [request_id=r-2]")
    assert logs.TextFormatter().format(_record()).endswith("hello world")


def test_a_job_transition_names_the_job_its_key_state_worker_and_request(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("neffcache.test.jobs")
    with caplog.at_level(logging.INFO, logger.name), logs.bound(request="r-3"):
        logs.job_transition(logger, job="j-3", key="ab" * 32, state="running", step="claim", worker="w-1")
        logs.job_transition(logger, job="j-4", key="cd" * 32, state="queued", step="create", request="r-given")
    claimed, created = (json.loads(logs.JsonFormatter().format(r)) for r in caplog.records)
    assert {k: claimed[k] for k in ("event", "job_id", "key", "state", "step", "worker", "request_id")} == {
        "event": "job", "job_id": "j-3", "key": "ab" * 32, "state": "running", "step": "claim", "worker": "w-1",
        "request_id": "r-3"}
    assert claimed["message"] == f"job j-3 (key {'ab' * 6}): claim, now running on w-1"
    assert created["request_id"] == "r-given" and "worker" not in created


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.formatter("xml")
