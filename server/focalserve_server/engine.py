"""The serving engine: the one embed path, from client bytes and text to normalised vectors.

Routes and the collection service call the engine only; it decodes and preprocesses images,
applies the instruction rules, consults the condition cache and submits to the batchers, which
call the backend. Every rule and limit of that path is stated here or in the module it names.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from focalserve_family import FamilySpec, ModelSpec, Role, families_from_configs
from focalserve_family.spec import DType
from focalserve_server.backends.base import ModelBackend
from focalserve_server.batching import DynamicBatcher
from focalserve_server.conditions import ConditionCache, instruction_hash, normalise_instruction
from focalserve_server.config import Settings
from focalserve_server.errors import InvalidInstruction, TooManyInputs, UnknownModel, await_at, check_at
from focalserve_server.images import ImageDecoder, ImagePreprocessor
from focalserve_server.metrics import Metrics
from focalserve_server.text_tokens import TextTokenizer

NUMPY_DTYPES: dict[DType, type[np.generic]] = {"fp32": np.float32, "int64": np.int64, "uint8": np.uint8}
TEXT_SPACE = "text"
UNCONDITIONAL_SPACE = "none"


@dataclass(frozen=True)
class EmbedInput:
    """One input as a client sent it: image bytes (with an instruction for FocalLens) or a text."""

    image: bytes | None = None
    text: str | None = None
    instruction: str | None = None
    instructions: tuple[str, ...] | None = None  # several conditions of one image, in place of `instruction`


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray
    instruction: str | None  # as normalised; None for texts and plain CLIP images
    space: str  # which vectors it is comparable with


class FamilyEngine:
    """One family: its batchers, tokenizer, preprocessing and condition cache."""

    def __init__(
        self, spec: FamilySpec, backend: ModelBackend, images: ImageDecoder, settings: Settings, metrics: Metrics
    ) -> None:
        self.spec = spec
        self._preprocess = ImagePreprocessor(spec)
        self._images = images
        self._max_instruction_chars = settings.max_instruction_chars
        self._tokenizer = TextTokenizer.of_family(spec, settings.model_repository)
        self._backend = backend
        self.batchers = {role: self._batcher(model, settings, metrics) for role, model in spec.models.items()}
        self._conditions = ConditionCache(
            settings.condition_cache_size,
            on_lookup=lambda hit: metrics.condition_cache.labels(spec.name, "hit" if hit else "miss").inc(),
        )

    def _batcher(self, model: ModelSpec, settings: Settings, metrics: Metrics) -> DynamicBatcher:
        async def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            output = await self._backend.infer(model.name, inputs)
            # embeddings leave unit-length in float32 whatever precision the model ran in; a
            # condition vector is the image model's input, not an embedding, and stays as it is
            return output if model.role == "instruction" else unit_rows(output)

        batches_here = self._backend.batches_here
        return DynamicBatcher(
            model.name,
            run,
            max_batch_size=max(1, min(settings.max_batch_size, model.max_batch_size)),
            max_delay_ms=settings.max_delay_ms if batches_here else 0.0,
            max_queue_size=settings.max_queue_size,
            on_batch=metrics.batch_size.labels(model.name).observe if batches_here else None,
            max_inflight=self._backend.max_inflight,
            on_reject=metrics.rejected.labels(model.name).inc,
        )

    # the rules ---------------------------------------------------------------------------

    def normalise(self, text: str, what: str = "instruction") -> str:
        """An instruction or query text as the server compares it, within the length limit."""
        return normalise_instruction(text, self._max_instruction_chars, what)

    def condition_of(self, instruction: str | None) -> str | None:
        """The normalised instruction an image is embedded under: FocalLens needs one, plain CLIP takes none."""
        if self.spec.conditional and instruction is None:
            raise InvalidInstruction(f"model {self.spec.name} is a FocalLens family: each image needs an instruction")
        if not self.spec.conditional and instruction is not None:
            raise InvalidInstruction(f"model {self.spec.name} is a plain CLIP family: an image takes no instruction")
        return None if instruction is None else self.normalise(instruction)

    def space(self, instruction: str | None) -> str:
        """Which vectors are comparable: same family and checkpoint, same condition."""
        condition = instruction_hash(instruction) if instruction is not None else UNCONDITIONAL_SPACE
        return f"{self.spec.family}:{self.spec.checkpoint_hash}:{condition}"

    @property
    def text_space(self) -> str:
        return f"{self.spec.family}:{self.spec.checkpoint_hash}:{TEXT_SPACE}"

    def tokenize(self, text: str) -> np.ndarray:
        return self._tokenizer([text])[0]

    def token_count(self, text: str) -> int:
        """Tokens the text tower sees of a text as normalised: start and end included, padding not."""
        return int(np.count_nonzero(self.tokenize(self.normalise(text, "text"))))

    # the path ----------------------------------------------------------------------------

    async def embed(self, item: EmbedInput) -> list[Embedding]:
        """One client input: a text, or an image under its instruction or each of its `instructions`, in
        order. Errors are located at their field (`image`, `instruction`, `["instructions", i]`, `text`)."""
        if item.text is not None:
            text = check_at(("text",), self.normalise, item.text, "text")
            return [Embedding(await self._submit("text", self.tokenize(text)), None, self.text_space)]
        assert item.image is not None
        if item.instructions is None:
            conditions = [check_at(("instruction",), self.condition_of, item.instruction)]
        else:
            conditions = [check_at(("instructions", i), self.condition_of, text)
                          for i, text in enumerate(item.instructions)]
        pixels = await await_at(("image",), self.prepare(item.image))
        vectors = await self.embed_pixels_under(pixels, conditions)
        return [Embedding(vector, condition, self.space(condition)) for vector, condition in zip(vectors, conditions)]

    async def embed_all(self, items: Sequence[EmbedInput], field: str) -> list[list[Embedding]]:
        """Several inputs at once, each answered as `embed` answers it; an error names its position
        (`[field, index, ...]`)."""
        return list(await asyncio.gather(*(await_at((field, i), self.embed(item)) for i, item in enumerate(items))))

    async def prepare(self, image: bytes) -> np.ndarray:
        """Encoded bytes -> the model's uint8 (3, S, S) input, decoded off the event loop."""
        return await self._images.prepare(self._preprocess, image)

    async def embed_pixels(self, pixels: np.ndarray, condition: str | None) -> np.ndarray:
        """A prepared image under an already normalised condition (see `condition_of`)."""
        if condition is None:
            return await self._submit("image", pixels)
        if self.spec.conditioning == "readout":
            return (await self.embed_pixels_under(pixels, [condition]))[0]
        return await self._submit("image", pixels, await self._conditions.get(condition, self._encode_instruction))

    async def embed_pixels_under(self, pixels: np.ndarray, conditions: Sequence[str | None]) -> list[np.ndarray]:
        """A prepared image under each of several normalised conditions, in order. A readout family
        takes the image once with all of them (one trunk pass); any other family runs once per condition."""
        if self.spec.conditioning != "readout":
            return list(await asyncio.gather(*(self.embed_pixels(pixels, condition) for condition in conditions)))
        texts = [condition for condition in conditions if condition is not None]
        assert len(texts) == len(conditions)  # a FocalLens image always has its instructions (`condition_of`)
        vectors = await asyncio.gather(*(self._conditions.get(text, self._encode_instruction) for text in texts))
        return list(await self._submit("image", pixels, np.stack(vectors)))

    async def embed_query_text(self, text: str) -> np.ndarray:
        return await self._submit("text", self.tokenize(self.normalise(text, "text")))

    async def _encode_instruction(self, instruction: str) -> np.ndarray:
        return await self._submit("instruction", self.tokenize(instruction))

    async def _submit(self, role: Role, *arrays: np.ndarray) -> np.ndarray:
        names = self.spec.models[role].input_names
        return await self.batchers[role].submit(dict(zip(names, arrays, strict=True)))

    async def warm_up(self, observe: Callable[[str, float], None]) -> None:
        """Run every model on zeros of its input shapes, twice at batch 1 and, unless the models run
        on this process's CPU, twice at its largest batch, before the gateway serves: a model's
        first calls (and a GPU's kernel selection and memory pool) cost tens of milliseconds to
        seconds, which would otherwise land on the first users. On the CPU one small call takes
        all of that: a first call at batch 64 then costs what later ones do (the demo's MiniLM
        towers: 121-139 against 131-138 ms), and warming there at batch 64 cost every start 1.4 s.
        One small JPEG goes through decoding and preprocessing too (threads, codecs, transform)."""
        for data in (_PROBE_JPEG, _PROBE_JPEG):
            await self.prepare(data)
        self.tokenize("warm up")
        placement = self._backend.placement()
        on_this_cpu = placement is not None and placement[0] == "cpu"
        for role, model in self.spec.models.items():
            started = time.perf_counter()
            for size in sorted({1} if on_this_cpu else {1, self.batchers[role].max_batch_size}):
                zeros = {tensor.name: np.zeros((size, *(max(dim, 1) for dim in tensor.dims)),
                                               NUMPY_DTYPES[tensor.dtype])
                         for tensor in model.inputs}
                for _ in range(2):
                    await self._backend.infer(model.name, zeros)
            observe(model.name, time.perf_counter() - started)

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()


class Engine:
    """All loaded families, by name, and the request-level limits of the embed path."""

    def __init__(self, families: dict[str, FamilyEngine], max_inputs_per_request: int) -> None:
        self.families = families
        self.max_inputs_per_request = max_inputs_per_request

    @classmethod
    async def load(cls, backend: ModelBackend, images: ImageDecoder, settings: Settings, metrics: Metrics) -> Engine:
        specs = families_from_configs(await backend.model_configs())
        if settings.families:
            specs = {name: spec for name, spec in specs.items() if name in settings.families}
        families = {name: FamilyEngine(spec, backend, images, settings, metrics) for name, spec in specs.items()}
        return cls(families, settings.max_inputs_per_request)

    def family(self, name: str | None) -> FamilyEngine:
        if name is None:
            if len(self.families) == 1:
                return next(iter(self.families.values()))
            raise UnknownModel(f"several models are loaded; name one of: {', '.join(sorted(self.families))}")
        if name not in self.families:
            known = ", ".join(sorted(self.families)) or "none"
            raise UnknownModel(f"unknown model {name!r}; loaded: {known}", loc=("model",))
        return self.families[name]

    def check_count(self, count: int, field: str) -> None:
        """The one input-count limit, for /embed, the OpenAI route and item uploads alike; checked
        before a request's inputs are decoded, so an oversized request costs no decoding. It counts
        embeddings answered: an image with eight instructions counts eight."""
        if count > self.max_inputs_per_request:
            raise TooManyInputs(
                f"{count} {field} in one request; the limit is {self.max_inputs_per_request}",
                loc=(field,),
                limit=self.max_inputs_per_request,
            )

    async def embed(
        self, model: str | None, items: Sequence[EmbedInput], field: str
    ) -> tuple[FamilyEngine, list[list[Embedding]]]:
        """Inputs of one request (whose count the caller checked before decoding them), each answered
        with its embeddings (one per instruction it asks)."""
        family = self.family(model)
        return family, await family.embed_all(items, field)

    async def warm_up(self, observe: Callable[[str, float], None]) -> None:
        for family in self.families.values():
            await family.warm_up(observe)

    def start(self) -> None:
        for family in self.families.values():
            family.start()

    async def stop(self) -> None:
        for family in self.families.values():
            await family.stop()


def _probe_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


_PROBE_JPEG = _probe_jpeg()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Embeddings leave at unit length, in float32: the gateway's and a bulk ingest's alike."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
