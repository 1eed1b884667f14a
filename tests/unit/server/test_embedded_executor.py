"""The embedded backend runs the exported graphs without TorchScript's optimising executor, on every
device: on CUDA it re-specialises them for every new batch size, on the CPU its first calls cost
a gateway's start ten times more, and neither runs faster for it."""

from __future__ import annotations

import numpy as np
import torch

from focalserve_server.backends.embedded import EmbeddedBackend


async def test_the_graphs_run_unoptimised_and_answer_what_the_optimising_executor_would(model_repository):
    backend = EmbeddedBackend(model_repository, families=["tiny"])
    await backend.start()
    config = next(config for config in await backend.model_configs() if config.name == "tiny_image")
    module = backend._models._modules[config.name]
    executor_states = []

    def recording(*arguments: torch.Tensor) -> torch.Tensor:
        executor_states.append(torch._C._get_graph_executor_optimize())
        return module(*arguments)

    backend._models._modules[config.name] = recording
    generator = np.random.default_rng(0)
    batches = [{tensor.name: generator.standard_normal((size, *tensor.dims)).astype(np.float32)
                for tensor in config.input} for size in (1, 3, 2)]
    plain = [await backend.infer(config.name, batch) for batch in batches]
    assert executor_states == [False, False, False]

    with torch.inference_mode(), torch.jit.optimized_execution(True):
        optimised = [module(*(torch.from_numpy(batch[t.name]) for t in config.input)).numpy() for batch in batches]
    for expected, actual in zip(optimised, plain, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    await backend.close()
