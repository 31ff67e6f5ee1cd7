"""contrib/prometheus/: promtool accepts the rules, and its unit tests (which cover
every alert, firing and not firing) pass.  That the rules and the dashboard name
only metrics the exporter produces is checked against a real scrape in
tests/kernel/test_prometheus_server.py."""

import os

import pytest
import yaml

from helpers import REPO_ROOT
from helpers.promtool import promtool

pytestmark = pytest.mark.prometheus

CONTRIB = os.path.join(REPO_ROOT, "contrib", "prometheus")
RULES = [os.path.join(CONTRIB, name) for name in ("kvmstat-rules.yml", "kvmstat-alerts.yml")]
TESTS = os.path.join(CONTRIB, "kvmstat-rules-test.yml")


def test_promtool_check_rules_is_clean():
    done = promtool(["check", "rules", *RULES])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULES)


def test_promtool_test_rules_passes():
    done = promtool(["test", "rules", TESTS])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not():
    with open(RULES[1]) as f:
        alerts = {rule["alert"] for group in yaml.safe_load(f)["groups"]
                  for rule in group["rules"]}
    with open(TESTS) as f:
        tests = yaml.safe_load(f)
    assert tests["rule_files"] == [os.path.basename(r) for r in RULES]
    fired, quiet = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert alerts and fired == alerts
    assert quiet == alerts
