"""Joining a Ray cluster: one ``--ray-address`` option, meaning the same in every command."""

from __future__ import annotations

import click

ray_address_option = click.option(
    "--ray-address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Cluster to join (default: Ray's own choice, a local one if none runs; "
    "'local' always starts a new one).",
)


def join(address: str | None) -> None:
    """Join (or start) the cluster at ``address``; a process already connected stays on its
    cluster, so a command called from Python (a test, the demo) uses the caller's."""
    import ray

    ray.init(address=address, ignore_reinit_error=True)
