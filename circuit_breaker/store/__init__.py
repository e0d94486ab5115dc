"""Where instance state and events live."""

from ._base import Store
from ._memory import MemoryStore

__all__ = ["MemoryStore", "Store"]
