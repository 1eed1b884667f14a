"""Build the model infinity-emb serves in the benchmark: a transformers CLIP with the family's image geometry.

It runs in infinity-emb's own virtual environment (`make bench` makes `.venv-infinity`), so it
imports nothing of the project: the family's open_clip vision config comes in as JSON, and the
CLIP BPE vocabulary as the path of the file open_clip ships. Nothing is downloaded: the weights
are random (seeded), the image processor is open_clip's eval transform written as transformers'
CLIPImageProcessor (shortest side to the input size, bicubic, centre crop, CLIP mean and std), and
the tokenizer's vocab.json and merges.txt are derived from the same BPE merges open_clip reads.

    .venv-infinity/bin/python benchmarks/infinity_model.py --vision-config JSON --embed-dim N --bpe PATH --out DIR
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / _STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BPE_MERGES = 49152 - 256 - 2  # the merges CLIP's tokenizer uses, as open_clip reads them
CONTEXT_LENGTH = 77
# The image benchmark never calls the text tower; one narrow layer keeps the saved model small.
TEXT_TOWER = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 2}


def clip_config(vision: dict, embed_dim: int) -> CLIPConfig:
    """open_clip's VisionTransformer defaults (head width 64, MLP ratio 4, exact GELU) in transformers' names."""
    width = vision["width"]
    vision_config = {
        "hidden_size": width,
        "intermediate_size": int(width * vision.get("mlp_ratio", 4.0)),
        "num_hidden_layers": vision["layers"],
        "num_attention_heads": width // vision.get("head_width", 64),
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
        "hidden_act": "gelu",
    }
    text_config = {**TEXT_TOWER, "vocab_size": 256 * 2 + BPE_MERGES + 2, "max_position_embeddings": CONTEXT_LENGTH}
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim)


def write_tokenizer_files(bpe: Path, directory: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt for CLIPTokenizer, in the order open_clip's SimpleTokenizer builds its vocabulary."""
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:BPE_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(pair) for pair in merges),
              "<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = directory / "source-vocab.json", directory / "source-merges.txt"
    vocab_file.write_text(json.dumps({token: number for number, token in enumerate(tokens)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    return vocab_file, merges_file


def build(vision: dict, embed_dim: int, bpe: Path, out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    CLIPModel(clip_config(vision, embed_dim)).save_pretrained(out)
    size = vision["image_size"]
    images = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,  # 3: bicubic
        crop_size={"height": size, "width": size},
        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    vocab_file, merges_file = write_tokenizer_files(bpe, out)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=CONTEXT_LENGTH)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    vocab_file.unlink()
    merges_file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-config", required=True, help="the family's open_clip vision_cfg, as JSON")
    parser.add_argument("--embed-dim", type=int, required=True)
    parser.add_argument("--bpe", type=Path, required=True, help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(json.loads(args.vision_config), args.embed_dim, args.bpe, args.out, args.seed)


if __name__ == "__main__":
    main()
