"""The process that runs one run's ServerApp for a Pollinate server.

Started by the server (never by hand): it reads the run from its environment, loads
the ServerApp from the app directory, and drives it against a :class:`GrpcGrid`. What
it prints becomes the run's log (``pollinate logs``); its exit code the run's status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from pollinate.cli.display import ProgressDisplay
from pollinate.cli.project import load_project
from pollinate.records import Context, RecordDict
from pollinate.runtime.grpc._common import SERVERAPP_MALLOC, tune_malloc
from pollinate.runtime.grpc.grid import GrpcGrid
from pollinate.runtime.loading import load_object
from pollinate.server import ServerApp
from pollinate.strategy.history import NullObserver, ObserverGroup


def _exit_with_parent() -> None:
    """Die when the server dies (even by kill -9): a restarted server starts a new
    process for the run, which resumes from the run's last checkpoint."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _ResultLogger(NullObserver):
    """Published results go to the run's log as one JSON line each (``pollinate logs``)."""

    def on_result(self, name: str, data: Mapping[str, Any]) -> None:
        print(f"result {name} {json.dumps(dict(data), separators=(',', ':'))}", flush=True)


def main() -> int:
    _exit_with_parent()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--root-certificate", type=Path)
    parser.add_argument("--insecure", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s"
    )
    tune_malloc(**SERVERAPP_MALLOC)
    run_id = int(os.environ["POLLINATE_RUN_ID"])
    token = os.environ["POLLINATE_RUN_TOKEN"]
    run_config = json.loads(os.environ.get("POLLINATE_RUN_CONFIG", "{}"))
    project = load_project(os.environ["POLLINATE_APP_DIR"])
    project.add_to_path()
    server_app = load_object(project.server_app, ServerApp)
    credentials = None
    if args.root_certificate is not None:
        from pollinate.runtime.grpc.security import tls_channel_credentials

        credentials = tls_channel_credentials(args.root_certificate.read_bytes())
    display = ProgressDisplay(Console(file=sys.stdout, force_terminal=False, width=120))
    observer = ObserverGroup(display, _ResultLogger())
    grid = GrpcGrid(
        args.server,
        run_id=run_id,
        token=token,
        credentials=credentials,
        observer=observer,
        local_replies=os.environ.get("POLLINATE_LOCAL_REPLIES") == "1",
        staging_dir=os.environ.get("POLLINATE_STAGING_DIR") or None,
        recycle_dir=os.environ.get("POLLINATE_RECYCLE_DIR") or None,
    )
    print(f"run {run_id}: {project.name} ServerApp started", flush=True)
    context = Context(
        run_id=run_id, node_id=0, node_config={}, run_config=run_config, state=RecordDict()
    )
    with grid:
        server_app(grid, context)
    print(f"run {run_id}: completed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
