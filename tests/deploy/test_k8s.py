"""deploy/k8s: every kustomization builds, every object validates offline against the Kubernetes schemas of
pinned versions, and the manifests agree with the service and the trainer they run (its settings, routes,
port, user and metrics; the trainer's and torchrun's own argument parsers).

No cluster here: `-m docker` (scripts/docker-test.sh) runs the CPU overlay's pod spec in docker for real.
Builds need `kubectl` (its built-in kustomize) or `kustomize` on PATH; without either these tests skip,
unless REQUIRE_KUSTOMIZE=1 (CI) makes that a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from scripts.k8s_pod_in_docker import kustomize_command
from service.config import Settings
from service.main import create_app
from tests.conftest import REPO, free_port
from tests.service.conftest import FIXTURE, settings_for

K8S = REPO / "deploy" / "k8s"
# the oldest Kubernetes minor still in common support and a recent one (kubernetes-validate ships both)
K8S_VERSIONS = ("1.30.0", "1.35.0")
CRDS = {"ServiceMonitor", "PyTorchJob"}  # no schema in kubernetes-validate: checked field by field below
KUSTOMIZATIONS = sorted(
    p.parent.relative_to(K8S).as_posix()
    for p in K8S.rglob("kustomization.yaml")
    if yaml.safe_load(p.read_text())["kind"] == "Kustomization"
)
STANDALONE = ["trainer/base/data-copy-pod.yaml", "trainer/export-job.yaml"]  # applied by hand
NOT_OBJECTS = ["overlays/gpu/prometheus-adapter-values.yaml"]  # Helm values of the Prometheus Adapter


@cache
def kustomize() -> list[str]:
    """The build command (scripts/k8s_pod_in_docker.py looks it up); skip, or fail under REQUIRE_KUSTOMIZE=1."""
    if (cmd := kustomize_command()) is not None:
        return cmd
    reason = "neither kubectl nor kustomize is on PATH: the manifests cannot be built"
    if os.environ.get("REQUIRE_KUSTOMIZE") == "1":
        pytest.fail(reason + " (REQUIRE_KUSTOMIZE=1)")
    pytest.skip(reason)


def image_uid() -> int:
    """The uid of the service image's user (docker/service.Dockerfile)."""
    dockerfile = (REPO / "docker" / "service.Dockerfile").read_text()
    return int(re.search(r"useradd --uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]


def only_env(prefix: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment's `prefix`* variables become exactly `env` (for this test)."""
    for key in list(os.environ):
        if key.startswith(prefix):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@cache
def _build(path: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([*kustomize(), str(K8S / path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize {path}: {out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def build(path: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_build(path)))


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objects, "Deployment", "faces")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment (valueFrom entries left out)."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)  # strict: unknown fields fail too


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- every manifest builds and validates


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kustomization_builds_and_validates(path: str, version: str) -> None:
    objects = build(path)
    assert objects, path
    for obj in objects:
        if obj["kind"] in CRDS:
            continue
        try:
            validate(obj, version)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path}: {obj['kind']} {obj['metadata']['name']}: {exc}")


@pytest.mark.parametrize("path", STANDALONE)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_standalone_manifests_validate(path: str, version: str) -> None:
    for obj in yaml.safe_load_all((K8S / path).read_text()):
        validate(obj, version)


def test_every_file_is_built_or_checked() -> None:
    """No YAML file under deploy/k8s escapes the tests above."""
    used = set(STANDALONE) | set(NOT_OBJECTS)
    for kust in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kust.read_text())
        folder = kust.parent
        used.add(kust.relative_to(K8S).as_posix())
        listed = spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]
        for item in listed:
            target = (folder / item).resolve()
            if target.is_file():
                used.add(target.relative_to(K8S).as_posix())
    every = {p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml")}
    assert every - used == set()


def test_the_validator_bites() -> None:
    """A typo and a wrong type in the Deployment fail strict validation: the tests above can fail."""
    deployment = one(build("overlays/cpu"), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containres"] = typo["spec"]["template"]["spec"].pop("containers")
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    for bad in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(bad, K8S_VERSIONS[-1])


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_object_names_its_namespace(path: str) -> None:
    """Else `kubectl apply` puts it in the context's namespace, away from the Deployment it serves."""
    for obj in build(path):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "faces", f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_overlay_with_the_models_volume_enabled(overlay: str, tmp_path: Path) -> None:
    """The overlay as an operator edits it: its commented-out models-volume line switched on. The claim lands
    in the namespace, /models comes from it read-only, and everything still validates."""
    folder = K8S / "overlays" / overlay
    text = (folder / "kustomization.yaml").read_text()
    line = "  # - ../../components/models-volume"
    assert line in text
    kust = yaml.safe_load(text.replace(line, "  - ../../components/models-volume"))
    moved = lambda rel: os.path.relpath(folder / rel, tmp_path)  # noqa: E731  (the copy lives in tmp_path)
    kust["resources"] = [moved(r) for r in kust["resources"]]
    kust["components"] = [moved(r) for r in kust["components"]]
    kust["patches"] = [{**p, "path": moved(p["path"])} for p in kust["patches"]]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    out = subprocess.run(
        [*kustomize(), "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    objects = [d for d in yaml.safe_load_all(out.stdout) if d]
    pvc = one(objects, "PersistentVolumeClaim", "faces-models")
    assert pvc["metadata"]["namespace"] == "faces"
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "faces-models", "readOnly": True}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"] == {"name": volume["name"], "mountPath": "/models", "readOnly": True}
    assert "/tmp" in mounts  # the patch adds to the base's mounts, it does not replace them
    for obj in objects:
        if obj["kind"] not in CRDS:
            validate(obj, K8S_VERSIONS[-1])


# --- the service's manifests agree with the service


@pytest.fixture(params=["overlays/gpu", "overlays/cpu"])
def overlay(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(request.param)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings() read from exactly this environment, as the service reads it at start-up."""
    only_env("FACES_", env, monkeypatch)
    return Settings()


def test_environment_names_and_values_are_real_settings(
    overlay: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = container(overlay)
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)), "a variable is set twice"
    for name in names:
        assert name.startswith("FACES_") or name in {"HOME"}, name
        assert name.removeprefix("FACES_").lower() in Settings.model_fields, f"{name} is no setting"
    settings = settings_from(env_of(c), monkeypatch)  # raises on a value the service would refuse
    assert settings.workers == 1
    (keys,) = [e for e in c["env"] if e["name"] == "FACES_API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"] == {"name": "faces-api-keys", "key": "keys", "optional": True}


def test_port_probes_and_scrape_target_are_the_service_s(
    overlay: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = container(overlay)
    settings = settings_from(env_of(c), monkeypatch)
    (port,) = c["ports"]
    assert port["containerPort"] == settings.port == Settings.model_fields["port"].default
    assert port["name"] == "http"
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    annotations = one(overlay, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    with TestClient(create_app(settings_for(FIXTURE.parent))) as client:  # the service answers them
        for probe in probes.values():
            assert probe["port"] == "http" and client.get(probe["path"]).status_code == 200
        assert client.get(annotations["prometheus.io/path"]).status_code == 200
    # the start-up probe waits long enough for the 43 s the bundled models take on two cores, and more
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.port


def test_termination_grace_covers_the_drain(
    overlay: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet waits for preStop, then sends SIGTERM; the grace period counts from the start of preStop
    and must outlast the sleep, FACES_GRACEFUL_TIMEOUT for requests in flight, and the batchers' stop."""
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    c = container(overlay)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    graceful = settings_from(env_of(c), monkeypatch).graceful_timeout
    assert graceful > 0
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + graceful + 5


def test_service_links_are_off_because_they_would_break_the_settings(
    overlay: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Service called `faces` makes the kubelet inject FACES_PORT=tcp://IP:80 and FACES_SERVICE_* into
    every pod of the namespace unless enableServiceLinks is false; FACES_PORT is a setting."""
    service = one(overlay, "Service", "faces")
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    links = {f"{prefix}_PORT": "tcp://10.0.0.1:80", f"{prefix}_SERVICE_HOST": "10.0.0.1"}
    with pytest.raises(ValueError, match="port"):
        settings_from(env_of(container(overlay)) | links, monkeypatch)
    assert one(overlay, "Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_runs_as_the_image_s_user_on_a_read_only_root(overlay: list[dict[str, Any]]) -> None:
    uid = image_uid()
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == uid
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(overlay)["securityContext"]
    assert sc == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in container(overlay)["volumeMounts"]}
    assert "/tmp" in mounts
    namespace = one(build("namespace"), "Namespace", "faces")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not [o for o in overlay if o["kind"] == "Namespace"], (
        "deleting an overlay would delete the namespace"
    )


def test_images_are_the_compose_images(overlay: list[dict[str, Any]]) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    compose_cpu = yaml.safe_load((REPO / "docker-compose.cpu.yml").read_text())
    images = {compose["services"]["faces"]["image"], compose_cpu["services"]["faces"]["image"]}
    assert container(overlay)["image"] in images


def test_selectors_ports_and_references_line_up(overlay: list[dict[str, Any]]) -> None:
    deployment = one(overlay, "Deployment", "faces")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    service = one(overlay, "Service", "faces")
    assert matches(service["spec"]["selector"], labels)
    (sport,) = service["spec"]["ports"]
    assert sport["targetPort"] == "http"
    assert matches(one(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    policy = one(overlay, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], labels)
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert policy["egress"] == [] and set(policy["policyTypes"]) == {"Ingress", "Egress"}
    monitor = one(overlay, "ServiceMonitor", "faces")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == sport["name"] and endpoint["path"] == "/metrics"
    hpa = one(overlay, "HorizontalPodAutoscaler", "faces")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "faces"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert container(overlay)["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def memory_limit_mib(c: dict[str, Any]) -> int:
    """The container's memory limit, written in MiB as the overlays write it."""
    memory = c["resources"]["limits"]["memory"]
    assert memory.endswith("Mi"), memory
    return int(memory[:-2])


def test_gpu_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = build("overlays/gpu")
    c = container(objects)
    assert c["image"] == "progan-faces/service:gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        memory_limit_mib(c) >= 1274 * 1.5
    )  # the peak measured on an H100 (docs/benchmarks.md), and headroom
    settings = settings_from(env_of(c), monkeypatch)
    assert settings.providers[0] == "CUDAExecutionProvider" and settings.require_provider
    (metric,) = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    target = float(metric["pods"]["target"]["averageValue"])
    assert target == settings.max_batch  # one full run waiting per pod (docs/deploy.md, Scaling)
    assert target <= settings.max_queue_rows  # the queue must reach it before the service refuses


def test_cpu_overlay_threads_fit_the_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's default is a thread per physical core of the node; the overlay pins the threads so that
    threads per run x runs at once = the pod's CPUs."""
    objects = build("overlays/cpu")
    c = container(objects)
    assert c["image"] == "progan-faces/service:cpu"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["resources"]["requests"] == c["resources"]["limits"]  # Guaranteed QoS
    settings = settings_from(env_of(c), monkeypatch)
    assert settings.providers == ["CPUExecutionProvider"]
    cpus = float(c["resources"]["limits"]["cpu"])
    assert settings.intra_op_threads * settings.inference_threads == cpus
    assert memory_limit_mib(c) >= 2861 * 1.5  # the measured peak with the 256 px model, and headroom
    (metric,) = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"


def test_models_volume_component_mounts_read_only() -> None:
    """The component (commented out in the overlays) gives /models from a claim, read-only."""
    text = (K8S / "overlays/cpu/kustomization.yaml").read_text()
    assert "# - ../../components/models-volume" in text
    component = yaml.safe_load((K8S / "components/models-volume/mount.yaml").read_text())
    pod = component["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    dockerfile = (REPO / "docker" / "service.Dockerfile").read_text()
    assert f"FACES_MODEL_DIR={mount['mountPath']}" in dockerfile and mount["readOnly"] is True
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["readOnly"] is True


# --- the autoscaler's metric is the service's


def test_adapter_rule_serves_a_metric_the_service_exports() -> None:
    """The Prometheus Adapter rule finds faces_queue_depth, which a running service's /metrics shows, and
    serves it under the name the GPU overlay's HPA asks for."""
    values = yaml.safe_load((K8S / "overlays/gpu/prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = re.match(r"([a-z_]+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert re.fullmatch(rule["name"]["matches"], series)
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    (metric,) = one(build("overlays/gpu"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    with TestClient(create_app(settings_for(FIXTURE.parent))) as client:
        text = client.get("/metrics").text
    assert re.search(rf"^{series}\{{model=\"tiny\",res=\"16\"\}} 0\.0$", text, re.M), text[:2000]


# --- the trainer's manifests


def train_args(args: list[str]) -> Any:
    """The Job's `-m trainer train ...` through the trainer's own parser."""
    import argparse

    from trainer.cli import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    i = args.index("train")
    assert args[i - 2 : i] == ["-m", "trainer"]
    return parser.parse_args(args[i + 1 :])


def torchrun_args(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """torchrun's own parser on the Job's arguments, with the PET_* variables the pod gets."""
    from torch.distributed.run import get_args_parser

    only_env("PET_", env, monkeypatch)
    return get_args_parser().parse_args(args)


def check_trainer_pod(pod: dict[str, Any], c: dict[str, Any]) -> None:
    targs = train_args(c["args"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert targs.data.startswith("/data/") and mounts["/data"].get("readOnly") is True
    assert targs.out == "/runs" and not mounts["/runs"].get("readOnly")
    assert env_of(c)["PROGAN_CACHE"] in mounts and "/dev/shm" in mounts
    assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["capabilities"] == {
        "drop": ["ALL"]
    }
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"faces-data", "faces-runs"}


def test_single_node_job_runs_torchrun_over_the_pod_s_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = build("trainer/single-node")
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"} == {
        "faces-data",
        "faces-runs",
    }
    job = one(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["torchrun"]
    run = torchrun_args(c["args"], {}, monkeypatch)
    assert run.standalone and run.nproc_per_node == "gpu"  # one process per GPU the pod gets
    assert run.module and run.training_script == "trainer"
    check_trainer_pod(pod, c)


def test_multi_node_indexed_job_wires_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = build("trainer/multi-node")
    job = one(objects, "Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["PET_NNODES"])
    (rank,) = [e for e in c["env"] if e["name"] == "PET_NODE_RANK"]
    assert (
        rank["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    service = one(objects, "Service")
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert matches(service["spec"]["selector"], spec["template"]["metadata"]["labels"])
    assert env["PET_MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(env["PET_MASTER_PORT"])]
    run = torchrun_args(c["args"], env | {"PET_NODE_RANK": "1"}, monkeypatch)
    assert (run.nnodes, run.node_rank, run.nproc_per_node) == ("2", 1, "gpu")
    assert (run.master_addr, run.master_port) == (env["PET_MASTER_ADDR"], int(env["PET_MASTER_PORT"]))
    assert not run.standalone
    check_trainer_pod(pod, c)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pytorchjob_follows_the_operator_s_rules(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator needs a container named `pytorch` (port `pytorchjob-port`) and sets torchrun's PET_*
    itself; each replica's pod template validates as a core PodTemplate."""
    objects = build("trainer/pytorchjob")
    job = one(objects, "PyTorchJob")
    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    assert spec["nprocPerNode"] in {"gpu", "auto"} or spec["nprocPerNode"].isdigit()
    assert set(spec["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    for replica in spec["pytorchReplicaSpecs"].values():
        template = replica["template"]
        validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
            version,
        )
        (c,) = template["spec"]["containers"]
        assert c["name"] == "pytorch" and c["command"] == ["torchrun"]
        assert [p["name"] for p in c["ports"]] == ["pytorchjob-port"]
        assert not [e for e in c["env"] if e["name"].startswith("PET_")]
        operator_env = {
            "PET_NNODES": "2",
            "PET_NODE_RANK": "0",
            "PET_NPROC_PER_NODE": spec["nprocPerNode"],
            "PET_MASTER_ADDR": "faces-train-pytorchjob-master-0",
            "PET_MASTER_PORT": "23456",
        }
        run = torchrun_args(c["args"], operator_env, monkeypatch)
        assert run.nnodes == "2" and run.nproc_per_node == spec["nprocPerNode"]
        check_trainer_pod(template["spec"], c)


def test_export_job_writes_the_models_claim_the_service_reads() -> None:
    (job,) = yaml.safe_load_all((K8S / "trainer/export-job.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    pvc = yaml.safe_load((K8S / "components/models-volume/pvc.yaml").read_text())
    assert claims["models"] == pvc["metadata"]["name"]
    # the exporter's 0700 folders stay readable by the service
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert c["args"][0] == "export" and c["args"][2:4] == ["--out", "/models/$(MODEL)"]
    assert {"RUN", "MODEL"} <= set(env_of(c))


def test_multi_node_env_drives_a_real_two_node_rendezvous(faces_dir: Path, tmp_path: Path) -> None:
    """Two torchrun "nodes" on this machine, each with the Indexed Job's PET_* variables as its pod would get
    them (the node rank from the completion index), no rendezvous option on the command line: they meet,
    train as one world of 2 over gloo, and only node 0 writes the run folder. What differs from the pods:
    pod 0's DNS name is 127.0.0.1 here, one process per node instead of one per GPU, and a tiny run."""
    job = one(build("trainer/multi-node"), "Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    nodes = int(env["PET_NNODES"])
    command = [*c["command"], *c["args"][: c["args"].index("train") + 1]]  # torchrun -m trainer train
    assert command == ["torchrun", "-m", "trainer", "train"]
    train = ["--data", str(faces_dir), "--preset", "tiny", "--max-res", "8", "--out", str(tmp_path / "runs")]
    # a cache of its own: the trainer tests' shared one must not start with this run's 8 px images
    train += ["--cache-dir", str(tmp_path / "cache"), "--quiet", "--max-steps", "4"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    base |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    pod_env = env | {
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
        "PET_NPROC_PER_NODE": "1",
    }
    procs = [
        subprocess.Popen(
            [torchrun, *command[1:], *train],
            env=base | pod_env | {"PET_NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(nodes)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {rank}: {out[-3000:]}"
    (run,) = (tmp_path / "runs").iterdir()  # one run folder: node 0's rank 0 writes, node 1 does not
    assert json.loads((run / "config.json").read_text())["world_size"] == nodes
