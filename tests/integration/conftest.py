"""A real gateway (uvicorn subprocess on 127.0.0.1) over the session's exported repository."""

from __future__ import annotations

import pytest

from focalserve_devtools.launch import running_gateway


@pytest.fixture(scope="session")
def gateway_url(model_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "gateway.log"
    with running_gateway(model_repository, log, max_inputs_per_request="16", max_instruction_chars="64",
                         max_image_pixels="1000000", data_dir=str(tmp_path_factory.mktemp("data"))) as url:
        yield url
