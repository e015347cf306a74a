"""ServerApp: the program that drives a run from the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from pollinate.errors import ConfigError
from pollinate.records import Context

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["MainFn", "ServerApp"]

#: The body of a run: ``main(grid, context)``; usually builds a Strategy and calls
#: ``strategy.start(grid, ...)``. Its return value (e.g. the Strategy's Result) is
#: handed back to whoever started the run.
MainFn: TypeAlias = Callable[["Grid", Context], Any]


class ServerApp:
    """The server side of a federated app.

    Examples
    --------
    >>> from pollinate.strategy import FedAvg
    >>> app = ServerApp()
    >>> @app.main()
    ... def main(grid, context):
    ...     return FedAvg().start(grid, initial_arrays=..., num_rounds=3)
    """

    def __init__(self, main_fn: MainFn | None = None) -> None:
        self._main = main_fn

    @overload
    def main(self, fn: MainFn) -> MainFn: ...
    @overload
    def main(self) -> Callable[[MainFn], MainFn]: ...
    def main(self, fn: MainFn | None = None) -> MainFn | Callable[[MainFn], MainFn]:
        """Register the run's body; usable as ``@app.main`` or ``@app.main()``."""

        def register(main_fn: MainFn) -> MainFn:
            if self._main is not None:
                raise ConfigError("this ServerApp already has a main function")
            self._main = main_fn
            return main_fn

        return register(fn) if fn is not None else register

    def __call__(self, grid: Grid, context: Context) -> Any:
        """Run the app's main function against ``grid``."""
        if self._main is None:
            raise ConfigError("this ServerApp has no main function; decorate one with @app.main()")
        return self._main(grid, context)
