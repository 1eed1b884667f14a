"""Training recipes: what model, data, batches and loss each objective uses.

One training loop (`focalserve_training.loop`) runs every recipe:
- `clip`: plain CLIP contrastive training on image-caption pairs (the demo's base model);
- `focallens`: conditional image embeddings against the frozen answer tower (FocalLens);
- `fsc-clip`: CLIP fine-tuning with global and local hard negatives and SCR (FSC-CLIP).

Under `torchrun` the in-batch contrastive term of every recipe spans all processes' batches
(see `focalserve_training.distributed`): the effective contrastive batch is the per-process
batch size times the number of processes.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import open_clip
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from focalserve_family import CONDITIONAL_FAMILY, Conditioning, FamilyKind
from focalserve_training.data import (
    COLORSHAPE_ANTONYMS,
    COLORSHAPE_WORD_GROUPS,
    ENGLISH_ANTONYMS,
    ENGLISH_WORD_GROUPS,
    BatchPhrasings,
    CaptionDataset,
    ColorShapeCaptions,
    ColorShapeInstructions,
    GroupedInstructionBatchSampler,
    InstructionTripletDataset,
    TwoObjectCaptions,
    read_caption_jsonl,
    read_llava_triplets,
    rule_based_generator,
    training_phrasings,
)
from focalserve_training.losses import FocalLensLoss, FSCCLIPLoss, batch_contrastive_loss
from focalserve_training.models import FamilyModel, FocalLensCLIP, load_family_model
from focalserve_training.models.factory import create_text_tokenizer
from focalserve_training.models.focallens import BaseCLIP, ConditioningError, per_distinct_row
from focalserve_training.models.tokens import encode_image_tokens, encode_text_tokens
from focalserve_training.options import FSC_CLIP_REFERENCE, LORA_ALPHA, FSCCLIPOptions
from focalserve_training.recipe_names import RECIPES


@dataclass(frozen=True)
class DataSpec:
    """Where training data comes from: `colorshape`, `scenes` (two-object ColorShape),
    `colorshape+scenes` (half each), `llava` (instruction JSON) or `captions` (JSONL)."""

    kind: str = "colorshape"
    path: Path | None = None
    image_root: Path = Path(".")
    size: int = 4096  # synthetic datasets: number of images
    seed: int = 0
    skip_missing_images: bool = False  # file datasets: leave out records whose image is missing instead of stopping
    strip_prompt_suffixes: bool = False  # llava: drop LLaVA-1.5's answer-format prompts from instructions


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pretrained: str | None = None
    checkpoint: Path | None = None
    lora_alpha: float = LORA_ALPHA  # scales the checkpoint's LoRA factors, if it has any
    # open_clip's lock_text_tower(N) on the text tower the recipe trains (FocalLens: its instruction
    # tower): all but the last N layers frozen (a Hugging Face tower keeps its projection trainable).
    # None trains the whole tower, as the papers do.
    lock_text: int | None = None
    conditioning: Conditioning = "full"  # focallens: how the condition enters the image tower


class EpochBatchSampler(Protocol):
    """Batches of dataset indices in an order that `set_epoch` reshuffles (as DistributedSampler's)."""

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class Recipe:
    """Builds the pieces of one training objective; the loop stays recipe-agnostic."""

    name: str
    family: FamilyKind

    def __init__(self, model_spec: ModelSpec, data: DataSpec) -> None:
        self.model_spec = model_spec
        self.data = data
        self.model = self.build_model()
        clip = self.model.clip if isinstance(self.model, FocalLensCLIP) else self.model
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        self.transform = open_clip.image_transform(
            preprocess["size"], is_train=False, mean=preprocess["mean"], std=preprocess["std"],
            interpolation=preprocess.get("interpolation"), resize_mode=preprocess.get("resize_mode"),
        )
        self.tokenizer = create_text_tokenizer(model_spec.name)
        if model_spec.lock_text is not None:
            self.trained_text_tower().lock_text_tower(model_spec.lock_text)

    def trained_text_tower(self) -> BaseCLIP:
        """The CLIP whose text tower this recipe trains (`ModelSpec.lock_text` applies to it)."""
        assert not isinstance(self.model, FocalLensCLIP)  # FocalLensRecipe names its instruction tower
        return self.model

    def build_model(self) -> FamilyModel:
        spec = self.model_spec
        if self.family != CONDITIONAL_FAMILY and spec.conditioning != "full":
            raise ConditioningError(f"conditioning {spec.conditioning} is for the focallens recipe, not {self.name}")
        conditioning = spec.conditioning if self.family == CONDITIONAL_FAMILY else None
        return load_family_model(
            self.family, spec.name, spec.pretrained, spec.checkpoint, spec.lora_alpha, conditioning
        ).train()

    def checkpoint_fields(self) -> dict[str, str]:
        """What a checkpoint records beside the weights to rebuild the same model."""
        return {"conditioning": self.model.conditioning} if isinstance(self.model, FocalLensCLIP) else {}

    def dataset(self) -> Dataset:
        raise NotImplementedError

    def batch_sampler(
        self, dataset: Dataset, batch_size: int, seed: int, replicas: int, rank: int
    ) -> EpochBatchSampler | None:
        """None means: the loop shuffles with a distributed sampler of its own."""
        return None

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def new_parameter_names(self) -> tuple[str, ...]:
        """Parameters created by the recipe (not pretrained): they get a larger learning rate."""
        return ()

    def _pixels(self, items: list[dict[str, Any]]) -> torch.Tensor:
        return torch.stack([self.transform(item["image"]) for item in items])

    def _caption_dataset(self) -> Dataset:
        data = self.data
        if data.kind == "colorshape":
            return ColorShapeCaptions(data.size, seed=data.seed)
        if data.kind == "scenes":
            return TwoObjectCaptions(data.size, seed=data.seed)
        if data.kind == "colorshape+scenes":  # compositional data without forgetting single objects
            half = data.size // 2
            return ConcatDataset([ColorShapeCaptions(half, seed=data.seed), TwoObjectCaptions(half, seed=data.seed)])
        if data.kind == "captions" and data.path is not None:
            return CaptionDataset(read_caption_jsonl(data.path, data.image_root, data.skip_missing_images))
        raise ValueError(
            f"recipe {self.name} reads colorshape, scenes, colorshape+scenes or captions:FILE, not {data.kind!r}"
        )


class ClipRecipe(Recipe):
    name, family = "clip", "clip"

    def dataset(self) -> Dataset:
        return self._caption_dataset()

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pixels": self._pixels(items), "captions": self.tokenizer([item["caption"] for item in items])}

    def loss(self, clip: BaseCLIP, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = clip.encode_image(batch["pixels"], normalize=True)
        text = per_distinct_row(partial(clip.encode_text, normalize=True), batch["captions"])
        return {"contrastive_loss": batch_contrastive_loss(image, text, clip.logit_scale.exp(), batch["captions"])}


class FocalLensRecipe(Recipe):
    name, family = "focallens", "focallens"
    instructions_per_image = 4  # LLaVA: instructions of one image per batch

    def __init__(self, model_spec: ModelSpec, data: DataSpec) -> None:
        super().__init__(model_spec, data)
        self.model.freeze_answer_tower()
        self._loss = FocalLensLoss()
        # Synthetic items carry a condition, worded here per batch; LLaVA items carry their instruction.
        self.phrasings = BatchPhrasings(training_phrasings()) if data.kind == "colorshape" else None

    def trained_text_tower(self) -> BaseCLIP:
        assert isinstance(self.model, FocalLensCLIP)
        return self.model.instruction_tower.text

    def dataset(self) -> Dataset:
        data = self.data
        if data.kind == "colorshape":
            return ColorShapeInstructions(data.size, seed=data.seed)
        if data.kind == "llava" and data.path is not None:
            triplets = read_llava_triplets(
                data.path, data.image_root, data.skip_missing_images, data.strip_prompt_suffixes
            )
            return InstructionTripletDataset(triplets)
        raise ValueError(f"the focallens recipe reads colorshape or llava:FILE, not {data.kind!r}")

    def batch_sampler(
        self, dataset: Dataset, batch_size: int, seed: int, replicas: int, rank: int
    ) -> EpochBatchSampler | None:
        """Several instructions of one image share a batch, so the loss must separate them
        (ColorShape: all of an image's items, for every condition, form one group)."""
        if not isinstance(dataset, ColorShapeInstructions | InstructionTripletDataset):
            raise TypeError(f"the focallens recipe batches its own datasets, not {type(dataset).__name__}")
        per_image = len(dataset.slots) if isinstance(dataset, ColorShapeInstructions) else self.instructions_per_image
        return GroupedInstructionBatchSampler(
            dataset.image_ids, batch_size, per_image, seed=seed, num_replicas=replicas, rank=rank
        )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if self.phrasings is None:
            instructions = [item["instruction"] for item in items]
        else:  # the same batch is worded the same way in every run and worker
            rng = random.Random(zlib.crc32(repr([(item["image_id"], item["condition"]) for item in items]).encode()))
            instructions = self.phrasings([item["condition"] for item in items], rng)
        return {
            "pixels": self._pixels(items),
            "instructions": self.tokenizer(instructions),
            "answers": self.tokenizer([item["answer"] for item in items]),
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        output = model(batch["pixels"], batch["instructions"], batch["answers"])
        return self._loss({**output, "text_token_ids": batch["answers"]})

    def new_parameter_names(self) -> tuple[str, ...]:
        return ("condition_token.",)


class FSCCLIPRecipe(Recipe):
    name, family = "fsc-clip", "clip"
    num_negatives = 3

    def __init__(self, model_spec: ModelSpec, data: DataSpec, options: FSCCLIPOptions = FSC_CLIP_REFERENCE) -> None:
        super().__init__(model_spec, data)
        self._loss = FSCCLIPLoss(
            options.global_hn_weight, options.local_hn_weight, options.focal_gamma, options.label_smoothing
        )
        synthetic = data.kind in ("colorshape", "scenes", "colorshape+scenes")
        self.negatives = rule_based_generator(
            COLORSHAPE_WORD_GROUPS if synthetic else ENGLISH_WORD_GROUPS,
            COLORSHAPE_ANTONYMS if synthetic else ENGLISH_ANTONYMS,
            self.num_negatives,
            strict=options.strict_negative_slots,
        )

    def dataset(self) -> Dataset:
        return self._caption_dataset()

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """`negatives` holds the tokens of the valid negatives only, in row-major order of `negative_mask`."""
        captions = [item["caption"] for item in items]
        rng = random.Random(zlib.crc32("\n".join(captions).encode()))  # same batch, same negatives
        negatives, valid = zip(*(self.negatives(caption, rng) for caption in captions))
        kept = [text for texts, flags in zip(negatives, valid) for text, ok in zip(texts, flags) if ok]
        return {
            "pixels": self._pixels(items),
            "captions": self.tokenizer(captions),
            "negatives": self.tokenizer(kept),
            "negative_mask": torch.tensor(valid, dtype=torch.bool),
        }

    def loss(self, clip: BaseCLIP, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        valid = batch["negative_mask"]
        image, patches = encode_image_tokens(clip, batch["pixels"])
        text, words, word_mask = encode_text_tokens(clip, batch["captions"])
        negative, negative_words, negative_mask = (
            _into_slots(encoded, valid) for encoded in encode_text_tokens(clip, batch["negatives"])
        )
        return self._loss({
            "image_features": image,
            "text_features": text,
            "text_token_ids": batch["captions"],
            "logit_scale": clip.logit_scale.exp(),
            "hard_negative_features": negative,
            "hard_negative_mask": valid,
            "patch_tokens": patches,
            "text_tokens": words,
            "text_token_mask": word_mask,
            "hard_negative_tokens": negative_words,
            "hard_negative_token_mask": negative_mask,
        })


def _into_slots(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(V, ...) rows of the valid slots -> (B, N, ...), zeros in the slots without a negative.

    Missing negatives are never encoded; the losses give their slots logit 0 whatever they hold.
    """
    slots = rows.new_zeros(*valid.shape, *rows.shape[1:])
    slots[valid] = rows
    return slots


def create_recipe(
    name: str, model_spec: ModelSpec, data: DataSpec, seed: int = 0, fsc_clip: FSCCLIPOptions = FSC_CLIP_REFERENCE
) -> Recipe:
    """The recipe with its model built under `seed` (new parameters are initialised randomly);
    `fsc_clip` holds the fsc-clip recipe's knobs."""
    torch.manual_seed(seed)
    if name == FSCCLIPRecipe.name:
        return FSCCLIPRecipe(model_spec, data, fsc_clip)
    recipes = {recipe.name: recipe for recipe in (ClipRecipe, FocalLensRecipe)}
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; expected one of {RECIPES}")
    return recipes[name](model_spec, data)
