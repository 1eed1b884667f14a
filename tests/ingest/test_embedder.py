"""The actors' embedding, run directly (no Ray): a readout family's one trunk pass for several
conditions answers what `POST /embed` answers for the same image and instructions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from focalserve_ingest.embedder import Embedder
from focalserve_server.images import ImagePreprocessor, decode_image
from tests.helpers.images import b64, cosine, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.ingest.conftest import COLOUR, SHAPE, colour_of

NO_TALLY = SimpleNamespace(ready=SimpleNamespace(remote=lambda at: None))  # the actor's report, not needed here


def test_a_readout_family_embeds_every_condition_as_the_gateway_does(readout_repository, tmp_path):
    embedder = Embedder(str(readout_repository), "tinyreadout", [COLOUR, SHAPE], "cpu", "float32", 1, NO_TALLY)
    assert embedder.spec.conditioning == "readout"
    images = [shape_png(colour_of(n)) for n in range(3)]
    preprocess = ImagePreprocessor(embedder.spec)
    pixels = np.stack([preprocess(decode_image(data, 1 << 20, 1 << 20, preprocess.decode_size)) for data in images])
    vectors = embedder.embed(pixels)
    assert vectors.shape == (3, 2, embedder.spec.embedding_dim)
    with InProcessGateway(gateway_settings(readout_repository, tmp_path / "data")) as gateway:
        for image, ingested in zip(images, vectors):
            response = gateway.post("/embed", json={"model": "tinyreadout", "inputs": [
                {"image": b64(image), "instructions": [COLOUR, SHAPE]}]})
            assert response.status_code == 200, response.text
            for served, mine in zip(response.json()["data"], ingested):
                assert cosine(np.array(served["embedding"], np.float32), mine) >= 0.9999
