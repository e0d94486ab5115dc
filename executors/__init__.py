"""Project-specific custom executors live here and are discovered like workflows.

The executor framework (``circuit_breaker.executors``) arrives with the executors issue; until then
transition actions are plain Python functions, sync or async.
"""
