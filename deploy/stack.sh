#!/usr/bin/env bash
# `make stack`: the compose topology as local processes on a CPU-only machine — PostgreSQL (Debian's
# package), the tritonserver binary from the nvidia-pytriton wheel (python backend), and TWO gateways
# on the Triton backend, on $PORT and $PORT+1, sharing their collections through that one database.
# Everything listens on 127.0.0.1 (gateways on $HOST); every process stops when this script exits.
#
# State lives under $STACK_DIR (.stack): postgres/ is the database, kept across runs as compose's
# named volume is (delete it to start empty); gateway-<port>/ are the gateways' FAISS snapshot
# caches, one each, stamped with the database they came from.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
STACK_DIR=$(realpath -m "${STACK_DIR:-.stack}")
REPOSITORY=${STACK_REPOSITORY:-.stack/model_repository}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
GRPC_PORT=${TRITON_GRPC_PORT:-8001}
HTTP_PORT=${TRITON_HTTP_PORT:-8010}
METRICS_PORT=${TRITON_METRICS_PORT:-8002}
PG_PORT=${STACK_PG_PORT:-5433}   # not 5432, where Debian's package may run a cluster of its own
PG_DIR=$STACK_DIR/postgres
DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/focalserve

# PostgreSQL refuses to run as root: under root the server runs as the `postgres` user (Debian's
# package creates it), which owns $PG_DIR; cd there because it may not be able to read ours.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$PG_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$PG_DIR" && "$@")
    fi
}

PIDS=()
PG_RUNNING=
cleanup() {
    trap '' INT TERM   # a second signal must not cut the shutdown short
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do   # gateways first, Triton last
        kill "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ -n "$PG_RUNNING" ]; then
        as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DIR/data" -m fast -w -t 60 >/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL -------------------------------------------------------------------------------
mkdir -p "$PG_DIR"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$PG_DIR"
    if ! as_postgres test -w "$PG_DIR"; then
        echo "stack: the postgres user cannot reach $PG_DIR; set STACK_DIR to a directory it can" \
            "traverse, such as /tmp/focalserve-stack" >&2
        exit 1
    fi
fi
if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" --username=postgres --auth=trust --encoding=UTF8 \
        --locale=C >/dev/null
fi
if as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DIR/data" >/dev/null; then
    as=$([ "$(id -u)" -eq 0 ] && echo "runuser -u postgres -- ")
    echo "stack: a PostgreSQL server already runs on $PG_DIR/data (another stack, or one that was killed);" \
        "stop it with: ${as}$PG_BIN/pg_ctl stop -D $PG_DIR/data" >&2
    exit 1
fi
# TCP on 127.0.0.1 only, no unix socket (its path length is limited, and nothing here uses it)
if ! as_postgres "$PG_BIN/pg_ctl" start -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" >/dev/null; then
    echo "stack: PostgreSQL did not start on 127.0.0.1:$PG_PORT; its log ($PG_DIR/server.log) ends:" >&2
    tail -n 20 "$PG_DIR/server.log" >&2
    exit 1
fi
PG_RUNNING=1
psql_admin() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'focalserve'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE focalserve"
fi
echo "stack: PostgreSQL on $DATABASE_URL (log: $PG_DIR/server.log)"

# --- Triton -----------------------------------------------------------------------------------
"$BIN/focalserve" triton --model-repository "$REPOSITORY" --work-dir "$STACK_DIR/triton" \
    --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" --metrics-port "$METRICS_PORT" &
PIDS+=($!)

# --- two gateways on one database -------------------------------------------------------------
# each waits (bounded) for Triton to be ready, then reads the model configs from it
for port in "$PORT" "$((PORT + 1))"; do
    FOCALSERVE_BACKEND=triton FOCALSERVE_TRITON_URL="127.0.0.1:$GRPC_PORT" \
        FOCALSERVE_DATABASE_URL="$DATABASE_URL" FOCALSERVE_DATA_DIR="$STACK_DIR/gateway-$port" \
        "$BIN/focalserve" serve --host "$HOST" --port "$port" --model-repository "$REPOSITORY" &
    PIDS+=($!)
done
echo "stack: gateways on http://$HOST:$PORT and http://$HOST:$((PORT + 1))"

# the stack is up while all of it is: the first process to exit takes the rest down
status=0
wait -n || status=$?
echo "stack: a process exited (status $status); stopping the rest" >&2
exit "$status"
