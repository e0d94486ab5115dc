"""The typer application behind ``circuit-breaker``."""

from __future__ import annotations

import typer

app = typer.Typer(help="circuit_breaker: a Petri-net workflow engine.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    from .. import __version__

    typer.echo(__version__)
