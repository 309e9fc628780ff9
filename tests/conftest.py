"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from calsync.sandbox import Sandbox

# The date the sandbox data set is generated around, so that tests see the same bookings every day.
SANDBOX_ANCHOR = date(2026, 1, 15)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A running sandbox Cashfin API on loopback with the 300 default bookings around ``SANDBOX_ANCHOR``."""
    with Sandbox(anchor=SANDBOX_ANCHOR) as running:
        yield running


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep proxy variables from routing the tests' loopback requests elsewhere."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
