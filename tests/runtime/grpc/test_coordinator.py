"""Coordinator bookkeeping that needs no network: which unpacked apps are kept."""

from __future__ import annotations

from pathlib import Path

from pollinate.runtime.grpc.apps import pack_app, unpack_app
from pollinate.runtime.grpc.server import Coordinator, ServerSettings
from pollinate.runtime.grpc.state import StateStore


def _app(root: Path, name: str) -> Path:
    app = root / name
    app.mkdir()
    (app / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1.0"\n')
    return app


def test_only_apps_of_pending_or_running_runs_are_kept(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        coordinator = Coordinator(ServerSettings(address="127.0.0.1:0", state=store.path), store)
        unpacked = {
            name: unpack_app(pack_app(_app(tmp_path, name)), coordinator.apps_dir)
            for name in ("finished", "running", "pending")
        }
        for name, app_dir in unpacked.items():
            run_id = store.create_run(
                app_name=name, app_version="1.0", app_dir=str(app_dir), config={}
            )
            if name != "pending":
                store.set_run_status(run_id, "running" if name == "running" else "completed")
        leftover = coordinator.apps_dir / ".unpacking-crashed"
        leftover.mkdir()

        removed = coordinator.prune_apps()

        assert sorted(removed) == sorted([unpacked["finished"], leftover])
        assert sorted(coordinator.apps_dir.iterdir()) == sorted(
            [unpacked["running"], unpacked["pending"]]
        )
        assert coordinator.prune_apps() == []
