"""LLaVA visual-instruction data as (image, instruction, answer) triplets for FocalLens.

Each human turn (with the ``<image>`` token removed) and the gpt turn that follows it form one
triplet. Text-only records (LLaVA mixes carry conversations without an image) and malformed
records are skipped and counted rather than failing a long preprocessing run on one bad record;
a referenced image file that does not exist stops the read (or, if asked, its records are left out).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from focalserve_training.data.checks import keep_with_images, report_skipped
from focalserve_training.data.images import ImageLoader, load_rgb

IMAGE_TOKEN = "<image>"
_IMAGE_TOKEN_RE = re.compile(r"\s*" + re.escape(IMAGE_TOKEN) + r"\s*")
# LLaVA-1.5's response-format prompts: they ask for an answer's form, not about the image.
PROMPT_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)


@dataclass(frozen=True)
class InstructionTriplet:
    """``image_id`` is the image's relative path, so records sharing an image group."""

    image_path: Path
    instruction: str
    answer: str
    image_id: str


def read_llava_triplets(
    path: str | Path,
    image_root: str | Path,
    skip_missing_images: bool = False,
    strip_prompt_suffixes: bool = False,
) -> list[InstructionTriplet]:
    """Read a LLaVA JSON list of records into triplets, in file order.

    Raises MissingImagesError (before any training) if a referenced image file does not exist,
    unless `skip_missing_images`; logs one warning counting the skipped records by reason.
    """
    source = Path(path)
    with open(source, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    skipped: Counter[str] = Counter()
    per_record = _triplets_per_record(records, Path(image_root), strip_prompt_suffixes, skipped)
    per_record = keep_with_images(per_record, _image_path, source, skip_missing_images, skipped)
    report_skipped(source, skipped)
    return [triplet for triplets in per_record for triplet in triplets]


def strip_image_token(text: str) -> str:
    """Remove ``<image>`` and the whitespace around it, keeping one space between words."""
    return _IMAGE_TOKEN_RE.sub(" ", text).strip()


def strip_prompt_suffix(text: str) -> str:
    """The instruction without a trailing LLaVA response-format prompt (see PROMPT_SUFFIXES)."""
    for suffix in PROMPT_SUFFIXES:
        if text.endswith(suffix):
            return text.removesuffix(suffix).rstrip()
    return text


def _triplets_per_record(
    records: list, root: Path, strip_suffixes: bool, skipped: Counter[str]
) -> list[list[InstructionTriplet]]:
    """The triplets of each usable record; the others are counted in `skipped` by reason."""
    per_record = []
    for record in records:
        reason = _skip_reason(record)
        triplets = [] if reason else _record_triplets(record, root, strip_suffixes)
        if triplets:
            per_record.append(triplets)
        else:  # no human turn answered by a gpt turn counts as malformed too
            skipped[reason or "malformed"] += 1
    return per_record


def _image_path(triplets: list[InstructionTriplet]) -> Path:
    return triplets[0].image_path  # one record, one image


def _skip_reason(record: object) -> str | None:
    """"text-only" or "malformed" for a record that yields no triplet whatever its turns; else None."""
    if not isinstance(record, dict):
        return "malformed"
    image = record.get("image")
    if image is None:
        return "text-only"
    if not isinstance(image, str) or not image or not isinstance(record.get("conversations"), list):
        return "malformed"
    return None


def _record_triplets(record: dict, root: Path, strip_suffixes: bool) -> list[InstructionTriplet]:
    turns = [_turn(t) for t in record["conversations"]]
    triplets = []
    for (speaker, question), (next_speaker, reply) in zip(turns, turns[1:], strict=False):
        instruction, answer = strip_image_token(question), reply.strip()
        if strip_suffixes:
            instruction = strip_prompt_suffix(instruction)
        if speaker == "human" and next_speaker == "gpt" and instruction and answer:
            triplets.append(InstructionTriplet(root / record["image"], instruction, answer, record["image"]))
    return triplets


def _turn(turn: object) -> tuple[str | None, str]:
    """(speaker, text); a malformed turn gets speaker None and so pairs with nothing."""
    if not isinstance(turn, dict):
        return None, ""
    speaker, value = turn.get("from"), turn.get("value")
    if not isinstance(speaker, str) or not isinstance(value, str):
        return None, ""
    return speaker, value


class InstructionTripletDataset(Dataset):
    """Triplets as the dicts the FocalLens collate expects; ``image_ids`` feeds the sampler."""

    def __init__(self, triplets: list[InstructionTriplet], loader: ImageLoader = load_rgb) -> None:
        self.triplets = triplets
        self.loader = loader
        self.image_ids = [t.image_id for t in triplets]

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict:
        triplet = self.triplets[index]
        return {
            "image": self.loader(triplet.image_path),
            "instruction": triplet.instruction,
            "answer": triplet.answer,
            "image_id": triplet.image_id,
        }
