"""The ``circuit-breaker`` command: ``run``, ``graph`` and ``check`` a workflow file, and ``version``.

typer and rich are imported only when the command runs, so ``import circuit_breaker`` stays fast.

Exit codes, so that scripts and CI can tell outcomes apart:

    0  ok; for ``run``: the instance completed, or waits on a manual transition
    1  the instance failed (an incident) or is stuck (waiting, but no transition can fire);
       ``check`` found problems
    2  usage error: a bad option or argument, or --workflow is missing or names no workflow of the file
    3  the workflow is defined wrongly (``check`` reports such problems instead, with exit code 1)
    4  bad input data: --data is not a JSON object, or the workflow's token model rejects it
    5  the workflow file cannot be loaded: missing, raises on import (.py), is not a valid document
       (.yaml/.yml/.json), or defines no Workflow
    6  timed out waiting for the instance (--timeout)

Errors are one line on stderr starting with ``error:``, never a traceback; results go to stdout. With
``--json`` an error is also one ``{"error": {...}}`` object on stdout (see README.md).
"""


def main() -> None:
    """Console-script entry point (``circuit-breaker``)."""
    import logging
    import sys
    from typing import Any, cast

    from ..secrets import mask_logs
    from ._app import app
    from ._signals import hang_up_as_ctrl_c

    # The library only logs; the command decides where logs go, and masks secrets on the way out.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mask_logs()
    hang_up_as_ctrl_c()
    if "--json" not in sys.argv[1:]:
        app()
        return
    # With --json a usage error (a bad option or argument, found before the command runs) is also one
    # {"error": {...}} object on stdout, as every other error is: a script reads why, not only the exit code.
    import typer

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except typer.TyperException as err:  # (typer's click: UsageError, BadParameter, NoSuchOption...)
        from typer import rich_utils

        from ._app import _print_json

        exit_code = int(getattr(err, "exit_code", 2))
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        error = {"code": "usage", "message": message, "exit_code": exit_code, "type": type(err).__name__}
        _print_json({"error": error})
        rich_utils.rich_format_error(cast(Any, err))  # (what typer shows without --json)
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)
