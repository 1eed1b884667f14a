"""What the app holds while it runs: settings, backend, engine, metrics, access control and, where they live,
collections."""

from __future__ import annotations

from dataclasses import dataclass

from focalserve_server.access.control import AccessControl
from focalserve_server.backends.base import ModelBackend
from focalserve_server.collections.service import CollectionService
from focalserve_server.config import Settings
from focalserve_server.engine import Engine
from focalserve_server.media.fetch import MediaFetcher
from focalserve_server.metrics import Metrics


@dataclass
class EmbedGateway:
    """What the embed routes need: a front process holds only this."""

    settings: Settings
    metrics: Metrics
    backend: ModelBackend
    engine: Engine
    access: AccessControl
    media: MediaFetcher  # images clients send by URL


@dataclass
class Gateway(EmbedGateway):
    """The whole gateway: one process, or the engine process behind the fronts."""

    collections: CollectionService
