"""deploy/kubernetes/: each overlay, rendered as `kubectl apply -k` renders it
(tests/support/kustomize.py), and the serving-pod example are valid against the Kubernetes
schemas (kubernetes-validate, offline, strict: an unknown field is an error), and hold what the
README says about them: probes, the disruption budget and autoscaler, the migrations Job, a
worker per toolchain sized for its compiles, with a termination grace that hands a running
compile back, settings that neffcache reads, and secrets every reference finds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from neffcache.settings import Settings
from neffcache.workers.__main__ import SHUTDOWN_GRACE_S
from tests.support.kustomize import documents, pod_spec, render

KUBERNETES = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
EXAMPLE = KUBERNETES / "examples" / "serving-pod.yaml"
SCHEMA_VERSION = "1.33.0"  # the oldest Kubernetes release still supported upstream when this was written
GIB = 1024**3
# A large neuronx-cc compile (README, "Compile hosts with neuronx-cc").
NEURONX_CC_COMPILE_BYTES = 64 * GIB


def quantity(text: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


@pytest.fixture(params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def test_there_are_overlays() -> None:
    assert {p.name for p in OVERLAYS} == {"production", "small"}


@pytest.mark.parametrize("name", [p.name for p in OVERLAYS] + ["examples/serving-pod.yaml"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(name: str) -> None:
    resources = documents(EXAMPLE) if name.startswith("examples/") else render(KUBERNETES / "overlays" / name)
    assert resources
    for resource in resources:
        kubernetes_validate.validate(resource, SCHEMA_VERSION, strict=True)  # raises naming the field


def test_the_api_has_probes_a_disruption_budget_and_an_autoscaler(rendered: list[dict[str, Any]]) -> None:
    api = by_kind(rendered, "Deployment")["neffcache-api"]
    container = pod_spec(api)["containers"][0]  # type: ignore[index]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    selector = api["spec"]["selector"]["matchLabels"]
    assert by_kind(rendered, "PodDisruptionBudget")["neffcache-api"]["spec"]["selector"]["matchLabels"] == selector
    assert by_kind(rendered, "Service")["neffcache"]["spec"]["selector"] == selector
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["neffcache-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "neffcache-api" and hpa["minReplicas"] <= hpa["maxReplicas"]
    assert by_kind(rendered, "NetworkPolicy")["neffcache-api"]["spec"]["podSelector"]["matchLabels"] == selector


def test_the_migrations_job_runs_neffcache_server_migrate(rendered: list[dict[str, Any]]) -> None:
    job = by_kind(rendered, "Job")["neffcache-migrate"]
    assert pod_spec(job)["containers"][0]["command"] == ["neffcache-server", "migrate"]  # type: ignore[index]


def test_a_worker_per_toolchain_sized_for_its_compiles_that_hands_a_running_compile_back(
        rendered: list[dict[str, Any]]) -> None:
    workers = {d["spec"]["template"]["metadata"]["labels"]["neffcache.io/toolchain"]: d
               for name, d in by_kind(rendered, "Deployment").items() if name.startswith("neffcache-worker")}
    assert set(workers) == {"inductor", "neuronx-cc"}
    for toolchain, worker in workers.items():
        spec = pod_spec(worker)
        assert spec is not None
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NEFFCACHE_WORKER_BACKEND"] == toolchain
        # The hook's warm-shutdown request, then the kubelet's SIGTERM (cold): the worker records
        # its stop within its shutdown grace, well inside the pod's.
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        hook_s = float(hook[-1].rsplit("sleep ", 1)[1])
        assert "kill -TERM 1" in hook[-1] and hook_s > 1  # RQ ignores a second signal within a second
        assert spec["terminationGracePeriodSeconds"] >= hook_s + SHUTDOWN_GRACE_S + 10
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert quantity(requests["memory"]) <= quantity(limits["memory"])
    production = rendered[0]["metadata"].get("namespace") == "neffcache"
    neuron = workers["neuronx-cc"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    if production:
        assert quantity(neuron["requests"]["memory"]) >= NEURONX_CC_COMPILE_BYTES


def test_the_settings_are_ones_neffcache_reads_and_the_logs_are_json(rendered: list[dict[str, Any]]) -> None:
    data = by_kind(rendered, "ConfigMap")["neffcache-settings"]["data"]
    fields = {f"NEFFCACHE_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields
    settings = Settings(**{k.removeprefix("NEFFCACHE_").lower(): v for k, v in data.items()})
    assert settings.log_format == "json" and settings.auth_required


def test_every_secret_and_config_reference_is_found(rendered: list[dict[str, Any]]) -> None:
    secrets = {name: set(s.get("stringData", {})) | set(s.get("data", {}))
               for name, s in by_kind(rendered, "Secret").items()}
    configs = set(by_kind(rendered, "ConfigMap"))
    accounts = set(by_kind(rendered, "ServiceAccount"))
    for resource in rendered:
        spec = pod_spec(resource)
        if spec is None:
            continue
        assert spec["serviceAccountName"] in accounts
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configs
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secrets[ref["name"]], (resource["metadata"]["name"], ref)
    images = {c["image"] for r in rendered if pod_spec(r) for c in pod_spec(r)["containers"]}  # type: ignore[index]
    assert all(":" in image for image in images)  # every image pinned by the overlay


def test_the_serving_pod_pulls_its_lock_before_the_server_starts() -> None:
    resources = documents(EXAMPLE)
    serving = by_kind(resources, "Deployment")["encoder"]
    spec = pod_spec(serving)
    assert spec is not None
    init = spec["initContainers"][0]
    command = init["command"]
    assert command[:2] == ["neffcache", "pull"]
    assert command[command.index("--lock") + 1].startswith("/specs/")
    assert command[command.index("--dest") + 1] == "/neffs"
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["neffs"]["readOnly"] is True
    env = {e["name"]: e for e in init["env"]}
    assert env["NEFFCACHE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] in by_kind(resources, "Secret")


def test_the_validation_refuses_what_kubernetes_would() -> None:
    api = by_kind(render(OVERLAYS[0]), "Deployment")["neffcache-api"]
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(api, SCHEMA_VERSION, strict=True)
