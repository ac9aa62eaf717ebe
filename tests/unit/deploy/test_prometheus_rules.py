"""deploy/prometheus/: the rules load (`promtool check rules`), each alert has a unit test in
which it fires (`promtool test rules`, which also checks where it must not fire), and the
recording rules the alerts and the dashboard read are defined."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.support.observability import PROMTOOL_BIN, RULE_TESTS, RULES, dashboard_expressions, rules


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL_BIN, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_load() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_every_alert_fires_in_its_unit_test() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    fired = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert len(alerts) >= 10 and alerts == fired


def test_every_recording_rule_read_is_defined() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    read = {name for expr in [r["expr"] for r in rules()] + dashboard_expressions()
            for name in re.findall(r"\bneffcache:[a-z0-9_:]+", expr)}
    assert read and read <= recorded
