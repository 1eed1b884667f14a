"""PyTriton serving a family's TorchScript models behind Triton's dynamic batcher (system (d)).

Each batch does the work the gateway does per request: decode the image bytes, open_clip's
preprocessing, instruction -> condition (once per distinct instruction in the batch; there is
no cache across batches), image forward. Clients speak Triton's protocol.

Run it as its own process, with `focalserve_devtools.triton_local.tritonserver_env()`: PyTriton's python
backend stub otherwise loads the distribution's older libpython and fails with
"'_thread.RLock' object has no attribute '_recursion_count'".

    python -m benchmarks.pytriton_server --repository DIR --family demo --http-port P --grpc-port P ...
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.scripted import ScriptedFamily

IMAGE, INSTRUCTION, EMBEDDING = "IMAGE", "INSTRUCTION", "EMBEDDING"
MAX_QUEUE_DELAY_US = 5000  # the gateway's default max_delay_ms, so both batchers wait alike


def infer_function(family: ScriptedFamily) -> Callable[..., dict[str, np.ndarray]]:
    """A batched PyTriton inference callable: (IMAGE bytes, INSTRUCTION bytes) rows -> EMBEDDING rows."""

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = [row[0] for row in inputs[IMAGE]]
        instructions = [row[0].decode("utf-8") for row in inputs[INSTRUCTION]]
        return {EMBEDDING: family.embed_requests(images, instructions)}

    return infer


def serve(family: ScriptedFamily, config: TritonConfig, workspace: Path, max_batch_size: int) -> None:
    """Bind the family as one model named after it and block until SIGINT or SIGTERM."""
    with Triton(config=config, workspace=workspace) as triton:
        triton.bind(
            model_name=family.spec.name,
            infer_func=infer_function(family),
            inputs=[Tensor(name=name, dtype=np.bytes_, shape=(1,)) for name in (IMAGE, INSTRUCTION)],
            outputs=[Tensor(name=EMBEDDING, dtype=np.float32, shape=(family.spec.embedding_dim,))],
            config=ModelConfig(
                max_batch_size=max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=MAX_QUEUE_DELAY_US)
            ),
        )
        triton.serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--family", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workspace", type=Path, required=True, help="must not exist; PyTriton removes it on exit")
    parser.add_argument("--max-batch-size", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # serve() shuts Triton down on KeyboardInterrupt
    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_address="127.0.0.1", metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
    )
    serve(ScriptedFamily(args.repository, args.family), config, args.workspace, args.max_batch_size)


if __name__ == "__main__":
    main()
