"""Static checks of what cannot run here (no Docker engine, no cluster): Dockerfile, compose,
Prometheus, Kubernetes and Grafana files must agree with the code and with each other."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from focalserve_server.app import create_app
from focalserve_server.config import Settings

ROOT = Path(__file__).resolve().parents[3]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def k8s(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()) if doc]


def gateway_routes() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


def test_dockerfile_copy_sources_exist_and_image_is_hardened():
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    assert re.search(r"^FROM .* AS build$", text, re.M) and re.search(r"^FROM .* AS runtime$", text, re.M)
    assert re.search(r"^USER focalserve$", text, re.M)
    assert "ARG TORCH_VARIANT" in text and "HEALTHCHECK" in text
    healthcheck = text[text.index("HEALTHCHECK"):]
    assert "/healthz" in healthcheck and "/healthz" in gateway_routes()


def test_dockerfile_env_names_are_settings():
    env_block = (ROOT / "Dockerfile").read_text().split("ENV PATH=/opt/venv/bin:$PATH \\", 1)[1]
    names = re.findall(r"FOCALSERVE_([A-Z_]+)=", env_block)
    assert names and all(name.lower() in Settings.model_fields for name in names)


def test_compose_services_files_ports_and_env():
    services = compose()["services"]
    assert set(services) == {"triton", "gateway", "prometheus", "export"}
    triton, gateway = services["triton"], services["gateway"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert gateway["environment"]["FOCALSERVE_BACKEND"] == "triton"
    assert gateway["environment"]["FOCALSERVE_TRITON_URL"] == "triton:8001"
    for name in gateway["environment"]:
        assert name.removeprefix("FOCALSERVE_").lower() in Settings.model_fields, name
    assert "--grpc-port=8001" in triton["command"] and "--metrics-port=8002" in triton["command"]
    assert "127.0.0.1:8000:8000" in gateway["ports"]
    assert services["export"]["profiles"] == ["export"] and "--backend=libtorch" in services["export"]["command"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "runs/" not in source:  # runs/ is created by training
                assert (ROOT / source).exists(), source
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # nothing published beyond the host


def test_prometheus_scrapes_the_compose_services():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"gateway:8000", "triton:8002"}
    assert "/metrics" in gateway_routes()


def test_kubernetes_probes_point_at_real_endpoints_and_ports_agree():
    routes = gateway_routes()
    documents = k8s("gateway.yaml") + k8s("triton.yaml")
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(["Deployment", "Service", "HorizontalPodAutoscaler"] * 2)
    for doc in documents:
        if doc["kind"] != "Deployment":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            path = container[probe]["httpGet"]["path"]
            if doc["metadata"]["name"] == "triton":
                assert path in ("/v2/health/ready", "/v2/health/live")
            else:
                assert path in routes
        if doc["metadata"]["name"] == "triton":
            assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        else:
            assert ports == {"http": 8000}
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["FOCALSERVE_TRITON_URL"] == "triton:8001"
            assert all(name.removeprefix("FOCALSERVE_").lower() in Settings.model_fields for name in env)


@pytest.mark.parametrize("metric", ["focalserve_request_duration_seconds", "focalserve_batch_size",
                                    "focalserve_queue_depth", "focalserve_condition_cache_total",
                                    "focalserve_rejected_total"])
def test_grafana_dashboard_uses_the_gateways_metrics(metric):
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "focalserve.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    assert metric in expressions
    from focalserve_server.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    assert metric.removesuffix("_total") in exported
