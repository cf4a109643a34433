#!/usr/bin/env bash
# Run the whole weldstream stack in the foreground from a repo checkout (venv at .venv, `make proto`
# or `make test` builds it): the embedded broker (unless KAFKA is set), the server and the learner.
# Ctrl-C or SIGTERM stops them in reverse order: learner (checkpoint + commit while Kafka is still up),
# server (drain), broker.
#
#   deploy/local/stack.sh                           # embedded in-memory broker on 127.0.0.1:9092
#   KAFKA=kafka-1.internal:9092 deploy/local/stack.sh   # your cluster instead
#   FRESH=1 deploy/local/stack.sh                   # wipe MODEL_DIR first
#
# Then, in another terminal, feed it labeled scans and ask it for masks:
#   .venv/bin/weldstream simulate --kafka 127.0.0.1:9092 --rate 8 --schedule sequential
#   .venv/bin/weldstream infer --target 127.0.0.1:8001 scan.png
#
# Settings (environment):
#   KAFKA                 bootstrap HOST:PORT[,HOST:PORT...]; empty: start `weldstream broker`
#   BROKER_PORT           embedded broker port (9092)
#   MODEL_DIR             weight store (runs/stack/models); LOG_DIR: logs (runs/stack/logs)
#   HOST                  server bind address (127.0.0.1; 0.0.0.0 lets rigs on the network in)
#   GRPC_PORT             server gRPC port (8001)
#   SERVER_METRICS_PORT, LEARNER_METRICS_PORT   /metrics ports (8002, 8003)
#   SERVE_ARGS, LEARN_ARGS   extra flags for one service, split on whitespace (e.g. LEARN_ARGS="--device cuda")
#   FRESH=1               delete MODEL_DIR before starting
#   FOLLOW_LOGS=0         do not echo the services' logs here
# The services get these as WELDSTREAM_* variables (every flag reads one: --kafka <-> WELDSTREAM_KAFKA;
# `weldstream serve --help`, `weldstream learn --help`). KAFKA, MODEL_DIR, HOST and GRPC_PORT fall back
# to WELDSTREAM_KAFKA, WELDSTREAM_MODEL_DIR, WELDSTREAM_HOST and WELDSTREAM_GRPC_PORT; any other
# WELDSTREAM_* variable set here reaches the server and the learner alike (WELDSTREAM_THREADS=4
# deploy/local/stack.sh), except WELDSTREAM_METRICS_PORT, which both read: the script sets it per
# service from SERVER_METRICS_PORT and LEARNER_METRICS_PORT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

WELDSTREAM="${WELDSTREAM:-$ROOT/.venv/bin/weldstream}"
PYTHON="$(dirname "$WELDSTREAM")/python"
KAFKA="${KAFKA:-${WELDSTREAM_KAFKA:-}}"
BROKER_PORT="${BROKER_PORT:-9092}"
MODEL_DIR="${MODEL_DIR:-${WELDSTREAM_MODEL_DIR:-$ROOT/runs/stack/models}}"
LOG_DIR="${LOG_DIR:-$ROOT/runs/stack/logs}"
HOST="${HOST:-${WELDSTREAM_HOST:-127.0.0.1}}"
GRPC_PORT="${GRPC_PORT:-${WELDSTREAM_GRPC_PORT:-8001}}"
SERVER_METRICS_PORT="${SERVER_METRICS_PORT:-8002}"
LEARNER_METRICS_PORT="${LEARNER_METRICS_PORT:-8003}"
FRESH="${FRESH:-0}"
FOLLOW_LOGS="${FOLLOW_LOGS:-1}"
read -r -a SERVE_EXTRA <<< "${SERVE_ARGS:-}"
read -r -a LEARN_EXTRA <<< "${LEARN_ARGS:-}"

# Seconds each service gets after SIGTERM before SIGKILL: the learner may publish and checkpoint.
STOP_TIMEOUT_LEARNER=60
STOP_TIMEOUT_SERVER=30
STOP_TIMEOUT_BROKER=5
START_TIMEOUT=120

names=()
pids=()
timeouts=()
tail_pid=""
stopping=0

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -x "$WELDSTREAM" ]] || die "$WELDSTREAM not found; build the venv first (make proto)"

# Each service runs in its own session, so a Ctrl-C on this terminal reaches only this script,
# which then stops the services one by one, in order.
detach=()
if command -v setsid > /dev/null 2>&1; then
    detach=(setsid)
fi

start() {  # start NAME STOP_TIMEOUT COMMAND...
    local name="$1" stop_timeout="$2"
    shift 2
    : >> "$LOG_DIR/$name.log"
    ${detach[@]+"${detach[@]}"} "$@" >> "$LOG_DIR/$name.log" 2>&1 < /dev/null &
    names+=("$name")
    pids+=("$!")
    timeouts+=("$stop_timeout")
    log "started $name (pid $!): $*"
}

alive() { kill -0 "$1" 2> /dev/null; }

port_open() {  # port_open HOST PORT
    (exec 3<> "/dev/tcp/$1/$2") 2> /dev/null
}

grpc_serving() {  # grpc_serving PORT: grpc.health.v1 says SERVING
    "$PYTHON" - "$1" << 'PY' 2> /dev/null
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
PY
}

wait_until() {  # wait_until NAME DESCRIPTION COMMAND...: poll until COMMAND succeeds or NAME exits
    local name="$1" what="$2" pid="${pids[-1]}" waited=0
    shift 2
    until "$@"; do
        if ! alive "$pid"; then
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            die "$name exited during start-up; see $LOG_DIR/$name.log"
        fi
        ((waited < START_TIMEOUT)) || die "$name not ready after ${START_TIMEOUT}s; see $LOG_DIR/$name.log"
        sleep 1
        waited=$((waited + 1))
    done
    log "$name ready: $what"
}

stop_one() {  # stop_one INDEX
    local name="${names[$1]}" pid="${pids[$1]}" timeout="${timeouts[$1]}" children="" rc=0 waited=0
    alive "$pid" || { wait "$pid" 2> /dev/null || true; return 0; }
    # The broker runs Tansu as a child in its own session; remember it in case we have to SIGKILL.
    children="$(pgrep -P "$pid" 2> /dev/null || true)"
    log "stopping $name (pid $pid, up to ${timeout}s)"
    kill -TERM "$pid" 2> /dev/null || true
    while alive "$pid" && ((waited < timeout * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if alive "$pid"; then
        log "$name did not stop in ${timeout}s; killing it"
        kill -KILL "$pid" 2> /dev/null || true
    fi
    wait "$pid" 2> /dev/null || rc=$?
    for child in $children; do
        if alive "$child"; then kill -TERM "$child" 2> /dev/null || true; fi
    done
    log "$name stopped (exit $rc)"
}

stop_all() {
    ((stopping == 0)) || return 0
    stopping=1
    trap '' INT TERM  # a second Ctrl-C must not cut the learner's checkpoint short
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_one "$i"
    done
    if [[ -n "$tail_pid" ]]; then
        kill "$tail_pid" 2> /dev/null || true
        wait "$tail_pid" 2> /dev/null || true
    fi
}

trap 'stop_all' EXIT
trap 'log "interrupted"; stop_all; exit 130' INT
trap 'log "terminated"; stop_all; exit 143' TERM

if [[ "$FRESH" == 1 ]]; then
    log "FRESH=1: removing $MODEL_DIR"
    rm -rf -- "$MODEL_DIR"
fi
mkdir -p "$MODEL_DIR" "$LOG_DIR"

if [[ -z "$KAFKA" ]]; then
    KAFKA="127.0.0.1:$BROKER_PORT"
    if [[ -e "$MODEL_DIR/learner-checkpoint.pt" ]]; then
        log "note: the embedded broker starts empty, but $MODEL_DIR holds a learner checkpoint from an"
        log "      earlier run whose offsets referred to the old broker; FRESH=1 starts clean"
    fi
    start broker "$STOP_TIMEOUT_BROKER" env WELDSTREAM_HOST=127.0.0.1 WELDSTREAM_PORT="$BROKER_PORT" \
        "$WELDSTREAM" broker
    wait_until broker "$KAFKA (in memory; laptops only)" port_open 127.0.0.1 "$BROKER_PORT"
else
    log "using Kafka at $KAFKA"
fi

# Settings as environment variables, like the systemd units, compose and Kubernetes; a flag in
# SERVE_ARGS / LEARN_ARGS still wins over its variable.
start server "$STOP_TIMEOUT_SERVER" env WELDSTREAM_KAFKA="$KAFKA" WELDSTREAM_MODEL_DIR="$MODEL_DIR" \
    WELDSTREAM_HOST="$HOST" WELDSTREAM_GRPC_PORT="$GRPC_PORT" WELDSTREAM_METRICS_PORT="$SERVER_METRICS_PORT" \
    "$WELDSTREAM" serve ${SERVE_EXTRA[@]+"${SERVE_EXTRA[@]}"}
wait_until server "gRPC $HOST:$GRPC_PORT SERVING, metrics :$SERVER_METRICS_PORT" grpc_serving "$GRPC_PORT"

start learner "$STOP_TIMEOUT_LEARNER" env WELDSTREAM_KAFKA="$KAFKA" WELDSTREAM_MODEL_DIR="$MODEL_DIR" \
    WELDSTREAM_METRICS_PORT="$LEARNER_METRICS_PORT" \
    "$WELDSTREAM" learn ${LEARN_EXTRA[@]+"${LEARN_EXTRA[@]}"}
wait_until learner "metrics :$LEARNER_METRICS_PORT" port_open 127.0.0.1 "$LEARNER_METRICS_PORT"

log "stack up: kafka $KAFKA, gRPC :$GRPC_PORT, metrics :$SERVER_METRICS_PORT (server) :$LEARNER_METRICS_PORT (learner)"
log "model dir $MODEL_DIR, logs $LOG_DIR; Ctrl-C stops everything"

if [[ "$FOLLOW_LOGS" == 1 ]]; then
    logs=()
    for name in "${names[@]}"; do logs+=("$LOG_DIR/$name.log"); done
    tail -n 0 -F "${logs[@]}" &
    tail_pid=$!
fi

# Foreground until a signal, or until a service dies on its own (then stop the others and fail).
while true; do
    for i in "${!pids[@]}"; do
        if ! alive "${pids[$i]}"; then
            rc=0
            wait "${pids[$i]}" 2> /dev/null || rc=$?
            log "${names[$i]} exited on its own (exit $rc); last lines of $LOG_DIR/${names[$i]}.log:"
            tail -n 20 "$LOG_DIR/${names[$i]}.log" >&2 || true
            exit 1
        fi
    done
    sleep 1 &
    wait $! || true
done
