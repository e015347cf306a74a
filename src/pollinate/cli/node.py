"""``pollinate node``: the agent beside the data."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from pollinate.cli.project import load_project, parse_free_items
from pollinate.client import ClientApp
from pollinate.errors import ConfigError
from pollinate.runtime.loading import load_object

__all__ = ["node"]


@click.command()
@click.option("--server", "server_address", required=True, metavar="HOST:PORT")
@click.option(
    "--app",
    "app_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The app project installed on this machine.",
)
@click.option(
    "--node-config",
    "node_config_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="This node's settings (e.g. data path); repeatable.",
)
@click.option(
    "--root-certificate",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificate that signed the server's (ca.pem).",
)
@click.option("--insecure", is_flag=True, help="Plaintext gRPC, for tests on one machine.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="This node's private key (`pollinate keys FILE`), if the server checks keys.",
)
def node(
    server_address: str,
    app_dir: Path,
    node_config_items: tuple[str, ...],
    root_certificate: Path | None,
    insecure: bool,
    key_path: Path | None,
) -> None:
    """Connect to a server and answer its instructions with the local ClientApp."""
    from pollinate.runtime.grpc import security
    from pollinate.runtime.grpc.node import NodeAgent, NodeSettings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if (root_certificate is None) == (not insecure):
        raise ConfigError("give --root-certificate FILE (TLS) or --insecure (plaintext)")
    project = load_project(app_dir)
    project.add_to_path()
    app = load_object(project.client_app, ClientApp)
    credentials = None
    root_pem = None
    if root_certificate is not None:
        root_pem = security.load_root_certificate(root_certificate)
        credentials = security.tls_channel_credentials(root_pem)
    else:
        logging.getLogger("pollinate.node").warning("--insecure: traffic is plaintext")
    signer = None
    if key_path is not None:
        signer = security.RequestSigner(security.load_private_key(key_path))
    version = _project_version(app_dir)
    from pollinate.runtime.grpc._common import NODE_MALLOC, tune_malloc

    tune_malloc(**NODE_MALLOC)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent = NodeAgent(
        NodeSettings(
            server=server_address,
            app=app,
            app_name=project.name,
            app_version=version,
            node_config=parse_free_items(node_config_items, option="--node-config"),
            channel_credentials=credentials,
            root_certificate=root_pem,
            signer=signer,
        ),
        stop=stop,
    )
    try:
        agent.run()
    except KeyboardInterrupt:
        stop.set()


def _project_version(app_dir: Path) -> str:
    import tomllib

    data = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data.get("project", {}).get("version", "0"))
