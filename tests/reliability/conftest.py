"""Gateways for the reliability suite: real uvicorn on 127.0.0.1 over the tiny exported families."""

from __future__ import annotations

import pytest

from focalserve_devtools.launch import running_gateway

API_KEY = "fs-test-key-8c1d7e"


@pytest.fixture(scope="module")
def hardened_gateway(model_repository, tmp_path_factory):
    """Small limits, API keys on, so each limit can be hit cheaply."""
    logs = tmp_path_factory.mktemp("logs")
    with running_gateway(model_repository, logs / "gateway.log", data_dir=str(tmp_path_factory.mktemp("data")),
                         max_body_bytes=str(2 * 1024 * 1024), max_instruction_chars="64",
                         api_keys=f"another-key,{API_KEY}") as url:
        yield url, logs / "gateway.log"
