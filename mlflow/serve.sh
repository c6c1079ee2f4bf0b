#!/usr/bin/env bash
# Run the MLflow tracking server with its artifact proxy, so that clients (training
# rank 0, `raytag evaluate`, notebooks) only ever speak HTTP to it and never need
# storage credentials. Settings come from the environment; extra arguments are passed
# on to `mlflow server` (e.g. --allowed-hosts for a cluster hostname).
#
#   MLFLOW_HOME                    local state folder    (default: ./mlruns-server)
#   MLFLOW_BACKEND_STORE_URI       runs and registry     (default: sqlite:///$MLFLOW_HOME/mlflow.db)
#   MLFLOW_ARTIFACTS_DESTINATION   where artifacts land  (default: $MLFLOW_HOME/artifacts;
#                                  or s3://bucket/prefix with AWS_* set for this process only)
#   MLFLOW_HOST / MLFLOW_PORT      bind address          (default: 127.0.0.1 / 5000)
#   MLFLOW_WORKERS                 server workers        (default: 1)
#   PYTHON                         interpreter with mlflow (default: the repo's .venv, else python3)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  GenAI job workers (huey); raytag needs none (default: false)
#
# Authentication (MLflow's basic-auth app: users, passwords, per-experiment and per-model
# permissions), off unless MLFLOW_AUTH=basic or MLFLOW_AUTH_CONFIG_PATH is set. Secrets come
# from the environment or from files (e.g. mounted Secrets), never from arguments:
#   MLFLOW_AUTH                    basic: switch it on                   (default: off)
#   MLFLOW_AUTH_CONFIG_PATH        the app's ini (default: $MLFLOW_HOME/basic_auth.ini, written
#                                  at each start from the three settings below; no secret in it)
#   MLFLOW_AUTH_DATABASE_URI       its user store    (default: sqlite:///$MLFLOW_HOME/basic_auth.db)
#   MLFLOW_AUTH_DEFAULT_PERMISSION what every user may do where nobody granted more: READ, EDIT,
#                                  MANAGE or NO_PERMISSIONS (default: READ)
#   MLFLOW_AUTH_CACHE_TTL_SECONDS  how long a worker trusts a checked password (default: 60;
#                                  0 hashes every request's password, at a CPU cost per call)
#   MLFLOW_AUTH_ADMIN_USERNAME     the admin user, created at the first start (default: admin)
#   MLFLOW_AUTH_ADMIN_PASSWORD     its password, or MLFLOW_AUTH_ADMIN_PASSWORD_FILE: a file
#                                  holding it; needed at the first start only
#   MLFLOW_FLASK_SERVER_SECRET_KEY CSRF key of the sign-up page, or ..._FILE; several servers
#                                  behind one address share one (default: a random one per start)
# Clients then need MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (mlflow/README.md).
set -euo pipefail

home="${MLFLOW_HOME:-$PWD/mlruns-server}"
mkdir -p "$home"
home="$(cd "$home" && pwd)"

backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$home/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$home/artifacts}"
case "$artifacts" in
    *://*) ;;
    *) mkdir -p "$artifacts" ;;
esac

# boto3 inside the server reads the S3 endpoint from MLFLOW_S3_ENDPOINT_URL.
if [[ -n "${AWS_ENDPOINT_URL:-}" && -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]]; then
    export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"
fi

# The job runner starts about eight huey worker processes for GenAI features (scorers,
# trace roll-ups) that tagging runs never use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    venv_python="$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python"
    if [[ -x "$venv_python" ]]; then python="$venv_python"; else python=python3; fi
fi

# A secret named by NAME_FILE is read into NAME, so it reaches mlflow through its environment.
secret_from_file() {
    local file_var="$1_FILE"
    if [[ -n "${!file_var:-}" ]]; then
        if [[ ! -r "${!file_var}" ]]; then
            echo "serve.sh: $file_var: cannot read ${!file_var}" >&2
            exit 2
        fi
        export "$1"="$(<"${!file_var}")"
    fi
}

app=()
if [[ "${MLFLOW_AUTH:-}" == basic || -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
    if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
        export MLFLOW_AUTH_CONFIG_PATH="$home/basic_auth.ini"
        cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$home/basic_auth.db}
admin_username = admin
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
    fi
    secret_from_file MLFLOW_AUTH_ADMIN_PASSWORD
    secret_from_file MLFLOW_FLASK_SERVER_SECRET_KEY
    if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
        MLFLOW_FLASK_SERVER_SECRET_KEY="$("$python" -c 'import secrets; print(secrets.token_hex(32))')"
        export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    app=(--app-name basic-auth)
elif [[ -n "${MLFLOW_AUTH:-}" ]]; then
    echo "serve.sh: MLFLOW_AUTH=$MLFLOW_AUTH: only 'basic' is supported" >&2
    exit 2
fi

exec "$python" -m mlflow server \
    "${app[@]}" \
    --backend-store-uri "$backend" \
    --artifacts-destination "$artifacts" \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-127.0.0.1}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-1}" \
    "$@"
