"""The gateway's variants: what the condition cache, the request body and the output encoding cost.

Each is measured against the gateway's default request (JSON /embed, the eight trained
phrasings in turn), at one concurrency, on the embedded backend.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.clients import embed_json, embed_multipart, openai_messages
from benchmarks.loadgen import Send
from benchmarks.targets import HttpServer
from benchmarks.workload import Workload, distinct, repeated

Variant = Callable[[HttpServer, str, Workload], Send]  # (gateway, family, workload) -> sender

VARIANTS: dict[str, Variant] = {
    "json, one repeated instruction": lambda gateway, model, workload: embed_json(
        gateway.session, gateway.url, model, workload.with_instructions(repeated)
    ),
    "json, all-distinct instructions": lambda gateway, model, workload: embed_json(
        gateway.session, gateway.url, model, workload.with_instructions(distinct())
    ),
    "multipart body": lambda gateway, model, workload: embed_multipart(gateway.session, gateway.url, model, workload),
    "/v1/embeddings, float output": lambda gateway, model, workload: openai_messages(
        gateway.session, gateway.url, model, workload, "float"
    ),
    "/v1/embeddings, base64 output": lambda gateway, model, workload: openai_messages(
        gateway.session, gateway.url, model, workload, "base64"
    ),
}
