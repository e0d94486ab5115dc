"""Where instance state and events live."""

from ._base import MarkingStore, SharedStore, Store
from ._memory import MemoryStore

__all__ = ["MarkingStore", "MemoryStore", "SharedStore", "Store"]
