"""The ``pollinate`` command: assembles the subcommands and owns error reporting.

A :class:`~pollinate.errors.PollinateError` (bad input, a run that cannot go on) is
one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from pollinate import __version__
from pollinate.cli.certificates import certificates
from pollinate.cli.keys import keys
from pollinate.cli.new import new
from pollinate.cli.node import node
from pollinate.cli.run import logs, run, runs, stop
from pollinate.cli.server import server
from pollinate.cli.simulate import simulate
from pollinate.errors import PollinateError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pollinate")
def cli() -> None:
    """Pollinate: federated learning that moves the computation to the data."""


for command in (simulate, new, server, node, run, runs, logs, stop, certificates, keys):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        cli.main(args=argv, prog_name="pollinate", standalone_mode=False)
    except PollinateError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
