"""Registries restored after a test that registers something in them (also when the test fails), so a method,
pipeline, subset or metric registered by one test never reaches another."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def restored(*registries: dict) -> Iterator[None]:
    """Each registry dict as it was on entry, put back on exit."""
    before = [dict(registry) for registry in registries]
    try:
        yield
    finally:
        for registry, entries in zip(registries, before):
            registry.clear()
            registry.update(entries)
