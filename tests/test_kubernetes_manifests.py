"""The Kubernetes manifests in docs/kubernetes/ are what a cluster accepts: every document
passes the Kubernetes schemas in strict mode (an unknown or misspelt field fails), and the
lbhealthd config they carry passes the checks of `lbhealthd check-config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lbhealthd.cli import main

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "docs" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes the manifests are written for, and the newest the schemas ship with.
VERSIONS = ("1.30", kubernetes_validate.latest_version())
# The key under which a ConfigMap carries an lbhealthd config (mounted at /etc/lbhealthd).
CONFIG_KEY = "config.yaml"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _embedded_configs() -> list[Any]:
    """One pytest param per lbhealthd config in a ConfigMap, named FILE:CONFIGMAP."""
    found = []
    for path in MANIFESTS:
        for doc in _documents(path):
            if doc["kind"] == "ConfigMap" and CONFIG_KEY in doc.get("data", {}):
                where = f"{path.name}:{doc['metadata']['name']}"
                found.append(pytest.param(where, doc["data"][CONFIG_KEY], id=where))
    return found


def _schema_errors(doc: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{doc['kind']} {doc['metadata'].get('name')}: {exc.message} at {list(exc.path)}"
    return None


def test_there_are_manifests_and_configs_to_check() -> None:
    """The manifests are found, and at least one carries an lbhealthd config."""
    assert {p.name for p in MANIFESTS} >= {"lbhealthd-sidecar.yaml", "agent-sidecar.yaml"}
    assert _embedded_configs()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_document_passes_the_kubernetes_schemas(path: Path, version: str) -> None:
    """Every document of the manifest is valid for Kubernetes ``version``, unknown fields
    refused."""
    docs = _documents(path)
    assert docs
    errors = [e for e in (_schema_errors(d, version) for d in docs) if e is not None]
    assert errors == []


def test_a_misspelt_field_is_refused() -> None:
    """The schema check is strict: a misspelt field of a container fails it."""
    deployment = next(
        d
        for d in _documents(ROOT / "docs/kubernetes/lbhealthd-sidecar.yaml")
        if d["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy", "IfNotPresent")
    error = _schema_errors(deployment, VERSIONS[0])
    assert error is not None
    assert "imagePullPolicyy" in error


@pytest.mark.parametrize(("where", "text"), _embedded_configs())
def test_embedded_config_passes_check_config(
    where: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lbhealthd config a ConfigMap carries is accepted by `lbhealthd check-config`."""
    path = tmp_path / CONFIG_KEY
    path.write_text(text)
    assert main(["check-config", "-c", str(path)]) == 0, where
    assert ": OK: " in capsys.readouterr().out
