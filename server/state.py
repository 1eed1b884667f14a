"""What the app holds while it runs: settings, backend, engine, metrics and the decode pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from server.backends.base import ModelBackend
from server.config import Settings
from server.engine import Engine
from server.metrics import Metrics


@dataclass
class Gateway:
    settings: Settings
    metrics: Metrics
    backend: ModelBackend
    engine: Engine
    decode_pool: ThreadPoolExecutor
