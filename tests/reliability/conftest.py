"""Gateways for the reliability suite: the app in this process over the tiny exported families."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.inprocess import InProcessGateway, gateway_settings

API_KEY = "fs-test-key-8c1d7e"
HARDENED = {"max_body_bytes": 2 * 1024 * 1024, "max_instruction_chars": 64, "admin_key": API_KEY}


@pytest.fixture(scope="module")
def hardened_gateway(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """Small limits, keys required (the bootstrap admin key), so each limit can be hit cheaply."""
    with InProcessGateway(gateway_settings(model_repository, tmp_path_factory.mktemp("data"), **HARDENED)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client
