"""Render a kustomization the way `kubectl apply -k` does, for the subset of kustomize that
deploy/kubernetes/ uses: `resources` (files, and folders with their own kustomization.yaml),
`namespace`, `images` (newName, newTag) and `patches` given inline as JSON 6902 operations
with a kind and name target. Anything else in a kustomization is refused, so an overlay that
starts using more of kustomize fails its test instead of being rendered wrong."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Kinds without a namespace (kustomize leaves them as they are).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml: {sorted(unknown)} are not rendered here "
                         "(tests/support/kustomize.py)")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        resources.extend(render(path) if path.is_dir() else documents(path))
    resources = copy.deepcopy(resources)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [r for r in resources if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]]
        if len(matched) != 1:
            raise ValueError(f"{folder}: patch target {target} matches {len(matched)} resources")
        patched = jsonpatch.apply_patch(matched[0], yaml.safe_load(patch["patch"]))
        resources[resources.index(matched[0])] = patched
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    return None


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(resource)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]
