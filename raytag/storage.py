"""URIs to filesystems: local paths, ``file://``, ``s3://`` and any fsspec URL.

Credentials never travel in URIs or arguments: s3fs and pyarrow read them from the
environment or the usual AWS chain (``AWS_ACCESS_KEY_ID``, profiles, instance roles).
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points both at an S3-compatible
server such as SeaweedFS or MinIO.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs


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


def _fsspec_options(uri: str) -> dict:
    if urlparse(uri).scheme in ("s3", "s3a"):
        endpoint = s3_endpoint()
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
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
        fs = pafs.S3FileSystem(
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


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL without mangling the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out
