"""What the deployment's monitoring reads: the Prometheus rules (deploy/prometheus/) and the
Grafana dashboard (deploy/grafana/neffcache.json), their expressions and the metrics they name.
The dashboard test checks those names against what the service exposes; the Prometheus test,
that a real Prometheus scraping a running service has samples of each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "neffcache.rules.yaml"
RULE_TESTS = PROMETHEUS / "neffcache.rules.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "neffcache.json"
# A metric's name in an expression (recording rules are named neffcache:..., with colons).
METRIC_NAME = re.compile(r"\bneffcache_[a-z0-9_]+\b")
# Debian's `prometheus` package (CI installs it): the server and promtool.
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL_BIN = shutil.which("promtool") or "/usr/bin/promtool"


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", ())]


def metrics_named(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}


def metrics_used() -> set[str]:
    """Every metric (as Prometheus names its series: counters with _total, a histogram's
    _bucket) that a rule or a dashboard panel reads."""
    return metrics_named([rule["expr"] for rule in rules()] + dashboard_expressions())


def exposed_series(metrics_text: str) -> set[str]:
    """The series names a /metrics answer declares (every family, with or without samples yet):
    a counter's with _total, a histogram's _bucket, _sum and _count."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    return {family.name + suffix for family in text_string_to_metric_families(metrics_text)
            for suffix in suffixes.get(family.type, ("",))}
