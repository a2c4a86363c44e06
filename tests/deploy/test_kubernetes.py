"""deploy/kubernetes: every Kustomize target renders with kustomize (kubectl's, from the test
extra) into resources valid by Kubernetes' own schemas (kubernetes-validate, strict: unknown
fields are errors), wired as docs/deploy.md says."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .support import DEPLOY, HANDOVER_SECONDS, tool

KUSTOMIZE_DIR = DEPLOY / "kubernetes"
TARGETS = ["base", "overlays/production", "overlays/dev"]
# The oldest Kubernetes the manifests need (kubelet's gRPC probes are GA from 1.27), and the
# newest the validator knows.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version() + ".0"]
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com/",)
"""Custom resources Kubernetes has no schema for: the Prometheus Operator's ServiceMonitor."""
EXTERNAL_SECRETS = {"cofounder-secrets", "cofounder-principals"}
"""Secrets the operator creates before applying the base or the production overlay."""

Resource = dict[str, Any]


@functools.cache
def rendered(target: str) -> tuple[Resource, ...]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(KUSTOMIZE_DIR / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def one(target: str, kind: str, name: str) -> Resource:
    """The resource of this kind and name (a generated one may carry kustomize's hash suffix)."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    (found,) = [r for r in rendered(target) if r["kind"] == kind and pattern.fullmatch(r["metadata"]["name"])]
    return found


def server_deployment(target: str) -> Resource:
    return one(target, "Deployment", "cofounder-server")


def settings(target: str) -> dict[str, str]:
    data: dict[str, str] = one(target, "ConfigMap", "cofounder-config")["data"]
    return data


def pod_specs(target: str) -> list[Resource]:
    return [r["spec"]["template"]["spec"] for r in rendered(target) if r["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_resource_is_valid_kubernetes(target: str, version: str) -> None:
    resources = rendered(target)
    assert {"Deployment", "Job", "Service", "PodDisruptionBudget", "ConfigMap"} <= {
        r["kind"] for r in resources
    }
    for resource in resources:
        if resource["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
            continue
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_validation_catches_a_misspelled_field() -> None:
    """The check above can fail: strict validation rejects a field Kubernetes does not know."""
    deployment = copy.deepcopy(server_deployment("base"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbes"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_probes_ask_grpc_health_on_the_port_the_server_listens_on(target: str) -> None:
    listen_port = int(settings(target)["COFOUNDER_LISTEN"].rpartition(":")[2])
    (container,) = server_deployment(target)["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": listen_port, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": listen_port}, probe
    metrics_port = int(settings(target)["COFOUNDER_METRICS_LISTEN"].rpartition(":")[2])
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in container["ports"]


def drain_seconds(spec: Resource, config: dict[str, str]) -> float:
    """The longest a stop takes from SIGTERM's decision to the exit: a preStop sleep (if any),
    the pause, in-flight calls for the grace, the agents for as long, then the hand-over."""
    lifecycle = spec["containers"][0].get("lifecycle", {})
    pre_stop = float(lifecycle.get("preStop", {}).get("sleep", {}).get("seconds", 0))
    pause = float(config["COFOUNDER_DRAIN_PAUSE_SECONDS"])
    grace = float(config["COFOUNDER_SHUTDOWN_GRACE_SECONDS"])
    return pre_stop + pause + 2 * grace + HANDOVER_SECONDS


@pytest.mark.parametrize("target", TARGETS)
def test_kubernetes_waits_for_the_drain_before_killing(target: str) -> None:
    spec = server_deployment(target)["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= drain_seconds(spec, settings(target))


@pytest.mark.parametrize(
    ("setting", "value"),
    [("COFOUNDER_DRAIN_PAUSE_SECONDS", "30"), ("COFOUNDER_SHUTDOWN_GRACE_SECONDS", "25")],
    ids=["longer-pause", "longer-grace"],
)
def test_a_longer_drain_without_a_longer_termination_grace_period_is_caught(setting: str, value: str) -> None:
    """The check above can fail."""
    spec = server_deployment("base")["spec"]["template"]["spec"]
    config = settings("base") | {setting: value}
    assert spec["terminationGracePeriodSeconds"] < drain_seconds(spec, config)


@pytest.mark.parametrize("target", TARGETS)
def test_the_drain_pause_outlasts_the_readiness_probe(target: str) -> None:
    """Streams end only once the pod is unready by its probe as well as by its termination."""
    (container,) = server_deployment(target)["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]
    pause = float(settings(target)["COFOUNDER_DRAIN_PAUSE_SECONDS"])
    assert pause >= probe["periodSeconds"] * probe["failureThreshold"]
    # The server serves on by itself for the pause: a preStop sleep would only lengthen the stop,
    # with health still SERVING.
    assert "preStop" not in container.get("lifecycle", {})


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_non_root_on_a_read_only_root_filesystem(target: str) -> None:
    server_specs = [
        server_deployment(target)["spec"]["template"]["spec"],
        one(target, "Job", "cofounder-migrate")["spec"]["template"]["spec"],
    ]
    for spec in server_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_resource_requests_and_a_memory_limit(target: str) -> None:
    for spec in pod_specs(target):
        for container in spec["containers"]:
            assert container["resources"]["requests"]["memory"], container["name"]
            assert container["resources"]["limits"]["memory"], container["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_services_and_the_disruption_budget_select_the_server_pods_only(target: str) -> None:
    server_labels = server_deployment(target)["spec"]["template"]["metadata"]["labels"]
    job_labels = one(target, "Job", "cofounder-migrate")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one(target, "Service", "cofounder-server")["spec"]["selector"],
        one(target, "Service", "cofounder-server-headless")["spec"]["selector"],
        one(target, "PodDisruptionBudget", "cofounder-server")["spec"]["selector"]["matchLabels"],
        server_deployment(target)["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= server_labels.items()
        assert not selector.items() <= job_labels.items()
    assert one(target, "Service", "cofounder-server-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("target", TARGETS)
def test_the_migration_job_migrates_the_database_the_servers_use(target: str) -> None:
    job = one(target, "Job", "cofounder-migrate")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    (server,) = server_deployment(target)["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == server["image"]
    database = {e["name"]: e for e in server["env"]}["COFOUNDER_DATABASE_URL"]
    assert {e["name"]: e for e in migrate["env"]}["COFOUNDER_DATABASE_URL"] == database
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"


@pytest.mark.parametrize("target", TARGETS)
def test_every_secret_referenced_is_rendered_or_created_by_the_operator(target: str) -> None:
    rendered_secrets = {r["metadata"]["name"] for r in rendered(target) if r["kind"] == "Secret"}
    referenced: set[str] = set()
    for spec in pod_specs(target):
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
        for container in spec["containers"]:
            for variable in container.get("env", []):
                if "secretKeyRef" in variable.get("valueFrom", {}):
                    referenced.add(variable["valueFrom"]["secretKeyRef"]["name"])
    assert referenced
    assert referenced - rendered_secrets <= EXTERNAL_SECRETS
    if target == "overlays/dev":
        assert referenced <= rendered_secrets, "the dev overlay brings its own"


def test_production_runs_several_replicas_and_evicts_one_at_a_time() -> None:
    target = "overlays/production"
    assert server_deployment(target)["spec"]["replicas"] >= 2
    assert one(target, "PodDisruptionBudget", "cofounder-server")["spec"]["maxUnavailable"] == 1
    assert {r["metadata"].get("namespace") for r in rendered(target) if r["kind"] != "Namespace"} == {
        "cofounder"
    }
    monitor = one(target, "ServiceMonitor", "cofounder-server")
    service = one(target, "Service", "cofounder-server")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in service["spec"]["ports"]}
