"""URIs to filesystems: local paths, ``file://``, ``s3://`` and ``gs://`` (with gcsfs).

Credentials never travel in URIs or arguments: s3fs and pyarrow read them from the
environment or the usual AWS chain (``AWS_ACCESS_KEY_ID``, profiles, instance roles).
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points both at an S3-compatible
server such as SeaweedFS or MinIO.

Both S3 clients retry a failed request themselves, in the AWS SDKs' "standard" retry mode
(botocore under s3fs, the AWS C++ SDK under pyarrow): connection failures, timeouts,
throttling and 5xx answers are tried again after a random wait of at most
min(2 ** retry, 20) seconds, up to :func:`s3_max_attempts` attempts per request. Storage
that stays unreachable after them fails the work (:func:`unreachable` tells such an
error apart) instead of hanging it.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

# Attempts per S3 request when AWS_MAX_ATTEMPTS does not say: with the standard mode's
# backoff, up to 111 s of waits (1 + 2 + 4 + 8 + 16 + 4 * 20) before a request gives up,
# which rides out a restarting S3 service or a network blip.
DEFAULT_S3_MAX_ATTEMPTS = 10
# What the S3 clients say when storage did not answer at all (rather than answered "no"):
# the AWS C++ SDK under pyarrow, and botocore's connection and timeout errors under s3fs
# ("Could not connect to the endpoint URL", "Read timeout on endpoint URL", ...).
_UNREACHABLE_MARKERS = ("AWS Error NETWORK_CONNECTION", 'endpoint URL: "')


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (``file:///a/b`` -> ``/a/b``)."""
    return urlparse(uri).path if uri.startswith("file://") else uri


def s3_endpoint() -> str | None:
    """The S3 endpoint override from the environment, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_max_attempts() -> int:
    """Attempts per S3 request, the first included: ``AWS_MAX_ATTEMPTS`` (the AWS SDKs' own
    setting), else :data:`DEFAULT_S3_MAX_ATTEMPTS`."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", str(DEFAULT_S3_MAX_ATTEMPTS))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS={value!r}: give a whole number of attempts, 1 or more")
    return int(value)


def unreachable(error: BaseException) -> str | None:
    """Why object storage did not answer, in the S3 client's words, when ``error``'s chain
    (itself, what it was raised from, a Ray task's cause) says so even after the clients'
    retries; None when it does not (a missing object or a refused request is an answer)."""
    import botocore.exceptions as boto

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = [line.strip() for line in str(current).splitlines() if line.strip()]
        if isinstance(current, boto.ConnectionError | boto.HTTPClientError):
            return lines[0] if lines else type(current).__name__
        for line in lines:
            if any(marker in line for marker in _UNREACHABLE_MARKERS):
                return line
        current = current.__cause__ or current.__context__ or getattr(current, "cause", None)
    return None


def _fsspec_options(uri: str) -> dict[str, Any]:
    if urlparse(uri).scheme in ("s3", "s3a"):
        retries = {"retries": {"max_attempts": s3_max_attempts(), "mode": "standard"}}
        endpoint = s3_endpoint()
        client = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
        return {"config_kwargs": retries, **client}
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **_fsspec_options(uri))
    return fs, path


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for ``uri`` (what Ray Data's readers and writers take)."""
    scheme = urlparse(uri).scheme
    if scheme in ("s3", "s3a"):
        endpoint = s3_endpoint()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        fs = RetryingS3FileSystem(
            s3_max_attempts(),
            endpoint_override=endpoint,
            region=region or "us-east-1",
            allow_bucket_creation=True,
        )
        parsed = urlparse(uri)
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    fs, path = filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with the standard retry mode and ``max_attempts``, which it
    keeps when pickled to Ray tasks, Ray Train's workers and its controller: pyarrow's own
    pickling drops the retry strategy (apache/arrow GH-47348), and a copy would fall back
    to 3 attempts."""

    def __init__(self, max_attempts: int, **options: Any) -> None:
        retry = pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts)
        super().__init__(retry_strategy=retry, **options)
        self.max_attempts = max_attempts
        self.options = options  # no credentials: each process finds its own

    def __reduce__(self) -> tuple[Any, ...]:
        return partial(RetryingS3FileSystem, self.max_attempts, **self.options), ()


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL without mangling the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out
