"""The project's own executors and stage patterns.

Every ``Executor`` subclass defined in a module of this folder is registered by its name for the project's
workflows (``circuit-breaker executors`` lists them next to the built-ins); a worker run in the project (or
given ``--project``) serves them too, next to installed executor packages (entry points) and the built-ins.
``rate_limited.py`` is a custom stage pattern.
"""
