"""Static checks of what cannot run here (no Docker engine, no cluster): Dockerfile, compose,
Prometheus, Kubernetes and Grafana files must agree with the code and with each other."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from focalserve_server.app import create_app
from focalserve_server.config import Settings

ROOT = Path(__file__).resolve().parents[3]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def k8s(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()) if doc]


def k8s_one(name: str, kind: str) -> dict:
    (doc,) = [doc for doc in k8s(name) if doc["kind"] == kind]
    return doc


def compose_defaults(value: str) -> str:
    """A compose value as it reads with no variables set: `${NAME:-default}` becomes `default`."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def compose_variables(value: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_]+)", value))


def secret_ref(env: dict, name: str) -> tuple[str, str]:
    """The (Secret, key) a container's variable reads; never a literal value."""
    assert "value" not in env[name], f"{name} must come from a Secret"
    ref = env[name]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


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
    assert set(services) == {"triton", "postgres", "gateway", "prometheus", "export"}
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


def test_the_gateway_hands_images_to_triton_by_shared_memory_only_where_they_share_a_host():
    """compose runs both on one host with one IPC namespace (Triton's /dev/shm); k8s in separate pods."""
    services = compose()["services"]
    triton, gateway = services["triton"], services["gateway"]
    assert triton["ipc"] == "shareable" and gateway["ipc"] == "service:triton"
    assert gateway["environment"]["FOCALSERVE_TRITON_SHARED_MEMORY"] == "true"
    assert int(compose_defaults(gateway["environment"]["FOCALSERVE_WORKERS"])) > 1
    pod = k8s_one("gateway.yaml", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    environment = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert environment["FOCALSERVE_TRITON_SHARED_MEMORY"] == "false"
    assert int(environment["FOCALSERVE_WORKERS"]) > 1
    shm = next(volume for volume in pod["volumes"] if volume["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_compose_gateway_keeps_its_collections_in_the_postgres_service():
    config = compose()
    postgres, gateway = config["services"]["postgres"], config["services"]["gateway"]
    assert postgres["image"].removeprefix("${POSTGRES_IMAGE:-").startswith("postgres:16")
    volume, mount = postgres["volumes"][0].split(":")[:2]
    assert volume in config["volumes"] and mount == "/var/lib/postgresql/data"  # a named volume, not the container
    environment = postgres["environment"]
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        # overridable from the host's environment, with a default so `docker compose up` works as it is
        assert re.fullmatch(rf"\$\{{{name}:-[^}}]+\}}", environment[name]), environment[name]
    check = postgres["healthcheck"]
    assert check["test"][0] == "CMD-SHELL" and "pg_isready" in check["test"][1] and check["retries"] >= 1
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = gateway["environment"]["FOCALSERVE_DATABASE_URL"]
    # the gateway logs in with the very variables the server was created with
    assert compose_variables(url) <= compose_variables(" ".join(environment.values()))
    parts = urlsplit(compose_defaults(url))
    assert (parts.scheme, parts.hostname, parts.port) == ("postgresql", "postgres", 5432)
    assert parts.username == compose_defaults(environment["POSTGRES_USER"])
    assert parts.password == compose_defaults(environment["POSTGRES_PASSWORD"])
    assert parts.path == "/" + compose_defaults(environment["POSTGRES_DB"])
    assert "ports" not in postgres  # only the gateway talks to it, over the compose network


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
            env = {e["name"]: e.get("value") for e in container["env"]}
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


def claims_of(pod: dict) -> dict[str, dict]:
    volumes = pod["volumes"]
    return {volume["name"]: volume["persistentVolumeClaim"] for volume in volumes if "persistentVolumeClaim" in volume}


def test_kubernetes_gateways_hold_no_state_and_read_the_database_url_from_a_secret():
    pod = k8s_one("gateway.yaml", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    secret = k8s_one("secret.example.yaml", "Secret")
    name, key = secret_ref(env, "FOCALSERVE_DATABASE_URL")
    assert name == secret["metadata"]["name"] and key in secret["stringData"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
    # a cache at most, and every scratch volume says it is one; /dev/shm holds the running processes'
    # sockets and metrics files, gone with the pod by design
    scratch = {name for name, volume in volumes.items() if "emptyDir" in volume} - {mounts["/dev/shm"]["name"]}
    assert all("cache" in name for name in scratch), volumes
    data_dir = env["FOCALSERVE_DATA_DIR"]["value"]
    assert "cache" in mounts[data_dir]["name"] and "emptyDir" in volumes[mounts[data_dir]["name"]]
    # the one claim is Triton's model repository, read-only, where the gateway reads the tokenizers
    triton_pod = k8s_one("triton.yaml", "Deployment")["spec"]["template"]["spec"]
    triton_claims = {claim["claimName"] for claim in claims_of(triton_pod).values()}
    claims = claims_of(pod)
    assert all(claim["claimName"] in triton_claims and claim["readOnly"] for claim in claims.values()), claims
    repository = mounts[env["FOCALSERVE_MODEL_REPOSITORY"]["value"]]
    assert repository["name"] in claims and repository["readOnly"]


def test_kubernetes_postgres_is_a_statefulset_with_a_claim_a_headless_service_and_probes():
    statefulset = k8s_one("postgres.yaml", "StatefulSet")
    service = k8s_one("postgres.yaml", "Service")
    assert sorted(doc["kind"] for doc in k8s("postgres.yaml")) == ["Service", "StatefulSet"]
    spec = statefulset["spec"]
    assert spec["replicas"] == 1  # one writer: a second replica would be a second database, not a standby
    assert spec["serviceName"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"].startswith("postgres:")
    env = {e["name"]: e for e in container["env"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    # the database lives on the claim, in a subdirectory (a fresh volume's root may hold lost+found)
    assert env["PGDATA"]["value"].startswith(mounts[claim["metadata"]["name"]] + "/")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == service_port["port"] == 5432
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "pg_isready" in command and "-h 127.0.0.1" in command, probe  # TCP: not the init-time server
    secret = k8s_one("secret.example.yaml", "Secret")
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
        secret_name, key = secret_ref(env, name)
        assert secret_name == secret["metadata"]["name"] and key in secret["stringData"]


def test_kubernetes_secret_example_is_a_placeholder_that_points_the_gateways_at_the_statefulset():
    text = (ROOT / "deploy" / "k8s" / "secret.example.yaml").read_text()
    assert "placeholder" in text and "external" in text and "Replace" in text
    data = k8s_one("secret.example.yaml", "Secret")["stringData"]
    assert "CHANGE-ME" in data["password"]
    statefulset = k8s_one("postgres.yaml", "StatefulSet")
    url = urlsplit(data["url"])
    database = {e["name"]: e.get("value") for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    # the first (only) pod by its stable name under the headless Service
    assert url.hostname == f"{statefulset['metadata']['name']}-0.{statefulset['spec']['serviceName']}"
    assert (url.scheme, url.port, url.path) == ("postgresql", 5432, "/" + database["POSTGRES_DB"])
    assert (url.username, url.password) == (data["username"], data["password"])


def test_stack_script_binds_postgres_to_loopback_and_stops_everything_on_exit():
    script = (ROOT / "deploy" / "stack.sh").read_text()
    assert "listen_addresses=127.0.0.1" in script and "trap cleanup EXIT" in script
    cleanup = script[script.index("cleanup() {"):script.index("\n}\n", script.index("cleanup() {"))]
    assert "pg_ctl\" stop" in cleanup and "kill" in cleanup
    assert 'FOCALSERVE_DATABASE_URL="$DATABASE_URL"' in script and '"$((PORT + 1))"' in script
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^stack: .*\$\(PG_BIN\)/initdb", make, re.M)  # installs PostgreSQL when it is missing


def rayjob_pods() -> dict[str, dict]:
    """The pod templates of the ingest RayJob's cluster: `head`, then each worker group by its name."""
    cluster = k8s_one("ingest-rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"]
    groups = {group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]}
    return {"head": cluster["headGroupSpec"]["template"]["spec"], **groups}


def test_kubernetes_rayjob_runs_focalserve_ingest_on_a_cluster_it_removes():
    from focalserve_server.cli import build_parser

    (job,) = k8s("ingest-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["focalserve", "ingest"]
    args = build_parser("ingest").parse_args(argv[1:])  # the real flags: a renamed one fails here
    assert args.collection and args.output is None
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no actor or task on the head
    assert spec["rayClusterSpec"]["workerGroupSpecs"]


def test_kubernetes_rayjob_pods_use_the_gateways_image_secret_and_model_claim():
    gateway_pod = k8s_one("gateway.yaml", "Deployment")["spec"]["template"]["spec"]
    (gateway,) = gateway_pod["containers"]
    gateway_env = {e["name"]: e for e in gateway["env"]}
    gateway_claims = {claim["claimName"] for claim in claims_of(gateway_pod).values()}
    for group, pod in rayjob_pods().items():
        claims = claims_of(pod)
        for container in pod["containers"]:
            assert container["image"] == gateway["image"], group
            env = {e["name"]: e for e in container["env"]}
            assert all(name.removeprefix("FOCALSERVE_").lower() in Settings.model_fields for name in env), group
            assert secret_ref(env, "FOCALSERVE_DATABASE_URL") == secret_ref(gateway_env, "FOCALSERVE_DATABASE_URL")
            mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
            repository = mounts[env["FOCALSERVE_MODEL_REPOSITORY"]["value"]]
            claim = claims[repository["name"]]
            assert claim["claimName"] in gateway_claims and claim["readOnly"] and repository["readOnly"], group


def test_kubernetes_rayjob_workers_each_have_a_gpu_and_run_the_models_on_cuda():
    pods = rayjob_pods()
    head, workers = pods.pop("head"), pods
    assert workers
    for group, pod in workers.items():
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["FOCALSERVE_DEVICE"] == "cuda", group
            # KubeRay tells Ray the GPUs of the limit; an extended resource's request must equal it
            resources = container["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == 1, group
            assert resources["requests"].get("nvidia.com/gpu", 1) == 1, group
    # the driver runs on the head: its FOCALSERVE_DEVICE decides GPU actors and the device they get
    (container,) = head["containers"]
    assert {"name": "FOCALSERVE_DEVICE", "value": "cuda"} in container["env"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_the_image_carries_ray_with_the_job_server_a_rayjob_submits_through():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("ray[") and "default" in req and "data" in req for req in extras["ingest"])
    assert re.search(r'pip install .*"\.\[[a-z,]*ingest[a-z,]*\]"', (ROOT / "Dockerfile").read_text())
