"""The server side: ServerApp and the Grid every runtime implements."""

from pollinate.server.app import MainFn, ServerApp
from pollinate.server.grid import Grid

__all__ = ["Grid", "MainFn", "ServerApp"]
