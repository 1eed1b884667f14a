"""Gateways for the integration suite over the session's exported repository, with small limits.

`gateway` is the app in this process, reached without a socket. `gateway_url` is the same setup
under real uvicorn on 127.0.0.1 (on a thread of this process), for tests that need a URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.inprocess import InProcessGateway, gateway_settings, serving_in_thread

LIMITS = {"max_inputs_per_request": 16, "max_instruction_chars": 64, "max_image_pixels": 1_000_000}


@pytest.fixture(scope="session")
def gateway(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with InProcessGateway(gateway_settings(model_repository, tmp_path_factory.mktemp("data"), **LIMITS)) as client:
        yield client


@pytest.fixture(scope="session")
def gateway_url(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_in_thread(gateway_settings(model_repository, tmp_path_factory.mktemp("data"), **LIMITS)) as url:
        yield url
