"""Run the face service's Kubernetes pod spec in docker, the way a kubelet would, to check for real what no
cluster here can: that the image starts and serves under the manifests' security context (non-root, read-only
root filesystem, no capabilities, no privilege escalation), environment (API keys from the Secret), memory and
CPU limits and emptyDir mounts; that the startup, readiness and liveness probes answer; and that the drain
fits the termination grace period (preStop, then SIGTERM with requests in flight: every one is answered and
the process exits in time).

    python scripts/k8s_pod_in_docker.py deploy/k8s/overlays/cpu [--image progan-faces/service:cpu] [--models DIR]

Used by scripts/docker-test.sh after it built the CPU image. Needs `docker` and `kubectl` (or `kustomize`).
Exit status 0 when every check passed, 1 with the reason (and the container's logs) otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.serving import free_port  # noqa: E402

KEY = "k8s-pod-test-key"  # the Secret faces-api-keys/keys, as the kubelet would put it in the environment


class CheckFailed(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"k8s-pod: {text}", file=sys.stderr, flush=True)


def kustomize_command() -> list[str] | None:
    """How to build a kustomization here: kubectl's built-in kustomize, or kustomize; None if neither."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def build(overlay: Path) -> list[dict[str, Any]]:
    cmd = kustomize_command()
    if cmd is None:
        raise CheckFailed("neither kubectl nor kustomize is on PATH")
    out = subprocess.run([*cmd, str(overlay)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * factor)
    return int(q)


def docker_run_args(
    pod: dict[str, Any], c: dict[str, Any], image: str, host_port: int, name: str, models: Path | None = None
) -> list[str]:
    """`docker run` options for what the kubelet would set up for this pod and container; `models` is
    mounted read-only at /models, as components/models-volume mounts its claim."""
    args = ["docker", "run", "-d", "--name", name]
    if models is not None:
        args += ["--volume", f"{models.resolve()}:/models:ro"]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    user = csc.get("runAsUser", psc.get("runAsUser"))
    group = csc.get("runAsGroup", psc.get("runAsGroup"))
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if csc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in csc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise CheckFailed(f"volume {mount['name']}: only emptyDir volumes can be run here")
        size = volume["emptyDir"].get("sizeLimit")
        args += [
            "--tmpfs",
            f"{mount['mountPath']}:rw,mode=1777" + (f",size={quantity_bytes(size)}" if size else ""),
        ]
    for e in c.get("env", []):
        if "value" in e:
            args += ["--env", f"{e['name']}={e['value']}"]
        elif e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "faces-api-keys":
            args += ["--env", f"{e['name']}={KEY}"]
        else:
            raise CheckFailed(f"env {e['name']}: no way to give it here")
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        args += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    (port,) = c["ports"]
    args += ["-p", f"127.0.0.1:{host_port}:{port['containerPort']}"]
    args.append(image)
    args += c.get("command", []) + c.get("args", [])
    return args


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", timeout: float = 30
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def probe_ok(base: str, probe: dict[str, Any]) -> bool:
    try:
        status, _ = get(base + probe["httpGet"]["path"], timeout=probe.get("timeoutSeconds", 1))
    except OSError:
        return False
    return 200 <= status < 400


def state(name: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", "-f", "{{json .State}}", name], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def run_checks(pod: dict[str, Any], c: dict[str, Any], name: str, base: str) -> None:
    # --- start-up probe, as the kubelet runs it: every periodSeconds, up to failureThreshold failures
    startup = c["startupProbe"]
    t0 = time.monotonic()
    for attempt in range(1, startup["failureThreshold"] + 1):
        if not state(name).get("Running"):
            raise CheckFailed(f"the container stopped during start-up: {state(name)}")
        if probe_ok(base, startup):
            say(
                f"startup probe {startup['httpGet']['path']}: passed after {time.monotonic() - t0:.0f} s ({attempt} tries)"
            )
            break
        time.sleep(startup["periodSeconds"])
    else:
        raise CheckFailed(
            f"startup probe failed {startup['failureThreshold']} times: the kubelet would restart it"
        )
    for kind in ("readinessProbe", "livenessProbe"):
        if not probe_ok(base, c[kind]):
            raise CheckFailed(f"{kind} {c[kind]['httpGet']['path']} does not answer 2xx")
    say("readiness and liveness probes: 200")

    # --- the API, with the key from the Secret
    status, body = get(f"{base}/models", headers={"X-API-Key": KEY})
    if status != 200:
        raise CheckFailed(f"GET /models: {status} {body[:200]!r}")
    model = json.loads(body)["models"][0]
    res = max(int(r) for r in model["resolutions"])
    status, _ = get(f"{base}/generate?res={res}&seed=1", method="POST")
    if status != 401:
        raise CheckFailed(f"POST /generate without the Secret's key: {status}, expected 401")
    status, png = get(f"{base}/generate?res={res}&seed=1", headers={"X-API-Key": KEY}, method="POST")
    if status != 200 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise CheckFailed(f"POST /generate with the key: {status} {png[:100]!r}")
    say(
        f"API key from the Secret: 401 without it, a {res}x{res} PNG with it ({model['name']}, {len(png)} bytes)"
    )
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name], capture_output=True, text=True
    ).stdout.strip()
    say(f"memory in use / limit: {stats}")

    # --- termination: preStop, then SIGTERM with requests in flight, all inside the grace period
    grace = pod["terminationGracePeriodSeconds"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    t_term = time.monotonic()
    hook = subprocess.Popen(["docker", "exec", name, *pre_stop])
    time.sleep(1)
    status, _ = get(f"{base}/generate?res={res}&seed=2", headers={"X-API-Key": KEY}, method="POST")
    if status != 200:
        raise CheckFailed(f"a request during preStop got {status}: the pod must serve until SIGTERM")
    if hook.wait(timeout=grace) != 0:
        raise CheckFailed(f"preStop {pre_stop} failed in the container (exit status {hook.returncode})")
    say(
        f"preStop {' '.join(pre_stop)}: ran in the container ({time.monotonic() - t_term:.0f} s), served meanwhile"
    )

    # One long request in flight (an interpolation of 121 frames at the largest resolution: ~16 s at 256 px
    # on two idle CPUs; the CPU overlay's FACES_GRACEFUL_TIMEOUT is 60 s). Only one: behind it, the queue
    # bound (FACES_MAX_QUEUE_WAIT_MS) would rightly refuse more.
    done: dict[str, Any] = {}

    def in_flight() -> None:
        body = json.dumps({"seeds": [1, 2, 3], "steps": 60, "res": res, "output": "animation"}).encode()
        request = urllib.request.Request(
            f"{base}/interpolate",
            data=body,
            method="POST",
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=grace) as r:
                done.update(status=r.status, bytes=len(r.read()), at=time.monotonic())
        except (OSError, urllib.error.HTTPError) as exc:
            done.update(status=str(exc), at=time.monotonic())

    thread = threading.Thread(target=in_flight)
    thread.start()
    time.sleep(0.5)  # the request is in the server before the signal
    subprocess.run(["docker", "kill", "--signal", "TERM", name], check=True, capture_output=True)
    t_sig = time.monotonic()
    left = grace - (t_sig - t_term)
    while state(name).get("Running") and time.monotonic() - t_sig < left:
        time.sleep(0.2)
    exited = time.monotonic() - t_sig
    thread.join(timeout=5)
    final = state(name)
    if final.get("Running"):
        raise CheckFailed(f"still running {grace} s after preStop began: the kubelet would SIGKILL it")
    if done.get("status") != 200:
        raise CheckFailed(f"the request in flight at SIGTERM got {done.get('status')}, expected 200")
    if done["at"] < t_sig:
        raise CheckFailed("the request finished before SIGTERM: nothing was in flight (a faster machine?)")
    if final.get("ExitCode") != 0:
        raise CheckFailed(f"exit status {final.get('ExitCode')} after SIGTERM, expected 0")
    say(
        f"SIGTERM with an interpolation in flight: answered 200 ({done['bytes']} bytes) "
        f"{done['at'] - t_sig:.1f} s after the signal, exit status 0, "
        f"{exited:.1f} s after the signal ({time.monotonic() - t_term:.0f} s of the {grace} s grace period)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overlay", type=Path, help="a kustomization of the service, e.g. deploy/k8s/overlays/cpu")
    p.add_argument("--image", help="the image to run (default: the Deployment's)")
    p.add_argument(
        "--models", type=Path, help="a models folder to mount read-only at /models (default: the image's)"
    )
    a = p.parse_args(argv)
    objects = build(a.overlay)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    image = a.image or c["image"]
    port = free_port()
    name = f"faces-k8s-pod-{port}"
    args = docker_run_args(pod, c, image, port, name, a.models)
    say("docker " + " ".join(args[1:]))
    try:
        subprocess.run(args, check=True, capture_output=True, text=True)
        run_checks(pod, c, name, f"http://127.0.0.1:{port}")
    except (CheckFailed, subprocess.CalledProcessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
        say(f"FAIL: {exc} {detail}".strip())
        logs = subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True)
        print(logs.stdout + logs.stderr, file=sys.stderr)
        return 1
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    say(f"passed: the pod spec of {a.overlay} runs in docker as the kubelet would run it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
