"""The ``raytag`` command. Thin: it parses options and calls the library."""

from __future__ import annotations

import json

import click

from raytag.config import AudioConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raytag")
def main() -> None:
    """Music audio auto-tagging at catalogue scale, on Ray."""


@main.command("models")
@click.option(
    "--n-tags", default=50, show_default=True, help="Output tags to count parameters for."
)
def models_command(n_tags: int) -> None:
    """List the model presets with their parameter counts."""
    from raytag.models import build_model, list_models

    for name in list_models():
        model = build_model(name, n_tags=n_tags)
        count = sum(p.numel() for p in model.parameters())
        click.echo(f"{name:20s} {model.arch:12s} {count:>11,d} parameters")


@main.command("decode")
@click.argument("uris", nargs=-1, required=True)
@click.option("--patch-seconds", default=3.0, show_default=True)
@click.option("--max-patches", type=int, default=None, help="K evenly spaced patches per track.")
@click.option("--max-seconds", type=float, default=None, help="Reject longer tracks.")
def decode_command(
    uris: tuple[str, ...], patch_seconds: float, max_patches: int | None, max_seconds: float | None
) -> None:
    """Decode audio as the pipeline would; print one JSON line per URI (or its error code)."""
    from raytag.audio import AudioError, decode_patches

    config = AudioConfig(
        patch_seconds=patch_seconds, max_patches=max_patches, max_seconds=max_seconds
    )
    failures = 0
    for uri in uris:
        try:
            track = decode_patches(uri, config)
        except AudioError as error:
            failures += 1
            record = {"uri": uri, "error_code": str(error.code), "message": error.message}
        else:
            record = {
                "uri": uri,
                "duration_s": round(track.duration_s, 3),
                "n_patches": int(track.patches.shape[0]),
            }
        click.echo(json.dumps(record))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
