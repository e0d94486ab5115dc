"""The garbage-collector policy of serve and worker, and the setting that turns it off."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from circuit_breaker._gc import TUNED_THRESHOLDS, tune_gc
from circuit_breaker.config import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_the_heap_and_raises_the_thresholds(restore_gc: None) -> None:
    gc.unfreeze()
    alive = object()
    tune_gc()
    assert gc.get_threshold() == TUNED_THRESHOLDS
    assert gc.get_freeze_count() > 1000  # the start-up heap (modules, schemas) is out of the scans
    assert alive is not None
    # Cycles made afterwards are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_the_policy_is_on_by_default_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().gc_tuning is True
    monkeypatch.setenv("CB_GC_TUNING", "false")
    assert Settings().gc_tuning is False
