"""``pollinate run``, ``runs``, ``logs`` and ``stop``: runs on a deployment's server."""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from pollinate.cli.project import apply_overrides, load_project
from pollinate.errors import ConfigError

__all__ = ["logs", "run", "runs", "stop"]

_connection = [
    click.option("--server", "server_address", required=True, metavar="HOST:PORT"),
    click.option(
        "--root-certificate",
        type=click.Path(dir_okay=False, path_type=Path),
        help="CA certificate that signed the server's (ca.pem).",
    ),
    click.option("--insecure", is_flag=True, help="Plaintext gRPC, for tests on one machine."),
    click.option(
        "--key",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Private key (`pollinate keys FILE`) to sign with; needed when the server "
        "is on another machine (it lists the public key in --operator-keys).",
    ),
]


def _with_connection(function: Any) -> Any:
    for option in reversed(_connection):
        function = option(function)
    return function


def _stub(
    server_address: str, root_certificate: Path | None, insecure: bool, key: Path | None
) -> Any:
    import grpc

    from pollinate.runtime.grpc import security
    from pollinate.runtime.grpc._common import CHANNEL_OPTIONS
    from pollinate.serde._proto.pollinate.v1 import service_pb2_grpc as rpc

    if (root_certificate is None) == (not insecure):
        raise ConfigError("give --root-certificate FILE (TLS) or --insecure (plaintext)")
    if root_certificate is not None:
        credentials = security.tls_channel_credentials(
            security.load_root_certificate(root_certificate)
        )
        channel = grpc.secure_channel(server_address, credentials, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(server_address, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
    except grpc.FutureTimeoutError:
        raise ConfigError(f"cannot reach a Pollinate server at {server_address}") from None
    if key is not None:
        signer = security.RequestSigner(security.load_private_key(key))
        channel = grpc.intercept_channel(channel, _signing_interceptor(signer))
    return rpc.ControlStub(channel)


def _signing_interceptor(signer: Any) -> Any:
    """A client interceptor that signs every control call with ``signer``'s key."""
    import grpc

    from pollinate.runtime.grpc.security import control_method

    class Details(
        collections.namedtuple(
            "Details",
            ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
        ),
        grpc.ClientCallDetails,
    ):
        pass

    def signed(details: Any) -> Any:
        name = str(details.method).rsplit("/", 1)[-1]
        metadata = [*(details.metadata or ()), *signer.sign(control_method(name), None)]
        return Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    class Signing(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(signed(details), request)

        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(signed(details), request)

    return Signing()


def _call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    import grpc

    from pollinate.runtime.grpc._common import translate_rpc_error

    try:
        return function(*args, **kwargs)
    except grpc.RpcError as exc:
        raise translate_rpc_error(exc, what) from None


def _follow(stub: Any, run_id: int, *, follow: bool) -> str:
    from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

    stream: Iterator[Any] = _call(
        "streaming logs", stub.StreamLogs, pb.StreamLogsRequest(run_id=run_id, follow=follow)
    )
    status = ""
    for line in _iterate(stream):
        if line.final_status:
            status = line.final_status
        else:
            click.echo(line.text)
    return status


def _iterate(stream: Iterator[Any]) -> Iterator[Any]:
    import grpc

    from pollinate.runtime.grpc._common import translate_rpc_error

    try:
        yield from stream
    except grpc.RpcError as exc:
        raise translate_rpc_error(exc, "streaming logs") from None


@click.command()
@click.argument("app", type=click.Path(file_okay=False, path_type=Path))
@_with_connection
@click.option("--rounds", type=click.IntRange(min=0), help="Sets num-server-rounds.")
@click.option("--config", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--detach", is_flag=True, help="Print the run id and return at once.")
def run(
    app: Path,
    server_address: str,
    root_certificate: Path | None,
    insecure: bool,
    key: Path | None,
    rounds: int | None,
    overrides: tuple[str, ...],
    detach: bool,
) -> None:
    """Submit APP as a run to a server and stream its progress."""
    from pollinate.runtime.grpc.apps import pack_app
    from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

    project = load_project(app)
    config = apply_overrides(project.config, overrides)
    if rounds is not None:
        config["num-server-rounds"] = rounds
    import tomllib

    version = str(
        tomllib.loads((project.root / "pyproject.toml").read_text("utf-8"))
        .get("project", {})
        .get("version", "0")
    )
    stub = _stub(server_address, root_certificate, insecure, key)
    response = _call(
        "submitting the run",
        stub.SubmitRun,
        pb.SubmitRunRequest(
            app_name=project.name,
            app_version=version,
            app_bundle=pack_app(project.root),
            config_json=json.dumps(config, default=str),
        ),
    )
    click.echo(f"run {response.run_id} submitted")
    if detach:
        return
    status = _follow(stub, response.run_id, follow=True)
    click.echo(f"run {response.run_id} {status}")
    if status != "completed":
        sys.exit(1)


@click.command()
@_with_connection
def runs(
    server_address: str, root_certificate: Path | None, insecure: bool, key: Path | None
) -> None:
    """List the runs a server knows."""
    from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

    stub = _stub(server_address, root_certificate, insecure, key)
    response = _call("listing runs", stub.ListRuns, pb.ListRunsRequest())
    click.echo(f"{'run':>20}  {'status':10}  {'app':20}  created")
    for item in response.runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.created_at))
        click.echo(
            f"{item.run_id:>20}  {item.status:10}  {item.app_name[:20]:20}  {created}"
            + (f"  {item.error}" if item.error else "")
        )


@click.command()
@click.argument("run_id", type=int)
@_with_connection
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the run ends.")
def logs(
    run_id: int,
    server_address: str,
    root_certificate: Path | None,
    insecure: bool,
    key: Path | None,
    follow: bool,
) -> None:
    """Print the log of a run."""
    _follow(_stub(server_address, root_certificate, insecure, key), run_id, follow=follow)


@click.command()
@click.argument("run_id", type=int)
@_with_connection
def stop(
    run_id: int,
    server_address: str,
    root_certificate: Path | None,
    insecure: bool,
    key: Path | None,
) -> None:
    """Stop a running run."""
    from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

    stub = _stub(server_address, root_certificate, insecure, key)
    response = _call("stopping the run", stub.StopRun, pb.StopRunRequest(run_id=run_id))
    click.echo(f"run {run_id} {'stopping' if response.stopped else 'is not running'}")
