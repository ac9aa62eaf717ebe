"""client/prewarm.py: how a prewarm entry reads for people, and what a followed job makes of it."""

from __future__ import annotations

from typing import Any

import pytest

from neffcache.client.prewarm import source_of, state_text, totals, with_job_ended

JOB = "0f6c2a9e-1d2b-4c3a-9e8f-7a6b5c4d3e2f"


@pytest.mark.parametrize("entry, text", [
    ({"status": "ready"}, "ready"),
    ({"status": "compiling", "job_id": JOB}, f"compiling (job {JOB})"),
    ({"status": "failed", "job_id": JOB, "failure_class": "compile_error",
      "message": "compile_error: unknown option --enable-experimental-spill\nmore"},
     f"failed (compile_error: unknown option --enable-experimental-spill; job {JOB})"),
    ({"status": "missing"}, "not built"),
    ({"status": "unbuildable", "reason": "no live worker offers neuronx-cc==2.26.6360.0"},
     "unbuildable: no live worker offers neuronx-cc==2.26.6360.0"),
    ({"status": "refused", "reason": "compiler.flags: -lnc 2: only for targets trn2, trn3"},
     "refused: compiler.flags: -lnc 2: only for targets trn2, trn3"),
], ids=lambda v: v if isinstance(v, str) else v["status"])
def test_each_state_reads_in_one_line(entry: dict[str, Any], text: str) -> None:
    assert state_text(entry) == text


@pytest.mark.parametrize("final, job, status", [
    ("succeeded", {"state": "succeeded"}, "ready"),
    ("failed", {"state": "failed", "failure_class": "oom", "message": "killed", "log_tail": "tail"}, "failed"),
    ("cancelled", {"state": "cancelled"}, "failed"),
    ("timed_out", {"state": "running"}, "compiling"),
])
def test_a_followed_job_decides_its_entry(final: str, job: dict[str, Any], status: str) -> None:
    entry = {"status": "compiling", "job_id": JOB, "key": "a" * 64, "spec": "encoder"}
    ended = with_job_ended(entry, job, final)
    assert ended["status"] == status and ended["key"] == entry["key"]
    if final == "failed":
        assert (ended["failure_class"], ended["message"], ended["log_tail"]) == ("oom", "killed", "tail")
    if final == "cancelled":
        assert ended["failure_class"] == "cancelled"


def test_totals_count_every_status_and_sources_read_as_given() -> None:
    entries = [{"status": "ready", "spec": "encoder"}, {"status": "ready", "source_key": "b" * 64},
               {"status": "refused", "spec": None, "source_key": "c" * 64}]
    assert totals(entries) == {"ready": 2, "compiling": 0, "failed": 0, "missing": 0, "unbuildable": 0, "refused": 1}
    assert [source_of(e) for e in entries] == ["encoder", "b" * 64, "c" * 64]
