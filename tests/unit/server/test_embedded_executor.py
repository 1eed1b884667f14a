"""On CUDA the embedded backend runs the exported graphs without TorchScript's optimising executor,
which there re-specialises them for every new batch size; on the CPU it keeps it."""

from __future__ import annotations

import numpy as np
import torch

from focalserve_server.backends.embedded import EmbeddedBackend, optimises_graphs


def test_only_cuda_devices_run_the_graphs_unoptimised():
    assert optimises_graphs(torch.device("cpu"))
    assert not optimises_graphs(torch.device("cuda"))
    assert not optimises_graphs(torch.device("cuda:1"))


async def test_both_executor_modes_give_the_same_embeddings_at_new_batch_sizes(model_repository):
    backend = EmbeddedBackend(model_repository, families=["tiny"])
    await backend.start()
    config = next(config for config in await backend.model_configs() if config.name == "tiny_image")
    generator = np.random.default_rng(0)
    batches = [{tensor.name: generator.standard_normal((size, *tensor.dims)).astype(np.float32)
                for tensor in config.input} for size in (1, 3, 2)]

    optimised = [await backend.infer(config.name, batch) for batch in batches]
    backend._optimise = False  # what a CUDA device sets (no GPU here), on the same loaded modules
    plain = [await backend.infer(config.name, batch) for batch in batches]

    for expected, actual in zip(optimised, plain, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    await backend.close()
