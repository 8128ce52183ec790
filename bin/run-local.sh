#!/usr/bin/env bash
# Local Airflow for crm-batch (what `make run` does): seed the demo databases if needed, migrate the
# metadata DB, apply airflow_settings.yaml, start the sandbox SMTP sink, then `airflow standalone`.
# Everything lives under var/ (var/airflow-home, var/*.db, var/mail). Ctrl-C stops it all.
#
# Env: SEED=1 reseeds even if var/crm.db exists; ACCOUNTS (default 5000) sizes the seed;
#      AIRFLOW_PORT (default 8080), SMTP_SINK_PORT (default 8025), SMS_GATEWAY_PORT (default 8026).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VENV_BIN=$ROOT/.venv/bin
if [[ ! -x $VENV_BIN/airflow ]]; then
    echo "run-local: $VENV_BIN/airflow not found; run 'make run' (it creates .venv)" >&2
    exit 1
fi

AIRFLOW_PORT=${AIRFLOW_PORT:-8080}
SMTP_SINK_PORT=${SMTP_SINK_PORT:-8025}
RD_CONVERSAS_PORT=${RD_CONVERSAS_PORT:-8027}
SMS_GATEWAY_PORT=${SMS_GATEWAY_PORT:-8026}

# standalone starts its components as `airflow ...` subprocesses: the venv's bin must come first.
export PATH=$VENV_BIN:$PATH
export CRM_HOME=${CRM_HOME:-$ROOT}
export PYTHONPATH=$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}
# Always this project's home: never an AIRFLOW_HOME (e.g. ~/airflow) inherited from the shell.
export AIRFLOW_HOME=$ROOT/var/airflow-home
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
# 2-core laptops: a handful of task slots, not the default 32 LocalExecutor workers.
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__API__HOST=${AIRFLOW__API__HOST:-127.0.0.1}
export AIRFLOW__API__PORT=$AIRFLOW_PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$AIRFLOW_PORT/execution/
unset AIRFLOW__DATABASE__SQL_ALCHEMY_CONN  # the sqlite DB inside var/airflow-home

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if port_in_use "$AIRFLOW_PORT"; then
    echo "run-local: port $AIRFLOW_PORT is already in use (another Airflow?); stop it or set AIRFLOW_PORT" >&2
    exit 1
fi

mkdir -p "$ROOT/var" "$AIRFLOW_HOME" "$ROOT/dags"  # dags/ may be absent in a fresh clone

if [[ ${SEED:-0} == 1 || ! -f $ROOT/var/crm.db ]]; then
    echo "run-local: seeding demo databases (ACCOUNTS=${ACCOUNTS:-5000})"
    python -m crm.demo seed --accounts "${ACCOUNTS:-5000}"
else
    echo "run-local: var/crm.db exists, not reseeding (SEED=1 to force)"
fi

echo "run-local: migrating the Airflow metadata DB in $AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || {
    cat "$AIRFLOW_HOME/db-migrate.log" >&2
    exit 1
}

echo "run-local: applying airflow_settings.yaml"
python -m crm.demo apply-settings --file "$ROOT/airflow_settings.yaml"

SINK_PID=
RD_PID=
SMS_PID=
AIRFLOW_PID=
stop_all() {
    # standalone runs in its own process group: SIGTERM to the whole group stops every component
    # cleanly. (A terminal Ctrl-C would SIGINT them all at once, which can leave the scheduler
    # waiting forever on its LocalExecutor workers.)
    if [[ -n $AIRFLOW_PID ]] && kill -0 -- "-$AIRFLOW_PID" 2>/dev/null; then
        echo "run-local: stopping airflow"
        kill -TERM -- "-$AIRFLOW_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 -- "-$AIRFLOW_PID" 2>/dev/null || break
            sleep 1
        done
        kill -KILL -- "-$AIRFLOW_PID" 2>/dev/null || true
    fi
    AIRFLOW_PID=
    if [[ -n $SINK_PID ]]; then
        kill "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
        SINK_PID=
    fi
    if [[ -n $RD_PID ]]; then
        kill "$RD_PID" 2>/dev/null || true
        wait "$RD_PID" 2>/dev/null || true
        RD_PID=
    fi
    if [[ -n $SMS_PID ]]; then
        kill "$SMS_PID" 2>/dev/null || true
        wait "$SMS_PID" 2>/dev/null || true
        SMS_PID=
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if port_in_use "$SMTP_SINK_PORT"; then
    echo "run-local: port $SMTP_SINK_PORT already in use; assuming an SMTP sink from an earlier run is still up" >&2
else
    python -m crm.demo smtp-sink --port "$SMTP_SINK_PORT" --dir "$ROOT/var/mail" &
    SINK_PID=$!
fi

if port_in_use "$SMS_GATEWAY_PORT"; then
    echo "run-local: port $SMS_GATEWAY_PORT already in use; assuming an SMS gateway from an earlier run is still up" >&2
else
    python -m crm.demo sms-gateway --port "$SMS_GATEWAY_PORT" --dir "$ROOT/var/sms" &
    SMS_PID=$!
fi

if port_in_use "$RD_CONVERSAS_PORT"; then
    echo "run-local: port $RD_CONVERSAS_PORT already in use; assuming an RD Conversas sandbox is still up" >&2
else
    python -m crm.demo rd-conversas --port "$RD_CONVERSAS_PORT" --log "$ROOT/var/rd-conversas/requests.jsonl" \
        --contacts-from "$ROOT/var/crm.db" &
    RD_PID=$!
fi

PASSWORDS=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
cat <<EOF
run-local: starting airflow standalone on http://localhost:$AIRFLOW_PORT
run-local: log in as admin; the generated password is in $PASSWORDS
run-local: mail sent by the routines lands in $ROOT/var/mail (one .eml per message)
run-local: WhatsApp API calls land in $ROOT/var/rd-conversas/requests.jsonl (sandbox on port $RD_CONVERSAS_PORT)
run-local: SMS land in $ROOT/var/sms (one .json per message, sandbox gateway on port $SMS_GATEWAY_PORT)
EOF
if [[ -f $PASSWORDS ]]; then
    echo "run-local: current password file: $(cat "$PASSWORDS")"
fi

# In the background with job control on, so it gets a process group of its own (see stop_all); the
# script waits for it and stops everything on Ctrl-C, SIGTERM or when standalone exits.
set -m
airflow standalone </dev/null &
AIRFLOW_PID=$!
set +m
wait "$AIRFLOW_PID"
