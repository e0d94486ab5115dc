"""Shared fixtures. Engine tests get a fresh in-memory engine per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from circuit_breaker import Engine


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    async with Engine() as eng:
        yield eng
