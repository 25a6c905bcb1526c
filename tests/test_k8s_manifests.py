"""The Kubernetes manifests in deploy/k8s (issue 13, point 3) are valid and wired together.

Every manifest is checked against the Kubernetes API schemas that kubernetes-validate ships
(strict: an unknown field is an error), kustomization.yaml lists every file, and the parts
agree: the nodes register through the coordinators' Service, every long-running container
has probes and resource requests, only coordinator pods may reach the nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # the test extras: it ships the schemas (and brings PyYAML)
import pytest
import yaml

from harness import REPO

K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # a current release; the manifests use only long-stable APIs
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_resources() -> dict[str, dict[str, Any]]:
    """Every resource by "Kind/name"."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for p in MANIFESTS for d in documents(p)}


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return list(resource["spec"]["template"]["spec"]["containers"])


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises when invalid


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_nodes_register_with_every_coordinator_replica() -> None:
    resources = all_resources()
    service = resources["Service/fedcluster-coordinator-peers"]
    assert service["spec"]["clusterIP"] == "None"  # headless: the name resolves to each pod
    port = service["spec"]["ports"][0]["port"]
    assert resources["Service/fedcluster-coordinator"]["spec"]["ports"][0]["port"] == port
    (node,) = containers(resources["Deployment/fedcluster-node"])
    args = node["args"]
    assert args[args.index("--coordinator") + 1] == f"fedcluster-coordinator-peers:{port}"
    assert args[args.index("--advertise-host") + 1] == "$(POD_IP)"
    selector = service["spec"]["selector"]
    labels = resources["Deployment/fedcluster-coordinator"]["spec"]["template"]["metadata"]
    assert selector.items() <= labels["labels"].items()
    assert resources["Deployment/fedcluster-coordinator"]["spec"]["replicas"] == 2


def test_servers_have_probes_requests_and_the_token() -> None:
    resources = all_resources()
    for name in ("Deployment/fedcluster-coordinator", "Deployment/fedcluster-node"):
        (container,) = containers(resources[name])
        assert container["readinessProbe"] and container["livenessProbe"], name
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert "--token-file" in container["args"], name
        pod = resources[name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name


def test_only_coordinators_reach_the_nodes() -> None:
    resources = all_resources()
    policy = resources["NetworkPolicy/fedcluster-node"]["spec"]
    node_labels = resources["Deployment/fedcluster-node"]["spec"]["template"]["metadata"]
    coordinator_labels = (
        resources["Deployment/fedcluster-coordinator"]["spec"]["template"]["metadata"])
    assert policy["podSelector"]["matchLabels"].items() <= node_labels["labels"].items()
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= coordinator_labels["labels"].items()
    assert not source["podSelector"]["matchLabels"].items() <= node_labels["labels"].items()


def test_training_job_writes_to_the_results_claim() -> None:
    resources = all_resources()
    job = resources["Job/fedcluster-train"]
    (client,) = containers(job)
    mounts = {m["name"]: m["mountPath"] for m in client["volumeMounts"]}
    assert client["args"][client["args"].index("--model-out") + 1].startswith(mounts["results"])
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["results"]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in resources
