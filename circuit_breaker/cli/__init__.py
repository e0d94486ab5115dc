"""The ``circuit-breaker`` command."""


def main() -> None:
    from ._app import app

    app()
