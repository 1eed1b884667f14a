"""The actors: each loads the family's exported TorchScript graphs once (`ExportedModels`, as the
embedded backend does) and embeds batches of prepared images under every condition.

The conditions are encoded once, when the actor starts. A readout family takes each batch once
with all of them (one trunk pass for K conditions); a full-conditioning family runs once per
condition; a plain CLIP family has its one unconditional view. Vectors leave unit-length in
float32, as the gateway's do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from focalserve_family import FamilySpec, families_from_configs
from focalserve_server.backends.embedded import ExportedModels
from focalserve_server.engine import unit_rows
from focalserve_server.text_tokens import TextTokenizer


class Embedder:
    """A Ray Data callable class (`map_batches(Embedder, compute=ActorPoolStrategy(...))`)."""

    def __init__(
        self, repository: str, family: str, instructions: list[str | None], device: str, dtype: str, threads: int,
        tally: Any,
    ) -> None:
        self._models = ExportedModels(Path(repository), [family], threads, device, dtype)
        self._models.load()
        self.spec: FamilySpec = families_from_configs(self._models.configs)[family]
        self._conditions = self._encode(instructions, Path(repository))
        self._count = len(instructions)
        tally.ready.remote(time.time())

    def _encode(self, instructions: list[str | None], repository: Path) -> np.ndarray | None:
        """(K, condition_dim) float32, or None for a plain CLIP family (its one view takes no instruction)."""
        if not self.spec.conditional:
            return None
        texts = [text for text in instructions if text is not None]
        tokens = TextTokenizer.of_family(self.spec, repository)(texts)
        model = self.spec.models["instruction"]
        return self._models.forward(model.name, dict(zip(model.input_names, [tokens])))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        good = np.array([error == "" for error in batch["error"]], dtype=bool)
        vectors = np.zeros((len(good), self._count, self.spec.embedding_dim), np.float32)
        if good.any():
            vectors[good] = self.embed(np.ascontiguousarray(pixels[good]))
        batch["vectors"] = vectors
        return batch

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, 3, S, S) -> unit (n, K, E), the conditions in the order the actor was given them;
        in runs of the image model's largest batch."""
        step = self.spec.models["image"].max_batch_size
        return np.concatenate([self._embed_run(pixels[start:start + step]) for start in range(0, len(pixels), step)])

    def _embed_run(self, pixels: np.ndarray) -> np.ndarray:
        model = self.spec.models["image"]
        names = model.input_names
        if self._conditions is None:
            return unit_rows(self._models.forward(model.name, {names[0]: pixels}))[:, None]
        n = len(pixels)
        if self.spec.conditioning == "readout":
            conditions = np.tile(self._conditions, (n, 1, 1))
            return unit_rows(self._models.forward(model.name, dict(zip(names, [pixels, conditions]))))
        per_condition = [
            self._models.forward(model.name, dict(zip(names, [pixels, np.tile(vector, (n, 1))])))
            for vector in self._conditions
        ]
        return unit_rows(np.stack(per_condition, axis=1))
