#!/usr/bin/env bash
# `make compose-test`: the compose cluster for real on a machine without Docker Hub or the PyTorch
# index (CI's kind). Starts a private Docker engine (../shared/tools/docker-local.sh), builds local
# stand-ins under the exact names docker-compose.yml uses for third-party images (Redis,
# Prometheus; from Debian packages), builds the project's image from the local Python base image
# with this machine's torch wheel (build arguments NAS_BASE_IMAGE, NAS_TORCH_SOURCE and an empty
# NAS_TORCH_INDEX), then runs tests/compose/cluster_check.py (up --wait, jobs, targets, panels,
# SIGKILL, down/up, down -v). The engine is stopped at the end, failed or not.
# Usage: deploy/compose-test.sh [PYTHON]   (PYTHON: the project's venv python, default .venv's)
# Env:   DOCKER_LOCAL (the engine script), NAS_DATA_DIR (holds nb201/nb201_merged.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
DOCKER_LOCAL=${DOCKER_LOCAL:-../shared/tools/docker-local.sh}
D=${DOCKER_LOCAL_DIR:-/tmp/docker-local}
export DOCKER_HOST="unix://$D/docker.sock" DOCKER_CONFIG="$D/cfg" DOCKER_BUILDKIT=0
export NAS_DATA_DIR="${NAS_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export RAY_USAGE_STATS_ENABLED=0 RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
START=$(date +%s)
step() {  # step NAME COMMAND...: run it, print how long it took (on stderr)
  local t0; t0=$(date +%s)
  "${@:2}"
  echo "compose-test: $1: $(( $(date +%s) - t0 )) s" >&2
}
stop_engine() {
  local rc=$?
  if [ -f "$D/docker.pid" ]; then
    docker compose -p nas-compose-test down -v --remove-orphans >/dev/null 2>&1 || true
    kill "$(cat "$D/docker.pid")" 2>/dev/null || true
    for _ in $(seq 60); do [ -e "$D/docker.pid" ] || break; sleep 1; done
  fi
  echo "compose-test: total $(( $(date +%s) - START )) s (rc $rc)" >&2
}
trap stop_engine EXIT

step "engine start" bash "$DOCKER_LOCAL" >/dev/null

standin() {  # standin IMAGE NAME: build deploy/standins/NAME.Dockerfile as IMAGE, if missing
  docker image inspect "$1" >/dev/null 2>&1 ||
    docker build -q -t "$1" -f "deploy/standins/$2.Dockerfile" deploy/standins >/dev/null
}
standins() {
  standin redis:7-alpine redis
  standin prom/prometheus:v2.53.0 prometheus
}
step "stand-in images (redis, prometheus)" standins

# torch from this machine's wheel (pip's local find-links), not the PyTorch index
if ! ls deploy/wheels/torch-*.whl >/dev/null 2>&1; then
  "$PY" -m pip download --quiet torch==2.13.0 --no-deps -d deploy/wheels
fi
WHEEL=$(basename "$(ls deploy/wheels/torch-*.whl | head -1)")
export NAS_BASE_IMAGE=pybase:bookworm NAS_TORCH_SOURCE="/wheels/$WHEEL" NAS_TORCH_INDEX=
# compose interpolates the whole file even to build: these two must be set
export NAS_REDIS_PASSWORD=build NAS_RAY_TOKEN=build NAS_CLUSTER_TOKEN=build
step "project image build (nas-service:cpu)" docker compose -p nas-compose-test build --quiet
unset NAS_REDIS_PASSWORD NAS_RAY_TOKEN NAS_CLUSTER_TOKEN

step "cluster checks" "$PY" -m pytest -q -p no:randomly -p no:cacheprovider -s \
  --durations=0 tests/compose/cluster_check.py
