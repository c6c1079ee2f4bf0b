"""Ray's token authentication is on in the test session, as on the cluster: the job API of
the `ray start` head and of the in-process cluster refuses requests without the session's
token, and `ray job submit` without it, or with another token, is refused with Ray's
authentication error and runs nothing, while the same submit with the token runs."""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from tests.services import RayHead

pytestmark = pytest.mark.integration  # ray_local is also asked for by name


def session_token() -> str:
    """The token tests/conftest.py made for this session."""
    return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


def job_api_status(url: str, token: str | None) -> int:
    """The HTTP status of a GET of ``url``, with ``token`` as a bearer token if given."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("cluster", ["ray_head", "ray_local"])
def test_the_job_api_answers_only_the_session_token(cluster: str, request) -> None:
    """401 without a token, 403 with another one, 200 with the session's."""
    found = request.getfixturevalue(cluster)
    address = found.address if isinstance(found, RayHead) else found
    jobs = f"{address}/api/jobs/"
    assert job_api_status(jobs, None) == 401
    assert job_api_status(jobs, secrets.token_hex(32)) == 403
    assert job_api_status(jobs, session_token()) == 200


def without_ray_auth(home: Path) -> dict[str, str]:
    """A user's environment with no Ray token anywhere: no RAY_AUTH_* variables and a home
    without ~/.ray/auth_token."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_")}
    return {**env, "HOME": str(home)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("client_token", "refusal"),
    [(None, "Authentication required"), (secrets.token_hex(32), "Authentication failed")],
    ids=["no-token", "wrong-token"],
)
def test_ray_job_submit_without_the_token_is_refused(
    ray_head: RayHead, tmp_path: Path, client_token: str | None, refusal: str
) -> None:
    client_env = without_ray_auth(tmp_path)
    if client_token:  # a token of its own, passed as a user would
        client_env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": client_token}
    marker = f"refused-{secrets.token_hex(4)}"
    refused = ray_head.submit("-c", f"print('{marker}')", client_env=client_env, timeout=120)
    assert refused.returncode != 0
    assert f"AuthenticationError: {refusal}" in refused.stderr, refused.stderr[-3000:]
    # Nothing ran: no job the head knows of has the refused entrypoint.
    known = JobSubmissionClient(ray_head.address).list_jobs()
    assert not [job for job in known if marker in job.entrypoint]


@pytest.mark.slow
def test_ray_job_submit_with_the_token_runs(ray_head: RayHead) -> None:
    submission_id = f"with-token-{secrets.token_hex(4)}"
    accepted = ray_head.submit(
        "-c", "print('ran with the token')", submission_id=submission_id, timeout=300
    )
    assert accepted.returncode == 0, (accepted.stdout + accepted.stderr)[-3000:]
    record = ray_head.job_record(submission_id)
    assert record["status"] == "SUCCEEDED" and "ran with the token" in record["logs"]
