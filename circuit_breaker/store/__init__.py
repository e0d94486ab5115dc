"""Where instance state and events live."""

from ._base import SharedStore, Store
from ._memory import MemoryStore

__all__ = ["MemoryStore", "SharedStore", "Store"]
