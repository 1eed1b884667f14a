"""The serving engine: per family, the batchers, tokenizer, preprocessing and condition cache.

Routes call `FamilyEngine` only; it calls the backend only through its batchers.
"""

from __future__ import annotations

import numpy as np
import open_clip

from focalserve_family import FamilySpec, ModelSpec, families_from_configs
from focalserve_server.backends.base import ModelBackend
from focalserve_server.batching import DynamicBatcher
from focalserve_server.conditions import ConditionCache, instruction_hash
from focalserve_server.config import Settings
from focalserve_server.errors import InvalidInstruction, UnknownModel
from focalserve_server.images import ImagePreprocessor
from focalserve_server.metrics import Metrics

TEXT_SPACE = "text"
UNCONDITIONAL_SPACE = "none"


class FamilyEngine:
    def __init__(self, spec: FamilySpec, backend: ModelBackend, settings: Settings, metrics: Metrics) -> None:
        self.spec = spec
        self.preprocess = ImagePreprocessor(spec)
        self._tokenizer = open_clip.get_tokenizer(spec.tokenizer, context_length=spec.context_length)
        self._backend = backend
        self.batchers = {role: self._batcher(model, settings, metrics) for role, model in spec.models.items()}
        self._conditions = ConditionCache(
            settings.condition_cache_size,
            on_lookup=lambda hit: metrics.condition_cache.labels(spec.name, "hit" if hit else "miss").inc(),
        )

    def _batcher(self, model: ModelSpec, settings: Settings, metrics: Metrics) -> DynamicBatcher:
        async def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return await self._backend.infer(model.name, inputs)

        return DynamicBatcher(
            model.name,
            run,
            max_batch_size=max(1, min(settings.max_batch_size, model.max_batch_size)),
            max_delay_ms=settings.max_delay_ms,
            max_queue_size=settings.max_queue_size,
            on_batch=metrics.batch_size.labels(model.name).observe,
            max_inflight=self._backend.max_inflight,
            on_reject=metrics.rejected.labels(model.name).inc,
        )

    def tokenize(self, text: str) -> np.ndarray:
        return self._tokenizer([text])[0].numpy().astype(np.int64)

    def space(self, instruction: str | None) -> str:
        """Which vectors are comparable: same family and checkpoint, same condition."""
        condition = instruction_hash(instruction) if instruction is not None else UNCONDITIONAL_SPACE
        return f"{self.spec.family}:{self.spec.checkpoint_hash}:{condition}"

    @property
    def text_space(self) -> str:
        return f"{self.spec.family}:{self.spec.checkpoint_hash}:{TEXT_SPACE}"

    async def condition(self, instruction: str) -> np.ndarray:
        """The encoded (normalised) instruction; a repeat is served from the cache."""
        return await self._conditions.get(instruction, self._encode_instruction)

    async def _encode_instruction(self, instruction: str) -> np.ndarray:
        model = self.spec.models["instruction"]
        return await self.batchers["instruction"].submit({model.input_names[0]: self.tokenize(instruction)})

    async def embed_image(self, pixels: np.ndarray, instruction: str | None) -> np.ndarray:
        model = self.spec.models["image"]
        if self.spec.conditional:
            if instruction is None:
                raise InvalidInstruction(
                    f"model {self.spec.name} is a FocalLens family: each image needs an 'instruction'"
                )
            inputs = {model.input_names[0]: pixels, model.input_names[1]: await self.condition(instruction)}
        else:
            if instruction is not None:
                raise InvalidInstruction(f"model {self.spec.name} is a plain CLIP family: it takes no 'instruction'")
            inputs = {model.input_names[0]: pixels}
        return await self.batchers["image"].submit(inputs)

    async def embed_text(self, text: str) -> np.ndarray:
        model = self.spec.models["text"]
        return await self.batchers["text"].submit({model.input_names[0]: self.tokenize(text)})

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()


class Engine:
    """All loaded families, by name."""

    def __init__(self, families: dict[str, FamilyEngine]) -> None:
        self.families = families

    @classmethod
    async def load(cls, backend: ModelBackend, settings: Settings, metrics: Metrics) -> Engine:
        specs = families_from_configs(await backend.model_configs())
        if settings.families:
            specs = {name: spec for name, spec in specs.items() if name in settings.families}
        return cls({name: FamilyEngine(spec, backend, settings, metrics) for name, spec in specs.items()})

    def family(self, name: str | None) -> FamilyEngine:
        if name is None:
            if len(self.families) == 1:
                return next(iter(self.families.values()))
            raise UnknownModel(f"several models are loaded; name one of: {', '.join(sorted(self.families))}")
        if name not in self.families:
            known = ", ".join(sorted(self.families)) or "none"
            raise UnknownModel(f"unknown model {name!r}; loaded: {known}")
        return self.families[name]

    def start(self) -> None:
        for family in self.families.values():
            family.start()

    async def stop(self) -> None:
        for family in self.families.values():
            await family.stop()
