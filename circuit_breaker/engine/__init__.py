"""The runtime: drives firings, runs actions, retries, timeouts and incidents."""

from ._engine import Engine
from ._instance import Incident, Instance
from ._lifecycle import InstanceStatus

__all__ = ["Engine", "Incident", "Instance", "InstanceStatus"]
