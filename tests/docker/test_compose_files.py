"""The deployment files parse and agree with each other and with the service (no docker needed).

`-m docker` (tests/docker/test_stack.py) builds and runs them for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def gpu() -> dict:
    return load(REPO / "docker-compose.yml")


@pytest.fixture(scope="module")
def cpu() -> dict:
    return load(REPO / "docker-compose.cpu.yml")


def test_gpu_file_reserves_one_gpu_for_faces(gpu: dict) -> None:
    faces = gpu["services"]["faces"]
    (device,) = faces["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert faces["build"]["args"]["ORT"] == "gpu"
    assert faces["environment"]["FACES_PROVIDERS"].startswith("CUDAExecutionProvider")
    assert faces["ports"] == ["${FACES_HOST_PORT:-8000}:8000"]
    assert faces["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert faces["restart"] == "on-failure:5"  # a start-up error must not loop for ever


def test_cpu_file_is_the_gpu_file_without_the_gpu(gpu: dict, cpu: dict) -> None:
    """docker-compose.cpu.yml writes faces out in full (compose cannot drop a device reservation)."""
    faces_cpu = cpu["services"]["faces"]
    assert "deploy" not in faces_cpu
    assert faces_cpu["build"]["args"] == {"ORT": "cpu"}
    assert faces_cpu["environment"] == {"FACES_PROVIDERS": "CPUExecutionProvider"}
    variant = ("build", "image", "environment", "deploy")
    assert faces_cpu["build"] | {"args": None} == gpu["services"]["faces"]["build"] | {"args": None}
    same_gpu = {k: v for k, v in gpu["services"]["faces"].items() if k not in variant}
    same_cpu = {k: v for k, v in faces_cpu.items() if k not in variant}
    assert same_cpu == same_gpu  # ports, health check, restart policy, stop grace period
    assert faces_cpu["image"] == gpu["services"]["faces"]["image"].replace(":gpu", ":cpu")
    for name in ("prometheus", "grafana"):
        assert cpu["services"][name] == {"extends": {"file": "docker-compose.yml", "service": name}}
    assert set(cpu["volumes"]) == {"prometheus-data", "grafana-data"}


def test_profiles(gpu: dict) -> None:
    services = gpu["services"]
    assert "profiles" not in services["faces"] and "profiles" not in services["prometheus"]
    assert services["grafana"]["profiles"] == ["grafana"]
    assert services["trainer"]["profiles"] == ["train"]
    assert "devices" in services["trainer"]["deploy"]["resources"]["reservations"]


def test_dockerfiles_are_plain(gpu: dict) -> None:
    """No `# syntax=` line (the frontend image may not be pullable); the service runs as a user, not root."""
    for service, name in (("faces", "service.Dockerfile"), ("trainer", "trainer.Dockerfile")):
        assert gpu["services"][service]["build"]["dockerfile"] == f"docker/{name}"
        assert not re.search(r"^#\s*syntax=", (DOCKER / name).read_text(), re.M), name
    text = (DOCKER / "service.Dockerfile").read_text()
    assert re.search(r"^USER faces$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*/app/healthcheck.py", text, re.M)


def test_prometheus_scrapes_faces(gpu: dict) -> None:
    config = load(DOCKER / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "faces"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in gpu["services"]
    assert gpu["services"][host]["ports"][0].endswith(f":{port}")
    mount = "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in gpu["services"]["prometheus"]["volumes"]


def test_grafana_provisioning(gpu: dict) -> None:
    (datasource,) = load(DOCKER / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = load(DOCKER / "grafana/provisioning/dashboards/faces.yml")["providers"]
    volumes = gpu["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in volumes
    dashboard = json.loads((DOCKER / "grafana/dashboards/faces.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]


def exported_series() -> set[str]:
    """Every series name the service's /metrics can show (counters' _total, histograms' _bucket, ...)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_dashboard_uses_only_metrics_the_service_exports() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboards/faces.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bfaces_[a-z_]+", target["expr"])
    }
    assert used, "the dashboard charts no faces_ metric"
    assert used <= exported_series(), used - exported_series()
    # and it charts every one of them
    families = {f.name for f in Metrics().registry.collect()}
    assert {n for n in families if not any(u.startswith(n) for u in used)} == set()


def test_requirements_of_the_service_image_have_no_torch() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(DOCKER / "requirements.py"),
            str(REPO / "pyproject.toml"),
            "--extra",
            "serve",
            "--without",
            "onnxruntime",
            "onnxruntime-gpu",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    names = {re.match(r"[A-Za-z0-9._-]+", line).group(0).lower() for line in out}  # type: ignore[union-attr]
    assert {"fastapi", "uvicorn", "numpy"} <= names
    assert not names & {"torch", "onnxruntime", "onnxruntime-gpu", "onnx"}


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"  # an allow-list: .venv, runs/, .git and data never reach the daemon
    assert {"!service/", "!models/", "!pyproject.toml"} <= set(lines)
