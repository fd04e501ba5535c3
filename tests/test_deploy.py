"""The Kubernetes manifests under deploy/: valid against Kubernetes' own schemas (kubernetes-validate,
strict: no unknown field), and saying what the service needs: its probes, a non-root read-only
container, a grace period that fits the longest request, one GPU in the GPU variant."""
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = "1.37.0"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merged(base, patch):
    """Kustomize's strategic merge, as far as the GPU patch needs it: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {key: merged(base[key], value) if key in base else value for key, value in patch.items()} | {
            key: value for key, value in base.items() if key not in patch}
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        names = {item["name"]: item for item in base}
        out = [merged(names[item["name"]], item) if item["name"] in names else item for item in patch]
        return out + [item for item in base if item["name"] not in {p["name"] for p in patch}]
    return patch


def gpu_deployment() -> dict:
    kustomization = load(DEPLOY / "gpu" / "kustomization.yaml")
    assert "../deployment.yaml" in kustomization["resources"]
    [patch] = [load(DEPLOY / "gpu" / p["path"]) for p in kustomization["patches"]]
    return merged(load(DEPLOY / "deployment.yaml"), patch)


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml", "gpu"])
def test_every_manifest_is_valid_kubernetes(name):
    resource = gpu_deployment() if name == "gpu" else load(DEPLOY / name)
    kubernetes_validate.validate(resource, KUBERNETES, strict=True)  # raises on any error


def test_an_invalid_manifest_is_caught():
    broken = load(DEPLOY / "deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_deployment_says_what_the_service_needs():
    spec = load(DEPLOY / "deployment.yaml")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # uploads spool there
    assert {"requests", "limits"} <= set(container["resources"])
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["OMP_NUM_THREADS"] == container["resources"]["limits"]["cpu"]
    longest_request = float(env.get("CAPTIONER_BODY_TIMEOUT_S", Settings().body_timeout_s)) + float(
        env.get("CAPTIONER_REQUEST_TIMEOUT_S", Settings().request_timeout_s))
    drain_delay = float(env.get("CAPTIONER_DRAIN_DELAY_S", Settings().drain_delay_s))
    assert drain_delay >= container["readinessProbe"]["periodSeconds"] * container["readinessProbe"].get("failureThreshold", 3)
    assert spec["terminationGracePeriodSeconds"] >= drain_delay + longest_request


def test_the_service_and_the_autoscaler_point_at_the_deployment():
    deployment, service, hpa = (load(DEPLOY / f) for f in ("deployment.yaml", "service.yaml", "hpa.yaml"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {port["name"] for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2  # a rolling update or a lost node never leaves none


def test_the_gpu_variant_asks_for_one_gpu_and_the_cuda_image():
    [container] = gpu_deployment()["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["memory"]  # the CPU limits are kept
    assert container["image"].endswith("-cuda")
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["CAPTIONER_DEVICE"] == "cuda" and env["OMP_NUM_THREADS"] == "2"
