"""``pollinate keys FILE``: write a node's Ed25519 key pair (FILE and FILE.pub).

Needs no gRPC: a data owner can make a key before installing anything else.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["keys"]


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing key pair.")
@click.option(
    "--comment",
    default="pollinate-node",
    show_default=True,
    help="Text after the public key, which the server logs (e.g. the node's name).",
)
def keys(file: Path, force: bool, comment: str) -> None:
    """Write a node key pair: the private key to FILE, the public key to FILE.pub.

    Append FILE.pub to the server's authorized keys file to let this node in.
    """
    from pollinate.runtime.grpc.security import (  # cryptography: lazily
        fingerprint,
        load_authorized_keys,
        write_node_key,
    )

    paths = write_node_key(file, force=force, comment=comment)
    # Read the line back as the server will, so a key that prints is a key that works.
    (public,) = load_authorized_keys(paths.public)
    click.echo(
        f"Wrote the private key {paths.private} (keep it on this node) and the public key "
        f"{paths.public} ({fingerprint(public)}).\n"
        f"Let the node in by appending it to the server's authorized keys:\n"
        f"  cat {paths.public} >> authorized_keys"
    )
