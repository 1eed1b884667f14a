"""Evaluation on held-out synthetic ColorShape data: conditional retrieval mAP, compositionality
and zero-shot accuracy, written as JSON and PNG plots.

Held-out means a different generator seed and, for instructions, phrasings never seen in
training (`HELD_OUT_PHRASINGS`). A conditional model is scored under each phrasing on its own,
for both attributes: under a colour instruction, colour neighbours should rank first and
shape neighbours should not.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Required, TypedDict

import numpy as np
import open_clip
import torch

from focalserve_training.data import (
    COLOR_NAMES,
    COLORSHAPE_ANTONYMS,
    COLORSHAPE_WORD_GROUPS,
    HELD_OUT_PHRASINGS,
    SHAPES,
    ColorShapeGenerator,
    SceneObject,
    rule_based_generator,
    sample_training_phrasings,
)
from focalserve_training.data.colorshape import answer, caption
from focalserve_training.models import FamilyModel, FocalLensCLIP
from focalserve_training.models.factory import create_text_tokenizer
from focalserve_training.models.focallens import BaseCLIP

EVAL_SEED = 10_000  # far from every training seed
SHORT_KIND = {"unconditional": "unconditional", "conditional": "conditional",
              "conditional_heldout_phrasing": "conditional,\nnew phrasings"}
Accuracy = Literal["compositionality_accuracy", "zero_shot_accuracy"]
ACCURACIES: tuple[Accuracy, ...] = ("compositionality_accuracy", "zero_shot_accuracy")
ATTRIBUTES = ("colour", "shape")
TRAINED_PHRASINGS_EVALUATED = 6  # per condition, a fixed sample of the thousands trained on
# What the demo promises under every held-out phrasing: the asked attribute's mAP, and its lead
# over the other attribute's mAP under the same instruction.
TARGET_MAP, TARGET_LEAD = 0.85, 0.15

# phrasing kind ("trained", "held_out") -> condition -> phrasing -> attribute -> mAP
PhrasingMAP = dict[str, dict[str, dict[str, dict[str, float]]]]


class Evaluation(TypedDict, total=False):
    """`evaluate`'s results; the accuracies are measured for unconditional families only, the
    per-phrasing scores for conditional ones."""

    retrieval_map: Required[dict[str, dict[str, float]]]  # condition -> embedding kind -> mAP
    phrasing_map: PhrasingMAP
    compositionality_accuracy: float
    zero_shot_accuracy: float


@dataclass
class Encoder:
    """Batched, no-grad access to a family model with its own transform and tokenizer."""

    model: FamilyModel
    model_name: str
    batch_size: int = 256

    def __post_init__(self) -> None:
        self.model.eval()
        clip = self.clip
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        self.transform = open_clip.image_transform(
            preprocess["size"], is_train=False, mean=preprocess["mean"], std=preprocess["std"],
            interpolation=preprocess.get("interpolation"), resize_mode=preprocess.get("resize_mode"),
        )
        self.tokenizer = create_text_tokenizer(self.model_name)

    @property
    def clip(self) -> BaseCLIP:
        return self.model.clip if isinstance(self.model, FocalLensCLIP) else self.model

    @torch.no_grad()
    def images(self, images: list, instruction: str | None = None) -> torch.Tensor:
        outputs = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(image) for image in images[start:start + self.batch_size]])
            if instruction is None:
                outputs.append(self.clip.encode_image(pixels, normalize=True))
            else:
                condition = self.model.encode_instruction(self.tokenizer([instruction]))
                outputs.append(self.model.encode_image(pixels, condition.expand(len(pixels), -1)))
        return torch.cat(outputs)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        return torch.cat([self.clip.encode_text(self.tokenizer(texts[start:start + self.batch_size]), normalize=True)
                          for start in range(0, len(texts), self.batch_size)])


def mean_average_precision(embeddings: torch.Tensor, labels: list[str]) -> float:
    """Each item queries all others; a hit shares its label."""
    similarity = (embeddings @ embeddings.T).numpy()
    label_array = np.array(labels)
    precisions = []
    for query in range(len(labels)):
        order = np.argsort(-similarity[query], kind="stable")
        order = order[order != query]
        relevant = label_array[order] == label_array[query]
        if relevant.any():
            hits = np.cumsum(relevant)
            precisions.append(float((hits[relevant] / (np.flatnonzero(relevant) + 1)).mean()))
    return float(np.mean(precisions))


def evaluation_phrasings() -> dict[str, dict[str, tuple[str, ...]]]:
    """phrasing kind -> condition -> the phrasings a conditional model is scored under."""
    return {"trained": sample_training_phrasings(TRAINED_PHRASINGS_EVALUATED), "held_out": HELD_OUT_PHRASINGS}


def phrasing_retrieval(encoder: Encoder, n_images: int) -> PhrasingMAP:
    """mAP of both attributes under each evaluation phrasing, on held-out images."""
    generator = ColorShapeGenerator(seed=EVAL_SEED)
    samples = [generator.sample(index) for index in range(n_images)]
    images = [sample.image for sample in samples]
    labels = {attribute: [answer(sample, attribute) for sample in samples] for attribute in ATTRIBUTES}
    results: PhrasingMAP = {}
    for kind, phrasings in evaluation_phrasings().items():
        for condition, texts in phrasings.items():
            for text in texts:
                embeddings = encoder.images(images, text)
                results.setdefault(kind, {}).setdefault(condition, {})[text] = {
                    attribute: mean_average_precision(embeddings, labels[attribute]) for attribute in ATTRIBUTES
                }
    return results


def meets_target(condition: str, scores: dict[str, float]) -> bool:
    """The demo's promise for one phrasing of `condition` (see TARGET_MAP, TARGET_LEAD)."""
    other = next(attribute for attribute in ATTRIBUTES if attribute != condition)
    return scores[condition] >= TARGET_MAP and scores[condition] - scores[other] >= TARGET_LEAD


def conditional_retrieval(
    encoder: Encoder, baseline: Encoder | None, n_images: int, phrasings: PhrasingMAP | None = None
) -> dict[str, dict[str, float]]:
    """Per condition: mAP of the unconditional embedding and, from `phrasings` (the per-phrasing
    scores of a conditional model), the conditional one averaged over trained and over held-out
    phrasings."""
    generator = ColorShapeGenerator(seed=EVAL_SEED)
    samples = [generator.sample(index) for index in range(n_images)]
    unconditional = (baseline or encoder).images([sample.image for sample in samples])
    results = {}
    for condition in ATTRIBUTES:
        row = {"unconditional": mean_average_precision(unconditional, [answer(s, condition) for s in samples])}
        for key, kind in (("conditional", "trained"), ("conditional_heldout_phrasing", "held_out")):
            if phrasings is not None:
                row[key] = float(np.mean([scores[condition] for scores in phrasings[kind][condition].values()]))
        results[condition] = row
    return results


def compositionality_accuracy(encoder: Encoder, n_scenes: int) -> float:
    """Share of two-object scenes whose true caption beats all of its valid hard negatives."""
    generator = ColorShapeGenerator(seed=EVAL_SEED)
    negatives = rule_based_generator(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS, 3)
    rng = random.Random(EVAL_SEED)
    scenes = [generator.sample_scene(index) for index in range(n_scenes)]
    image_features = encoder.images([scene.image for scene in scenes])
    correct = 0
    for scene, image in zip(scenes, image_features):
        true_caption = caption(scene)
        texts, valid = negatives(true_caption, rng)
        candidates = [true_caption] + [text for text, ok in zip(texts, valid) if ok]
        scores = encoder.texts(candidates) @ image
        correct += int(scores.argmax().item() == 0)
    return correct / n_scenes


def zero_shot_accuracy(encoder: Encoder, n_images: int) -> float:
    """30-way classification of single objects by the text embedding of 'a {colour} {shape}'."""
    generator = ColorShapeGenerator(seed=EVAL_SEED + 1)
    samples = [generator.sample(index) for index in range(n_images)]
    classes = [(colour, shape) for colour in COLOR_NAMES for shape in SHAPES]
    class_features = encoder.texts([caption(SceneObject(colour, shape, (0, 0, 0, 0))) for colour, shape in classes])
    predictions = (encoder.images([s.image for s in samples]) @ class_features.T).argmax(dim=1)
    truth = torch.tensor([classes.index((s.colour, s.shape)) for s in samples])
    return float((predictions == truth).float().mean())


def evaluate(
    encoder: Encoder, baseline: Encoder | None = None, n_images: int = 600, n_scenes: int = 300
) -> Evaluation:
    """All metrics that apply to the model's family (`baseline` gives the unconditional rows)."""
    if isinstance(encoder.model, FocalLensCLIP):
        phrasings = phrasing_retrieval(encoder, n_images)
        return {
            "retrieval_map": conditional_retrieval(encoder, baseline, n_images, phrasings),
            "phrasing_map": phrasings,
        }
    return {
        "retrieval_map": conditional_retrieval(encoder, baseline, n_images),
        "compositionality_accuracy": compositionality_accuracy(encoder, n_scenes),
        "zero_shot_accuracy": zero_shot_accuracy(encoder, n_images),
    }


def write_report(results: dict[str, Evaluation], output_dir: Path) -> tuple[Path, Path]:
    """results: model label -> `evaluate` output. Writes results.json and results.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, plot_path = output_dir / "results.json", output_dir / "results.png"
    json_path.write_text(json.dumps(results, indent=2))
    figure, (retrieval, accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    bars = [(f"{label.split(' (')[0]}\n{SHORT_KIND[kind]}", condition, value) for label, metrics in results.items()
            for condition, row in metrics["retrieval_map"].items() for kind, value in row.items()]
    labels = sorted({bar[0] for bar in bars}, key=[bar[0] for bar in bars].index)
    for offset, condition in enumerate(ATTRIBUTES):
        values = [next((v for b, c, v in bars if b == label and c == condition), 0.0) for label in labels]
        retrieval.bar(np.arange(len(labels)) + 0.4 * offset, values, width=0.4, label=condition)
    retrieval.set_xticks(np.arange(len(labels)) + 0.2, labels, fontsize=7, rotation=30, ha="right")
    retrieval.set_ylabel("retrieval mAP"), retrieval.set_ylim(0, 1), retrieval.legend()
    retrieval.set_title("ColorShape retrieval per condition")
    scored = {label: m for label, m in results.items() if "zero_shot_accuracy" in m}
    for offset, metric in enumerate(ACCURACIES):
        accuracy.bar(np.arange(len(scored)) + 0.4 * offset, [m[metric] for m in scored.values()], width=0.4,
                     label=metric.replace("_", " "))
    accuracy.set_xticks(np.arange(len(scored)) + 0.2, list(scored), fontsize=8)
    accuracy.set_ylim(0, 1), accuracy.legend(), accuracy.set_title("Compositionality and zero-shot")
    figure.tight_layout()
    figure.savefig(plot_path, dpi=120)
    plt.close(figure)
    return json_path, plot_path
