"""The model infinity-emb serves as the benchmark's peer has the family's image geometry and preprocessing.

It is built by `benchmarks/infinity_model.py` in infinity-emb's own environment; these tests run the
same builder with the project's transformers, which reads and writes the same formats.
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.tokenizer import default_bpe
from PIL import Image
from transformers import AutoProcessor, CLIPModel

from benchmarks.infinity_model import build, clip_config
from focalserve_training.models import register_model_configs
from tests.helpers.models import MINILM


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    register_model_configs()
    return {name: open_clip.get_model_config(name) for name in (MINILM, "ViT-B-32")}


@pytest.mark.parametrize("name", [MINILM, "ViT-B-32"])
def test_the_peer_image_tower_has_as_many_weights_as_open_clips(configs, name):
    config = configs[name]
    peer = CLIPModel(clip_config(config["vision_cfg"], config["embed_dim"]))
    ours = open_clip.create_model(name, pretrained=None)
    peer_count = sum(p.numel() for p in [*peer.vision_model.parameters(), *peer.visual_projection.parameters()])
    assert peer_count == sum(p.numel() for p in ours.visual.parameters())
    assert peer.config.projection_dim == config["embed_dim"]


@pytest.fixture(scope="module")
def peer_dir(configs, tmp_path_factory):
    directory = tmp_path_factory.mktemp("peer")
    config = configs[MINILM]
    build(config["vision_cfg"], config["embed_dim"], default_bpe(), directory, seed=0)
    return directory


def test_the_peer_tokenizer_reads_text_as_open_clip_does(peer_dir):
    tokenizer = AutoProcessor.from_pretrained(peer_dir).tokenizer
    for text in ["what colour is the shape?", "Which SHAPE is this", "a red-ish circle, 12 px"]:
        ids = open_clip.tokenize([text])[0]
        assert tokenizer(text)["input_ids"] == ids[ids != 0].tolist()


def test_the_peer_preprocessing_matches_open_clips_eval_transform(peer_dir, configs):
    size = configs[MINILM]["vision_cfg"]["image_size"]
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (180, 256, 3), dtype=np.uint8)).resize((512, 360))
    peer = AutoProcessor.from_pretrained(peer_dir).image_processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = open_clip.image_transform(size, is_train=False)(image)
    assert peer.shape == ours.shape
    assert torch.nn.functional.cosine_similarity(peer.flatten(), ours.flatten(), dim=0) >= 0.999
