"""The baseline a user would write: FastAPI + open_clip, no batching, no cache (system (e)).

A plain `def` route (FastAPI runs it on its thread pool) takes the same JSON as the gateway's
/embed, decodes each image with PIL, applies open_clip's preprocessing and runs one
instruction forward and one image forward per input, on the same exported TorchScript
weights as every other system.

    python -m benchmarks.naive_server --repository DIR --family demo --port P
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException

from benchmarks.scripted import ScriptedFamily
from focalserve_client.schemas import EmbedInput, EmbedRequest


def create_app(family: ScriptedFamily) -> FastAPI:
    app = FastAPI(title="naive open_clip server")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(request: EmbedRequest) -> dict:
        data = [
            {
                "index": index,
                "embedding": family.embed_requests(*_pair(entry))[0].tolist(),
                "instruction": entry.instruction,
            }
            for index, entry in enumerate(request.inputs)
        ]
        return {"model": family.spec.name, "dim": family.spec.embedding_dim, "data": data}

    return app


def _pair(entry: EmbedInput) -> tuple[list[bytes], list[str]]:
    """One input as embed_requests takes it: the baseline embeds (image, instruction) pairs only."""
    if not isinstance(entry.image, str) or entry.instruction is None:
        raise HTTPException(422, "the naive server embeds (inline image, instruction) pairs only")
    return [base64.b64decode(entry.image)], [entry.instruction]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--family", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(ScriptedFamily(args.repository, args.family)), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
