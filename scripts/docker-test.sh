#!/usr/bin/env bash
# `make docker-test`: the compose stack, built and run for real (docs/deploy.md).
#
#  1. gets a docker engine: on this project's machines ../shared/tools/docker-sandbox.sh (no registry
#     there: it starts dockerd and builds stand-in base images); elsewhere the host's engine;
#  2. builds the CPU service image and brings up docker-compose.cpu.yml (faces + Prometheus);
#  3. waits for faces' health check, asks GET /models for a resolution and generates a face from this
#     host over HTTP (a PNG of that size), fetches the playground page (GET /) and its files, and checks
#     that Prometheus scraped the service (up == 1, faces_images_generated_total counts it) and can run
#     every query of the Grafana dashboard;
#  4. bad input: an empty models mount (the message in the logs, exit status 3, no crash loop), an
#     unreadable models folder (the message), a host port in use (compose says so);
#  5. runs the Kubernetes CPU overlay's pod spec in docker as a kubelet would (scripts/k8s_pod_in_docker.py:
#     non-root, read-only root, no capabilities, its limits and env, the three probes, the API key from the
#     Secret, preStop and SIGTERM with a request in flight inside the grace period);
#  6. tears everything down, also on failure (after printing the containers' logs).
#
# Models: the image bakes models/. With no model there, a tiny one is trained with .venv on the CelebA
# faces in ../shared/data (about a minute) and mounted read-only at /models instead.
# Step 5 needs kubectl (or kustomize) to build the overlay; without it the step is skipped with a message,
# unless REQUIRE_KUSTOMIZE=1 (CI).
#
# Environment: DOCKER_TEST_ENGINE=host skips the sandbox tool; FACES_HOST_PORT / PROMETHEUS_HOST_PORT
# (default: free ports); PROGAN_SHARED (default ../shared); DOCKER_TEST_KEEP=1 leaves the stack up.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${PROGAN_SHARED:-$PWD/../shared}
SANDBOX=$SHARED/tools/docker-sandbox.sh
PROJECT=progan-faces-test
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3

start=$SECONDS phase=$SECONDS
timings=()
say() { printf 'docker-test: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
done_phase() { timings+=("$(printf '%-34s %4ds' "$1" $((SECONDS - phase)))"); say "$1: $((SECONDS - phase)) s"; phase=$SECONDS; }

tmp=$(mktemp -d)
port_holder=""
compose_files=(-f docker-compose.cpu.yml)
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${compose_files[@]}" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${COMPOSE+x}" ]; then
    if [ $rc -ne 0 ]; then
      say "logs of the stack (exit status $rc):"
      compose ps >&2 || true
      compose logs --no-color --tail 60 >&2 || true
    fi
    if [ "${DOCKER_TEST_KEEP:-0}" = 1 ] && [ $rc -eq 0 ]; then
      say "DOCKER_TEST_KEEP=1: the stack stays up (${COMPOSE[*]} -p $PROJECT ${compose_files[*]} down -v)"
    else
      compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || say "compose down failed"
    fi
  fi
  [ -z "$port_holder" ] || kill "$port_holder" 2>/dev/null || true
  rm -rf "$tmp"
  [ ${#timings[@]} -eq 0 ] || { say "timings:"; printf '  %s\n' "${timings[@]}" >&2; }
  say "$([ $rc -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
port_in_use() { "$PY" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"; }
json() { "$PY" -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# not `docker logs | grep -q`: grep may exit before docker is done, and pipefail then fails the pipe
logs_have() { docker logs "$1" >"$tmp/container.log" 2>&1; grep -q "$2" "$tmp/container.log"; }

# --- 1. engine
if [ "${DOCKER_TEST_ENGINE:-auto}" != host ] && [ -f "$SANDBOX" ]; then
  say "engine: $SANDBOX"
  eval "$(bash "$SANDBOX" python:3.11-slim prom/prometheus:v2.53.0=prometheus)"
  # The stand-in base's / is mode 0700 (its rootfs came from mktemp -d), so a non-root user could run
  # nothing in it; a layer cannot change /, so import it once more with / at 0755.
  if [ "$(docker image inspect -f '{{index .Config.Labels "docker-test.root"}}' python:3.11-slim 2>/dev/null)" != 0755 ]; then
    changes=(-c 'LABEL docker-test.root=0755')
    while IFS= read -r e; do [ -z "$e" ] || changes+=(-c "ENV $e"); done \
      < <(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' python:3.11-slim)
    changes+=(-c "CMD $(docker image inspect -f '{{json .Config.Cmd}}' python:3.11-slim)")
    cid=$(docker create python:3.11-slim)
    docker export "$cid" | docker import "${changes[@]}" - python:3.11-slim >/dev/null
    docker rm "$cid" >/dev/null
  fi
  # the sandbox's build containers reach PyPI and Debian through the host's network
  printf 'services:\n  faces:\n    build:\n      network: host\n' >"$tmp/sandbox.yml"
  compose_files+=(-f "$tmp/sandbox.yml")
elif docker info >/dev/null 2>&1; then
  say "engine: this host's ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
else
  fail "no docker engine answers (docker info) and there is no $SANDBOX"
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
"${COMPOSE[@]}" version >/dev/null 2>&1 || fail "neither 'docker compose' nor 'docker-compose' is installed"
done_phase "engine"

# --- models: the baked ones, or a tiny one mounted read-only
pod_models=()
if compgen -G "models/*/manifest.json" >/dev/null; then
  say "models: baked into the image from models/ ($(dirname models/*/manifest.json | xargs -n1 basename | paste -sd ' '))"
else
  faces=$SHARED/data/celeba/img_align_celeba
  [ -d "$faces" ] || fail "models/ has no model, and there are no CelebA faces at $faces to train a tiny one"
  say "models: none in models/; training a tiny one on 512 faces"
  mkdir -p "$tmp/faces/img_align_celeba" "$tmp/models"
  "$PY" -c 'import os, sys; src, dst = sys.argv[1:]; [os.symlink(f"{src}/{n}", f"{dst}/{n}") for n in sorted(os.listdir(src))[:512]]' \
    "$faces" "$tmp/faces/img_align_celeba"
  "$PY" -m trainer train --data "$tmp/faces/img_align_celeba" --preset tiny --max-res 16 \
    --out "$tmp/runs" --cache-dir "$tmp/cache" --quiet
  "$PY" -m trainer export "$tmp"/runs/* --out "$tmp/models/tiny" >/dev/null
  chmod -R a+rX "$tmp/models"
  printf 'services:\n  faces:\n    volumes:\n      - %s:/models:ro\n' "$tmp/models" >"$tmp/models.yml"
  compose_files+=(-f "$tmp/models.yml")
  pod_models=(--models "$tmp/models")
  done_phase "tiny model"
fi

# --- 2. build and start
export FACES_HOST_PORT=${FACES_HOST_PORT:-$(free_port)}
export PROMETHEUS_HOST_PORT=${PROMETHEUS_HOST_PORT:-$(free_port)}
for var in FACES_HOST_PORT PROMETHEUS_HOST_PORT; do
  ! port_in_use "${!var}" || fail "port ${!var} is in use on this host: set $var to a free port"
done
compose config -q
"${COMPOSE[@]}" -f docker-compose.yml --profile grafana --profile train config -q  # the GPU file parses too
compose build faces
done_phase "build the CPU service image"
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^progan-faces/service:|^python:3.11-slim|^prom/prometheus' >&2 || true

compose up -d
faces_id=$(compose ps -a -q faces)

wait_healthy() {  # $1 container, $2 seconds
  local deadline=$((SECONDS + $2)) state
  while :; do
    state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1")
    case $state in
      "running healthy") return 0 ;;
      exited* | dead* | restarting*) fail "faces stopped before it was healthy ($state)" ;;
    esac
    [ $SECONDS -lt "$deadline" ] || fail "faces not healthy after $2 s ($state)"
    sleep 2
  done
}
wait_healthy "$faces_id" 240
done_phase "up until faces is healthy"

# --- 3. a face over HTTP, and Prometheus
base=http://127.0.0.1:$FACES_HOST_PORT
res=$(curl -fsS "$base/models" | json 'max(d["models"][0]["resolutions"])')
curl -fsS -X POST "$base/generate?res=$res&seed=7" -D "$tmp/headers" -o "$tmp/face.png"
"$PY" - "$tmp/face.png" "$res" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {data[:16]!r}"
width, height = struct.unpack(">II", data[16:24])
assert (width, height) == (int(sys.argv[2]),) * 2, f"{width}x{height}, asked for {sys.argv[2]}"
EOF
say "generated a ${res}x${res} PNG ($(wc -c <"$tmp/face.png") bytes): $(grep -i '^x-model' "$tmp/headers" | tr -d '\r')"
# the playground page and its files, served by the image (no browser here: tests/service/browser drives the page)
curl -fsS "$base/" -D "$tmp/page-headers" -o "$tmp/page.html"
grep -q '<title>ProGAN faces: playground</title>' "$tmp/page.html" || fail "GET / is not the playground page"
grep -qi "^content-security-policy: default-src 'none'" "$tmp/page-headers" || fail "GET / has no Content-Security-Policy"
for f in playground.js playground.css; do
  curl -fsS "$base/static/$f" -o /dev/null || fail "GET /static/$f failed"
done
say "playground: GET / and its script and styles served"
done_phase "generate a face over HTTP"

prom=http://127.0.0.1:$PROMETHEUS_HOST_PORT
query() { curl -fsS -G "$prom/api/v1/query" --data-urlencode "query=$1"; }
deadline=$((SECONDS + 90))
until [ "$(query 'up{job="faces"}' 2>/dev/null | json 'd["data"]["result"][0]["value"][1] if d["data"]["result"] else ""' 2>/dev/null)" = 1 ]; do
  [ $SECONDS -lt $deadline ] || fail "Prometheus has not scraped faces (up{job=\"faces\"} != 1 after 90 s)"
  sleep 2
done
until [ "$(query 'sum(faces_images_generated_total)' | json 'int(float(d["data"]["result"][0]["value"][1])) if d["data"]["result"] else 0')" -ge 1 ]; do
  [ $SECONDS -lt $deadline ] || fail "Prometheus has no faces_images_generated_total >= 1 after 90 s"
  sleep 2
done
say "Prometheus: up{job=\"faces\"} = 1, faces_images_generated_total counts the face"
# every query of the Grafana dashboard must parse, and those on metrics that exist by now return data
"$PY" - "$prom" docker/grafana/dashboards/faces.json <<'EOF'
import json, sys, urllib.parse, urllib.request
prom, path = sys.argv[1], sys.argv[2]
exprs = [t["expr"] for p in json.load(open(path))["panels"] for t in p["targets"]]
empty = []
for expr in exprs:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr.replace("$__rate_interval", "1m")})
    with urllib.request.urlopen(url, timeout=10) as r:  # a PromQL error is an HTTP 400: urlopen raises
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    if not body["data"]["result"]:
        empty.append(expr)
# rates need two scrapes of a changed counter, and nothing failed: those may still be empty
must = [e for e in empty if "rate(" not in e and "5.." not in e]
assert not must, f"dashboard queries with no data: {must}"
print(f"docker-test: the dashboard's {len(exprs)} queries run ({len(empty)} without data yet)", file=sys.stderr)
EOF
done_phase "Prometheus scraped faces"

# --- 4. bad input
# a models mount that is missing on the host: docker makes an empty folder, the service says so and
# exits with status 3; restart: on-failure:5 gives up after 5 tries, never healthy
printf 'services:\n  faces:\n    volumes:\n      - %s:/models:ro\n' "$tmp/not-there" >"$tmp/missing.yml"
compose -f "$tmp/missing.yml" up -d --no-deps --force-recreate faces
faces_id=$(compose -f "$tmp/missing.yml" ps -a -q faces)
deadline=$((SECONDS + 120))
until [ "$(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "$faces_id")" = "exited 5" ]; do
  [ $SECONDS -lt $deadline ] || fail "faces with an empty models mount: $(docker inspect -f '{{.State.Status}}, {{.RestartCount}} restarts' "$faces_id"), expected exited after 5 restarts"
  sleep 2
done
[ "$(docker inspect -f '{{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$faces_id")" != "3 healthy" ] || fail "healthy with no models"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$faces_id")" = 3 ] || fail "exit status $(docker inspect -f '{{.State.ExitCode}}' "$faces_id") with no models, expected 3"
logs_have "$faces_id" 'start-up failed: /models: no model folders' \
  || fail "no clear message in the logs for an empty models mount"
say "empty models mount: 'start-up failed: /models: no model folders', exit status 3, stopped after 5 restarts"

# a models folder the service user (uid 10001) may not read
shopt -s nullglob
model_dirs=("$tmp"/models/*/manifest.json models/*/manifest.json)
shopt -u nullglob
mkdir -p "$tmp/private"
cp -r "$(dirname "${model_dirs[0]}")" "$tmp/private/"
chmod -R go-rwx "$tmp/private"
printf 'services:\n  faces:\n    volumes:\n      - %s:/models:ro\n' "$tmp/private" >"$tmp/private.yml"
compose -f "$tmp/private.yml" up -d --no-deps --force-recreate faces
faces_id=$(compose -f "$tmp/private.yml" ps -a -q faces)
deadline=$((SECONDS + 60))
until logs_have "$faces_id" 'Application startup failed'; do
  [ $SECONDS -lt $deadline ] || fail "faces with an unreadable models folder did not fail its start-up"
  sleep 1
done
logs_have "$faces_id" "Permission denied: '/models" || fail "no 'Permission denied' for an unreadable models folder"
say "unreadable models folder: 'Permission denied: /models/...' in the logs, start-up failed"

# a host port that is taken: compose refuses to start faces and says so
busy=$(free_port)
"$PY" -c 'import socket, sys, time; s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); time.sleep(600)' "$busy" &
port_holder=$!
until port_in_use "$busy"; do sleep 0.2; done
if FACES_HOST_PORT=$busy compose up -d --no-deps --force-recreate faces >"$tmp/busy.log" 2>&1; then
  fail "faces started on port $busy, which another process holds"
fi
grep -qiE 'address already in use|port is already allocated' "$tmp/busy.log" \
  || { cat "$tmp/busy.log" >&2; fail "compose did not say that port $busy is in use"; }
say "port in use: compose refused ($(grep -oiE 'address already in use|port is already allocated' "$tmp/busy.log" | sort -u))"
done_phase "bad input"

# --- 5. the Kubernetes CPU overlay's pod spec, run in docker as a kubelet would run it
compose stop faces >/dev/null 2>&1 || true # its two CPUs back for the pod
if command -v kubectl >/dev/null || command -v kustomize >/dev/null; then
  "$PY" scripts/k8s_pod_in_docker.py deploy/k8s/overlays/cpu --image progan-faces/service:cpu "${pod_models[@]}" \
    || fail "the Kubernetes pod spec (deploy/k8s/overlays/cpu) does not run as it should in docker"
  done_phase "Kubernetes pod spec in docker"
elif [ "${REQUIRE_KUSTOMIZE:-0}" = 1 ]; then
  fail "neither kubectl nor kustomize is on PATH to build deploy/k8s/overlays/cpu (REQUIRE_KUSTOMIZE=1)"
else
  say "skipped the Kubernetes pod spec: neither kubectl nor kustomize is on PATH"
fi
