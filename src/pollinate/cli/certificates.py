"""``pollinate certificates DIR``: write a self-signed CA and server certificate for testing."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["certificates"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST",
    help="A DNS name or IP address nodes use to reach the server; repeat for several "
    f"[default: {', '.join(DEFAULT_HOSTS)}].",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="How long the certificates stay valid.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def certificates(directory: Path, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Write a test CA and server certificate (ca.pem, ca.key, server.pem, server.key) to
    DIRECTORY.

    For testing and small deployments: the CA is self-signed. Give nodes ca.pem; keep
    ca.key and server.key private.
    """
    from pollinate.runtime.grpc.security import write_certificates  # cryptography: lazily

    paths = write_certificates(directory, hosts=hosts or DEFAULT_HOSTS, days=days, force=force)
    click.echo(
        f"Wrote {paths.ca_certificate}, {paths.ca_key}, {paths.server_certificate} and "
        f"{paths.server_key} for {', '.join(hosts or DEFAULT_HOSTS)}, valid {days} days.\n"
        f"Give nodes {paths.ca_certificate} as their root certificate; "
        f"keep {paths.ca_key} and {paths.server_key} private."
    )
