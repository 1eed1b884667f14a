"""What the app holds while it runs: settings, backend, engine, metrics, image decoding, collections."""

from __future__ import annotations

from dataclasses import dataclass

from server.backends.base import ModelBackend
from server.config import Settings
from server.engine import Engine
from server.images import ImageDecoder
from server.metrics import Metrics
from server.search.service import CollectionService


@dataclass
class Gateway:
    settings: Settings
    metrics: Metrics
    backend: ModelBackend
    engine: Engine
    images: ImageDecoder
    collections: CollectionService

    def __post_init__(self) -> None:
        self.api_keys = self.settings.api_key_list()  # parsed once, not per request
