"""The shipped Prometheus alert rules and Grafana dashboard use only metrics the server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .support import scrape_text

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "cofounder.json"
METRIC = re.compile(r"\b((?:cofounder|process)_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()]


def dashboard_expressions() -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(json.loads(DASHBOARD.read_text()))
    return found


async def exported_names(port: int) -> set[str]:
    """Every series name the endpoint can serve (a labelled family with no child yet counts)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(await scrape_text(port)):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_alerts_and_dashboard_reference_only_exported_metrics(start_server) -> None:
    app = await start_server(metrics_listen="127.0.0.1:0")
    assert app.metrics_port is not None
    exported = await exported_names(app.metrics_port)
    alerts = alert_expressions()
    panels = dashboard_expressions()
    assert len(alerts) == 4
    assert len(panels) >= 20
    referenced = {name for expr in alerts + panels for name in METRIC.findall(expr)}
    assert referenced, "the files name cofounder metrics"
    assert referenced - exported == set()


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (.ci/run installs it)"
)
def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    subprocess.run(["promtool", "check", "rules", str(ALERTS)], check=True, capture_output=True)
    subprocess.run(
        ["promtool", "test", "rules", str(ALERTS.with_name("alerts.test.yml"))],
        check=True,
        capture_output=True,
    )


def test_the_dashboard_shows_escalations_and_the_process() -> None:
    referenced = {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}
    assert {
        "cofounder_escalations_pending",
        "cofounder_escalation_oldest_pending_age_seconds",
        "cofounder_escalations_raised_total",
        "cofounder_escalations_resolved_total",
        "cofounder_escalations_expired_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= referenced


def _anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (lower case, spaces as dashes)."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_own_runbook_section() -> None:
    runbook = ROOT / "docs" / "runbook.md"
    sections = {
        _anchor(line[3:]): line[3:] for line in runbook.read_text().splitlines() if line.startswith("## ")
    }
    links = {}
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == runbook.resolve()
        links[anchor] = rule["alert"]
    assert {anchor: sections.get(anchor) for anchor in links} == links
    assert set(sections) == set(links), "one section per alert, and no other"
