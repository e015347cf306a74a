"""``pollinate server``: the coordinator of a deployment."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from pollinate.errors import ConfigError

__all__ = ["server"]


@click.command()
@click.option(
    "--address",
    default="0.0.0.0:9092",
    show_default=True,
    metavar="HOST:PORT",
    help="Where nodes and the CLI connect.",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The SQLite state file (created if missing); a restart resumes from it.",
)
@click.option(
    "--certificates",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with server.pem and server.key (`pollinate certificates DIR`).",
)
@click.option("--insecure", is_flag=True, help="Plaintext gRPC, for tests on one machine.")
@click.option(
    "--authorized-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Only nodes whose public key is listed here may connect.",
)
@click.option(
    "--operator-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Public keys allowed to submit, list, follow and stop runs (`pollinate run ... "
    "--key FILE`). Without it, only processes on this machine may.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds; a node silent for two intervals is dead.",
)
@click.option(
    "--bulk-port",
    default="auto",
    show_default=True,
    metavar="PORT|auto|off",
    help="A second port where nodes fetch and upload model-sized frames as raw bytes "
    "(same TLS certificate; tickets from the gRPC port): faster than gRPC for large "
    "models. auto: the gRPC port + 1; 0: any free port; off: frames go over gRPC.",
)
@click.option(
    "--serverapp-over-network",
    is_flag=True,
    hidden=True,
    help="Runs' ServerApps send and receive through the socket, not the state directory.",
)
def server(
    address: str,
    state: Path,
    certificates: Path | None,
    insecure: bool,
    authorized_keys: Path | None,
    operator_keys: Path | None,
    heartbeat_interval: float,
    bulk_port: str,
    serverapp_over_network: bool,
) -> None:
    """Run the coordinator: nodes connect here, runs are submitted here."""
    from pollinate.runtime.grpc import security
    from pollinate.runtime.grpc.server import ServerSettings, serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if certificates is None and not insecure:
        raise ConfigError(
            "give --certificates DIR (TLS) or --insecure (plaintext); create "
            "test certificates with `pollinate certificates DIR`"
        )
    if certificates is not None and insecure:
        raise ConfigError("--certificates and --insecure exclude each other")
    credentials = None
    root = None
    if certificates is not None:
        credentials = security.tls_server_credentials(
            security.load_server_credentials(certificates)
        )
        root = certificates / "ca.pem"
    else:
        logging.getLogger("pollinate.server").warning(
            "--insecure: traffic is plaintext and unauthenticated; use only on a trusted network"
        )
    verifier = None
    if authorized_keys is not None:
        verifier = security.RequestVerifier(security.load_authorized_keys(authorized_keys))
    operator_verifier = None
    if operator_keys is not None:
        operator_verifier = security.RequestVerifier(security.load_authorized_keys(operator_keys))
    settings = ServerSettings(
        address=address,
        state=state,
        credentials=credentials,
        root_certificate=root if root is not None and root.is_file() else None,
        verifier=verifier,
        operator_verifier=operator_verifier,
        heartbeat_interval=heartbeat_interval,
        local_serverapp=not serverapp_over_network,
        bulk_port=_bulk_port(bulk_port, address),
        bulk_tls=None
        if certificates is None
        else (certificates / "server.pem", certificates / "server.key"),
    )
    from pollinate.runtime.grpc._common import SERVER_MALLOC, tune_malloc

    tune_malloc(**SERVER_MALLOC)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(settings, stop=stop)
    except KeyboardInterrupt:
        stop.set()


def _bulk_port(value: str, address: str) -> int | None:
    """The bulk port a --bulk-port value asks for (``None``: none)."""
    if value == "off":
        return None
    if value == "auto":
        port = address.rsplit(":", 1)[-1]
        if not port.isdigit() or int(port) == 0:
            return 0
        return int(port) + 1 if int(port) < 65535 else 0
    if value.isdigit() and int(value) <= 65535:
        return int(value)
    raise ConfigError(f"--bulk-port {value!r}: give a port number, auto or off")
