"""deploy/helm/ltrr: rendered by Helm's own Go SDK (helm-python-sdk, no helm binary), linted,
every manifest validated against the Kubernetes schemas, and what it runs checked against the
server: the ports, the health probes, the configuration the server reads."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from ltrr_server.config import settings_from_toml

CHART = Path(__file__).parents[2] / "deploy" / "helm" / "ltrr"
KUBERNETES = "1.30.0"

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (uv sync --group deploy; CI does)")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")


def render(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The chart's manifests, by kind, for release 'search' (each template one document or none)."""
    out = helm.Chart.load(CHART).render(values or {}, name="search", namespace="ltrr")
    docs = [yaml.safe_load(text) for text in out.values()]
    return {d["kind"]: d for d in docs if d}


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [c] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def env(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifests)["env"]}


VALUES = [
    {},
    {"demo": True, "persistence": {"enabled": False}},
    {"database": {"existingSecret": "ltrr-db"}, "replicaCount": 2,
     "tls": {"existingSecret": "ltrr-tls", "clientCaKey": "ca.crt", "metricsTls": True},
     "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
     "env": {"LTRR_LIMITS__MAX_POLICIES": 20}},
]


@pytest.mark.parametrize("values", VALUES, ids=["defaults", "demo", "postgres-tls-monitor"])
def test_the_chart_lints_and_every_manifest_validates(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True)
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report
    for kind, manifest in render(values).items():
        if kind == "ServiceMonitor":  # a custom resource: the operator's schema is not Kubernetes'
            assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_defaults_serve_the_production_configuration_with_health_probes() -> None:
    m = render()
    c = container(m)
    # The server's own ports, named as the Service and the probes use them.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    service = {p["name"]: p["port"] for p in m["Service"]["spec"]["ports"]}
    assert ports == service == {"grpc": 50051, "metrics": 9464}
    assert c["args"] == ["serve", "--host", "0.0.0.0", "--grpc-port", "50051", "--metrics-port", "9464"]
    # Readiness from gRPC health (NOT_SERVING while a part cannot work); liveness only the port.
    assert c["readinessProbe"]["grpc"] == {"port": 50051} and c["startupProbe"]["grpc"] == {"port": 50051}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    # The ConfigMap is the file the server reads: valid for ltrr, keys required, no demo.
    assert env(m)["LTRR_CONFIG"] == "/etc/ltrr/config/ltrr.toml"
    text = m["ConfigMap"]["data"]["ltrr.toml"]
    tomllib.loads(text)
    settings = settings_from_toml(text)
    assert settings.auth == "keys" and not settings.policies and not settings.retrieval.enabled
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts["config"] == "/etc/ltrr/config" and mounts["data"] == "/data"
    assert m["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert m["Deployment"]["spec"]["strategy"]["type"] == "Recreate"  # one pod on a ReadWriteOnce volume


def test_postgres_tls_and_the_service_monitor() -> None:
    m = render(VALUES[2])
    e = env(m)
    assert e["LTRR_DB_URL"] == {"secretKeyRef": {"name": "ltrr-db", "key": "url"}}
    assert (e["LTRR_TLS_CERT"], e["LTRR_TLS_CLIENT_CA"]) == ("/etc/ltrr/tls/tls.crt", "/etc/ltrr/tls/ca.crt")
    assert e["LTRR_LIMITS__MAX_POLICIES"] == "20"
    # Kubernetes' gRPC probe cannot speak TLS: readiness falls back to the port.
    assert "tcpSocket" in container(m)["readinessProbe"]
    monitor = m["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert m["Service"]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "ltrr"  # alerts select job="ltrr"


@pytest.mark.parametrize("values,where", [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"log": {"format": "xml"}}, "/log/format"),
    ({"env": {"PORT": "1"}}, "PORT"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"service": {"grpcPort": 70000}}, "/service/grpcPort"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_values_are_refused_naming_the_field(values: dict[str, Any], where: str) -> None:
    with pytest.raises(Exception) as err:
        render(values)
    assert where in str(err.value)
