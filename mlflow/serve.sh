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

exec "$python" -m mlflow server \
    --backend-store-uri "$backend" \
    --artifacts-destination "$artifacts" \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-127.0.0.1}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-1}" \
    "$@"
