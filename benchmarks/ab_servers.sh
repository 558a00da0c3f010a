#!/usr/bin/env bash
# A/B load test of two commits, alternating, so that a shared machine's drift hits both alike:
#   bash benchmarks/ab_servers.sh <old-commit> [rounds]
# Serves <old-commit> (a temporary git worktree) and the working tree, each with `losslab serve
# --workers 2`, and runs Debian's wrk against each in turn: the default explain request and the
# page's drag request (benchmarks.api_load MODES) at 32 clients (req/s) and 1 client (p50).
# The default request has no stage list since the commit after 73202bf: against older commits compare the
# drag figures (the same request on both sides), or mind the payload sizes printed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bash benchmarks/ab_servers.sh <old-commit> [rounds]}
ROUNDS=${2:-3}
PY="$ROOT/.venv/bin/python"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y --no-install-recommends wrk"; exit 2; }
WORK=$(mktemp -d)
git -C "$ROOT" worktree add -q "$WORK/old" "$OLD"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; sleep 1; git -C "$ROOT" worktree remove --force "$WORK/old"; rm -rf "$WORK"; }
trap cleanup EXIT
"$PY" -c "import json, sys; sys.path.insert(0, '$ROOT'); from benchmarks.api_load import scene; json.dump(scene('yolov5'), open('$WORK/body.json', 'w'))"
cat > "$WORK/post.lua" <<LUA
local f = io.open("$WORK/body.json", "r"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
LUA
DRAG=$("$PY" -c "import sys, urllib.parse; sys.path.insert(0, '$ROOT'); from benchmarks.api_load import MODES; print(urllib.parse.urlencode(MODES['drag']))")
serve() {  # dir port
  (cd "$1" && LOSSLAB_TORCH_THREADS=1 exec "$PY" -m app.cli serve --host 127.0.0.1 --port "$2" --workers 2 --log-level warning) >"$WORK/serve_$2.log" 2>&1 &
  PIDS+=($!)
}
serve "$WORK/old" 8781
serve "$ROOT" 8782
for port in 8781 8782; do
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done
done
sleep 3
run() { wrk -t1 "-c$2" "-d$3" --latency -s "$WORK/post.lua" "$1"; }
for port in 8781 8782; do run "http://127.0.0.1:$port/api/v1/explain" 8 2s >/dev/null; done
echo "A/B, 2 workers each, YOLOv5 640x640 20 boxes: old = $OLD, new = working tree"
for port in 8781 8782; do
  echo "payload bytes on $port: default $(curl -s -X POST -H 'Content-Type: application/json' --data @"$WORK/body.json" "http://127.0.0.1:$port/api/v1/explain" | wc -c)"
done
for round in $(seq "$ROUNDS"); do
  for port in 8781 8782; do
    name=$([ "$port" = 8781 ] && echo old || echo new)
    url="http://127.0.0.1:$port/api/v1/explain"
    full=$(run "$url" 32 6s | awk '/Requests\/sec/ {print $2}')
    drag=$(run "$url?$DRAG" 32 6s | awk '/Requests\/sec/ {print $2}')
    drag1=$(run "$url?$DRAG" 1 4s | awk '$1 == "50%" {print $2}')
    full1=$(run "$url" 1 4s | awk '$1 == "50%" {print $2}')
    echo "round $round $name: 32 clients default $full req/s, drag $drag req/s; 1 client p50 default $full1, drag $drag1"
  done
done
