"""The project's own executors: every ``Executor`` subclass defined in a module of this folder is registered by
its name (``circuit-breaker executors`` lists them), for workflows and for workers, next to the built-ins.
``rate_limited.py`` is an example."""
