"""The benchmarks' figures: the serving benchmark's throughput and latency CDFs, and how every part saves one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server, and no GUI toolkit needed

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.axis import Axis  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from benchmarks.measure import Measurement  # noqa: E402


def plot_throughput(measurements: Sequence[Measurement], raw_images_per_s: dict[str, float], path: Path) -> Path:
    """Images/s against concurrency, one panel per model, one line per system; raw forward as the ceiling."""
    defaults = [m for m in measurements if m.variant is None]
    models = sorted({m.model for m in defaults})
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models):
        for system in _systems(defaults, model):
            points = sorted((m.result.concurrency, m.result.summary()["images_per_s"])
                            for m in defaults if m.model == model and m.system == system)
            axis.plot(*zip(*points), marker="o", label=system)
        if model in raw_images_per_s:
            axis.axhline(raw_images_per_s[model], color="black", linestyle="--", label="raw forward (best batch)")
        axis.set(title=model, xlabel="concurrency (closed loop)", ylabel="images / s", yscale="log")
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({m.result.concurrency for m in defaults}))
        _plain_numbers(axis.xaxis)
        _plain_numbers(axis.yaxis, LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    return save_figure(figure, path)


def plot_latency_cdf(measurements: Sequence[Measurement], concurrency: int, path: Path) -> Path:
    """Latency CDF per system at one concurrency, one panel per model."""
    chosen = [m for m in measurements if m.variant is None and m.result.concurrency == concurrency]
    models = sorted({m.model for m in chosen})
    figure, axes = plt.subplots(1, max(1, len(models)), figsize=(6 * max(1, len(models)), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models):
        for m in (m for m in chosen if m.model == model and m.result.latencies_s):
            latencies_ms = np.sort(np.asarray(m.result.latencies_s)) * 1000.0
            axis.plot(latencies_ms, np.arange(1, len(latencies_ms) + 1) / len(latencies_ms), label=m.system)
        axis.set(title=f"{model}, concurrency {concurrency}", xlabel="latency (ms)", ylabel="fraction of requests",
                 xscale="log", ylim=(0, 1))
        _plain_numbers(axis.xaxis, LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    return save_figure(figure, path)


def _plain_numbers(axis: Axis, locator: LogLocator | None = None) -> None:
    """Log-scale ticks as plain numbers (1, 2, 5, 10, ...) instead of crowded 3x10^1 minor labels."""
    if locator is not None:
        axis.set_major_locator(locator)
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def _systems(measurements: Sequence[Measurement], model: str) -> list[str]:
    return list(dict.fromkeys(m.system for m in measurements if m.model == model))  # in the order they ran


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Laid out, written, and closed: a long run draws many figures and keeps none open."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
