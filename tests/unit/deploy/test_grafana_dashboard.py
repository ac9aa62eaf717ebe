"""deploy/grafana/neffcache.json: it parses as a dashboard, each panel's expressions are valid
PromQL (promtool checks them as recording rules), and they, like the Prometheus rules, name only
metrics the service exposes (its /metrics, in process, with a quota set). The same names are
checked for samples by a real Prometheus in tests/stack/test_observability.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from neffcache.service.app import create_app
from tests.support.in_process import service_settings
from tests.support.observability import PROMTOOL_BIN, dashboard, dashboard_expressions, exposed_series, metrics_used

# What an operator looks at, each a panel (by a word of its title).
PANELS = ("Hit rate", "Compile time saved", "Queue depth", "Queue age", "Compiles by result and failure class",
          "Compile duration percentiles", "Workers per toolchain", "Pulls and bytes served",
          "Stored bytes against the quota")


def test_the_dashboard_has_a_panel_for_each_figure() -> None:
    board = dashboard()
    titles = [panel["title"] for panel in board["panels"]]
    assert board["uid"] == "neffcache" and len(set(titles)) == len(titles)
    for wanted in PANELS:
        assert any(title.startswith(wanted) for title in titles), wanted
    assert all(panel["targets"] and all(t["expr"] for t in panel["targets"]) for panel in board["panels"])


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    as_rules = tmp_path / "dashboard.rules.yaml"
    as_rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_expression_{i}", "expr": expr} for i, expr in enumerate(dashboard_expressions())
    ]}]}))
    checked = subprocess.run([PROMTOOL_BIN, "check", "rules", str(as_rules)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def metrics_text(tmp_path: Path) -> str:
    with TestClient(create_app(service_settings(tmp_path, gc_quota_bytes="1GiB"))) as client:
        r = client.get("/metrics")
        assert r.status_code == 200
        return r.text


def test_the_dashboard_and_the_rules_name_only_metrics_the_service_exposes(metrics_text: str) -> None:
    used = metrics_used()
    assert {"neffcache_jobs_queued", "neffcache_compile_seconds_saved_total", "neffcache_download_bytes_total",
            "neffcache_compile_duration_seconds_bucket"} <= used
    assert used - exposed_series(metrics_text) == set()
