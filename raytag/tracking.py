"""Access to the MLflow tracking server: credentials from the environment, and one clear
error when the server refuses them.

MLflow's clients read ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (basic
auth, what ``mlflow/serve.sh``'s authenticated server checks) from the environment (else
``~/.mlflow/credentials``) of whichever process calls the server: the driver of ``raytag
train`` and of every other command, and the Ray Train worker of rank 0, which logs each
epoch's metrics. A Ray worker's environment is its node's, so on a cluster the credentials
go where the nodes start (never a job's ``runtime_env``, which Ray's dashboard shows).
MLflow does not retry a refusal (401 or 403): :func:`access_error` turns it into one
:class:`TrackingAccessError` that names the server and the variables to set.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"
REFUSED_STATUSES = (401, 403)


@dataclass(frozen=True)
class Credentials:
    """A user of the tracking server; the password stays out of ``repr``, hence out of logs
    and test reports."""

    username: str
    password: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """The environment variables an MLflow client reads them from."""
        return {USERNAME_VAR: self.username, PASSWORD_VAR: self.password}


class TrackingAccessError(RuntimeError):
    """The tracking server refused this process: no credentials, wrong ones, or a user
    without the permission the call needs."""


def check_access(tracking_uri: str | None = None) -> None:
    """Ask the server for one experiment, which any signed-in user may list: raises
    :class:`TrackingAccessError` when it refuses this process; passes for a server without
    authentication and for a tracking URI that is no server."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    if not _is_server(uri):
        return
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as error:
        refused = access_error(error, uri)
        if refused is None:
            raise
        raise refused from None


def check_ray_workers(tracking_uri: str, resource: str = "CPU") -> None:
    """The same check on every live node with ``resource`` (the nodes Ray Train can place
    workers on, GPU for a GPU fit), in that node's environment, which rank 0 logs each
    epoch's metrics with; before the fit, so a node without the credentials fails the run
    at once instead of after every retry of its workers. A node an autoscaler adds later
    is checked by rank 0's first log there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not _is_server(tracking_uri):
        return
    nodes = [
        node for node in ray.nodes() if node["Alive"] and node["Resources"].get(resource, 0) > 0
    ]
    check = ray.remote(num_cpus=0)(_access_problem)
    problems = ray.get([
        check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(tracking_uri)
        for node in nodes
    ])  # fmt: skip
    for node, problem in zip(nodes, problems, strict=True):
        if problem is not None:
            raise TrackingAccessError(
                f"in a Ray worker on node {node['NodeManagerAddress']} (training workers run "
                f"there; rank 0 logs from one): {problem}; a worker has its node's "
                "environment, so set them where the nodes start (mlflow/README.md)"
            )


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def _access_problem(tracking_uri: str) -> str | None:
    try:
        check_access(tracking_uri)
    except TrackingAccessError as error:
        return str(error)
    return None


def access_error(
    error: BaseException, tracking_uri: str | None = None
) -> TrackingAccessError | None:
    """The clear error for ``error`` (or an exception it was raised from) when it is the
    tracking server refusing this process (HTTP 401 or 403); None for any other error."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, TrackingAccessError):
            return seen
        status = _http_status(seen)
        if status in REFUSED_STATUSES:
            import mlflow

            return TrackingAccessError(_explain(status, tracking_uri or mlflow.get_tracking_uri()))
        seen = seen.__cause__ or seen.__context__
    return None


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of an MLflow call's error, or of a download or upload through the
    artifact proxy (requests). Neither library is imported for it: an error of theirs
    exists only once they are loaded, and the CLI asks about every error, --help's too."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(error, mlflow_exceptions.MlflowException):
        return error.get_http_status_code()
    requests = sys.modules.get("requests")
    if (
        requests is not None
        and isinstance(error, requests.HTTPError)
        and error.response is not None
    ):
        return error.response.status_code
    return None


def _explain(status: int, tracking_uri: str) -> str:
    from mlflow.utils.credentials import read_mlflow_creds

    server = f"the MLflow server at {tracking_uri}"
    username = read_mlflow_creds().username
    if status == 403:
        who = f"user '{username}' ({USERNAME_VAR})" if username else "this process"
        return (
            f"{server} does not let {who} do this: an admin grants permissions on the "
            "experiment or registered model (mlflow/README.md)"
        )
    if username is None:
        return (
            f"{server} requires authentication and this process has no credentials: set "
            f"{USERNAME_VAR} and {PASSWORD_VAR} in its environment"
        )
    return (
        f"{server} refused user '{username}': check {USERNAME_VAR} and {PASSWORD_VAR} in "
        "this process's environment"
    )
