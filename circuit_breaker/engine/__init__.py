"""The runtime: drives firings, runs actions, retries, timeouts and incidents."""

from ._context import Firing, current_firing
from ._engine import Engine
from ._instance import Incident, Instance
from ._lifecycle import InstanceStatus

__all__ = ["Engine", "Firing", "Incident", "Instance", "InstanceStatus", "current_firing"]
