"""deploy/compose/compose.yaml: valid by the Compose Specification's JSON schema (vendored, so
no Docker is needed), and wired as docs/deploy.md says: migrate before the replicas, every
mounted file present, Prometheus and Grafana pointed at the shipped rules and dashboard."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cofounder_server.live.sentinel_url import parse_sentinel_url

from .support import DEPLOY, HANDOVER_SECONDS

COMPOSE_DIR = DEPLOY / "compose"
SCHEMA = json.loads((COMPOSE_DIR / "schema" / "compose-spec.json").read_text())


def compose() -> dict[str, Any]:
    document = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60}
    return float(duration[:-1]) * units[duration[-1]]


def test_the_compose_file_is_valid_by_the_compose_schema() -> None:
    assert schema_errors(compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "cofounder", "restart_policy"), "always"),
        (("services", "cofounder", "deploy", "replicas"), [3]),
        (("services", "cofounder", "depends_on", "migrate", "condition"), "service_finished"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-condition"],
)
def test_the_schema_check_catches_a_broken_file(path: tuple[str, ...], value: object) -> None:
    """The check above can fail."""
    document = copy.deepcopy(compose())
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(document) != []


def test_replicas_start_after_the_migration_has_succeeded() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["image"] == services["cofounder"]["image"]
    assert services["cofounder"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["cofounder"]["deploy"]["replicas"] >= 2
    for dependency in ("postgres", "redis"):
        assert services["cofounder"]["depends_on"][dependency] == {"condition": "service_healthy"}
    # The migration and the replicas use the same database.
    url = services["cofounder"]["environment"]["COFOUNDER_DATABASE_URL"]
    assert url.startswith("postgresql://")
    assert services["migrate"]["environment"]["COFOUNDER_DATABASE_URL"] == url


def drain_seconds(environment: dict[str, str]) -> float:
    """The longest a replica's drain takes: the pause, in-flight calls for the grace, the agents
    for as long, then the hand-over."""
    pause = float(environment["COFOUNDER_DRAIN_PAUSE_SECONDS"])
    grace = float(environment["COFOUNDER_SHUTDOWN_GRACE_SECONDS"])
    return pause + 2 * grace + HANDOVER_SECONDS


def test_a_replica_may_drain_before_it_is_killed() -> None:
    """Docker kills after stop_grace_period (default 10 s)."""
    replica = compose()["services"]["cofounder"]
    assert seconds(replica["stop_grace_period"]) >= drain_seconds(replica["environment"])


@pytest.mark.parametrize(
    ("setting", "value"),
    [("COFOUNDER_DRAIN_PAUSE_SECONDS", "25"), ("COFOUNDER_SHUTDOWN_GRACE_SECONDS", "20")],
    ids=["longer-pause", "longer-grace"],
)
def test_a_longer_drain_without_a_longer_stop_grace_period_is_caught(setting: str, value: str) -> None:
    """The check above can fail."""
    replica = compose()["services"]["cofounder"]
    environment = replica["environment"] | {setting: value}
    assert seconds(replica["stop_grace_period"]) < drain_seconds(environment)


def test_redis_is_the_stacks_own_unless_env_names_a_sentinel_url() -> None:
    document = compose()
    assert document["services"]["cofounder"]["environment"]["COFOUNDER_REDIS_URL"] == (
        "${REDIS_URL:-redis://redis:6379/0}"
    )
    examples = [
        line.removeprefix("#").strip().removeprefix("REDIS_URL=")
        for line in (COMPOSE_DIR / "env.example").read_text().splitlines()
        if line.removeprefix("#").strip().startswith("REDIS_URL=")
    ]
    assert len(examples) == 1
    parsed = parse_sentinel_url(examples[0])
    assert len(parsed.sentinels) == 3
    assert parsed.service_name == "cofounder"


def test_every_file_the_stack_mounts_is_in_the_repository() -> None:
    document = compose()
    sources: list[str] = []
    for service in document["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                sources.append(source)
    assert sources
    for source in sources:
        assert (COMPOSE_DIR / source).exists(), source
    # The operator writes principals.toml from the example beside it.
    assert document["configs"]["principals"]["file"] == "./principals.toml"
    assert (COMPOSE_DIR / "principals.example.toml").exists()


def test_prometheus_loads_the_shipped_rules_and_scrapes_the_metrics_port() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = dict(volume.split(":")[:2] for volume in prometheus["volumes"])
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    rules_target = mounts["../../ops/prometheus/alerts.yml"]
    assert any(Path(rules_target).match(pattern) for pattern in config["rule_files"])
    (scrape,) = config["scrape_configs"]
    assert scrape["dns_sd_configs"][0]["names"] == ["cofounder"]
    assert scrape["dns_sd_configs"][0]["port"] == 9464


def test_grafana_provisions_the_shipped_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provider = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/cofounder.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["../../ops/grafana"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (.ci/run installs it)"
)
def test_promtool_accepts_the_prometheus_configuration(tmp_path: Path) -> None:
    config = COMPOSE_DIR / "prometheus.yml"
    subprocess.run(["promtool", "check", "config", str(config)], check=True, capture_output=True, timeout=60)
    broken = tmp_path / "prometheus.yml"
    broken.write_text(config.read_text().replace("scrape_interval: 15s", "scrape_interval: fifteen"))
    result = subprocess.run(
        ["promtool", "check", "config", str(broken)], check=False, capture_output=True, timeout=60
    )
    assert result.returncode != 0
