"""The requests each system's users send, as `Send` callables for the load generator.

Every sender checks its answer (status, and one embedding per image) so that a system that
answers fast with errors or empty bodies counts errors, not throughput.

HTTP goes through aiohttp (installed with tritonclient[http]), not httpx: on these two
shared cores httpx's AsyncClient itself topped out near 500 requests/s at 64 concurrent
requests against a trivial endpoint (1,300 at one), where aiohttp did 11,700; with httpx the
benchmark would have measured its own client at high concurrency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson
import tritonclient.grpc.aio as triton_grpc

from benchmarks.loadgen import Send
from benchmarks.workload import Workload

JSON_HEADERS = {"content-type": "application/json"}
REQUEST_TIMEOUT_S = 300.0  # a closed loop of 64 on a slow system queues for minutes; time out, never hang


def embed_json(session: aiohttp.ClientSession, url: str, model: str, workload: Workload) -> Send:
    """POST /embed with a JSON body: base64 image + instruction (the gateway's and the naive server's API)."""

    async def send(number: int) -> int:
        entry = {"image": workload.image_b64(number), "instruction": workload.instruction_for(number)}
        body = orjson.dumps({"model": model, "inputs": [entry]})
        return await _post(session, f"{url}/embed", body, JSON_HEADERS)

    return send


def embed_multipart(session: aiohttp.ClientSession, url: str, model: str, workload: Workload) -> Send:
    """POST /embed as multipart/form-data: the image as a file, no base64 on either side."""

    async def send(number: int) -> int:
        form = aiohttp.FormData()
        form.add_field("image", workload.image(number), filename="image.png", content_type="image/png")
        form.add_field("instruction", workload.instruction_for(number))
        form.add_field("model", model)
        return await _post(session, f"{url}/embed", form)

    return send


def openai_messages(
    session: aiohttp.ClientSession, url: str, model: str, workload: Workload, encoding: Literal["float", "base64"]
) -> Send:
    """POST /v1/embeddings in vLLM's `messages` form; the only route with a choice of output encoding."""

    async def send(number: int) -> int:
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{workload.image_b64(number)}"}},
            {"type": "text", "text": workload.instruction_for(number)},
        ]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "encoding_format": encoding}
        return await _post(session, f"{url}/v1/embeddings", orjson.dumps(body), JSON_HEADERS)

    return send


def infinity_images(session: aiohttp.ClientSession, url: str, model: str, workload: Workload) -> Send:
    """POST /embeddings with `modality: image` and the image as a data URI (infinity-emb's API). It embeds the
    image alone: a plain CLIP has no instruction, so the workload's instruction is not sent."""

    async def send(number: int) -> int:
        body = {"model": model, "modality": "image", "input": [f"data:image/png;base64,{workload.image_b64(number)}"]}
        return await _post(session, f"{url}/embeddings", orjson.dumps(body), JSON_HEADERS)

    return send


def search_json(session: aiohttp.ClientSession, url: str, body: Callable[[int], dict[str, Any]]) -> Send:
    """POST /search with the JSON body `body(number)`; one query per request, its hits are not counted."""

    async def send(number: int) -> int:
        async with session.post(f"{url}/search", data=orjson.dumps(body(number)), headers=JSON_HEADERS) as response:
            answer = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {answer[:300]!r}")
        return 1

    return send


def triton_infer(client: triton_grpc.InferenceServerClient, model: str, workload: Workload) -> Send:
    """One (IMAGE, INSTRUCTION) pair of BYTES tensors over Triton's gRPC protocol (PyTriton)."""

    async def send(number: int) -> int:
        inputs = [
            _bytes_input("IMAGE", workload.image(number)),
            _bytes_input("INSTRUCTION", workload.instruction_for(number).encode("utf-8")),
        ]
        outputs = [triton_grpc.InferRequestedOutput("EMBEDDING")]
        result = await client.infer(model, inputs, outputs=outputs, client_timeout=REQUEST_TIMEOUT_S)
        return result.as_numpy("EMBEDDING").shape[0]

    return send


def _bytes_input(name: str, value: bytes) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
    return tensor


async def _post(
    session: aiohttp.ClientSession, url: str, data: bytes | aiohttp.FormData, headers: dict[str, str] | None = None
) -> int:
    """POST and count the embeddings answered; raises with the error body on any status but 200."""
    async with session.post(url, data=data, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
    return len(orjson.loads(body)["data"])
