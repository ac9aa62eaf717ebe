"""Tokens against the running service: the bootstrap admin token ends once an admin token exists
(the session made one first, tests/support/stack.py), and the refusal is logged once."""

from __future__ import annotations

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.support.stack import SESSION_ADMIN


def test_the_bootstrap_token_is_refused_and_the_service_says_why_once(running) -> None:
    assert running.admin_token != ADMIN_TOKEN
    for _ in range(2):
        r = httpx.get(f"{running.url}/v1/tokens", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert "bootstrap admin token" in r.json()["detail"]
    mine = httpx.get(f"{running.url}/v1/tokens", headers={"Authorization": f"Bearer {running.admin_token}"},
                     timeout=30)
    assert mine.status_code == 200
    listed = {t["name"]: t for t in mine.json()["tokens"]}
    assert listed[SESSION_ADMIN]["scope"] == "admin" and listed[SESSION_ADMIN]["last_used_at"] is not None
    [server] = [p for p in running.stack.processes if p.name == "server"]
    assert server.log_tail(200000).count("NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN was ignored") == 1
