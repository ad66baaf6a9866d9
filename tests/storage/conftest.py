"""Storage-test fixtures: the IPFS daemon only when the ipfs store backend is selected."""

from __future__ import annotations

import os

import pytest


def _ipfs_selected() -> bool:
    stores = os.environ.get("CHAINFL_TEST_STORES", "file,ipfs")
    return "ipfs" in [s.strip() for s in stores.split(",")]


@pytest.fixture(scope="session")
def daemon_url(request):
    """The session's js-ipfs daemon URL; these tests compare against a real daemon, so they are
    skipped (saying so) only when CHAINFL_TEST_STORES deliberately leaves ipfs out."""
    if not _ipfs_selected():
        pytest.skip("needs the IPFS daemon, but CHAINFL_TEST_STORES does not list ipfs")
    return request.getfixturevalue("ipfs_url")
