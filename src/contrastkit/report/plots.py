"""PNG plots of a run, drawn with matplotlib's object-oriented API on the Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``, so no global backend
is switched and no window can open: the report can be written from a training process, a
notebook or a headless server alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 120


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean: out[i] = mean(values[max(0, i - window + 1) : i + 1])."""
    cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot_loss_curve(
    steps: np.ndarray, losses: np.ndarray, path: Path, name: str = "train/loss"
) -> Path:
    """Raw loss per step (faint) and its trailing moving average over ~1/25 of the steps."""
    window = max(1, len(losses) // 25)
    figure, axes = _figure()
    axes.plot(
        steps,
        losses,
        color="tab:blue",
        alpha=0.35 if window > 1 else 1.0,
        linewidth=0.8,
        label="raw",
    )
    if window > 1:  # fewer than 50 logged steps: the raw curve is already readable
        axes.plot(
            steps,
            moving_average(losses, window),
            color="tab:blue",
            linewidth=1.8,
            label=f"mean of the last {window} logged values",
        )
    axes.set_xlabel("step")
    axes.set_ylabel(name)
    axes.set_title("Training loss")
    axes.legend()
    return _save(figure, path)


def plot_epoch_series(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    as_percent: bool = False,
) -> Path:
    """One line per metric against the epoch, on shared axes (e.g. the online probe accuracies)."""
    figure, axes = _figure()
    for name, (epochs, values) in series.items():
        axes.plot(
            epochs, 100.0 * values if as_percent else values, marker="o", markersize=3, label=name
        )
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("accuracy (%)" if as_percent else "value")
    axes.set_title(title)
    axes.legend()
    return _save(figure, path)


def plot_epoch_panels(
    series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str
) -> Path:
    """One small panel per metric against the epoch (for measures on different scales)."""
    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    figure = Figure(figsize=(4.0 * columns, 3.0 * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    for index, (name, (epochs, values)) in enumerate(series.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.plot(epochs, values, marker="o", markersize=3)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    return _save(figure, path)


def plot_embedding_map(
    points: np.ndarray, labels: np.ndarray | None, path: Path, title: str
) -> Path:
    """Scatter of 2-D points, coloured by class when labels are given (tab10/tab20 colours)."""
    figure, axes = _figure(size=(6.0, 5.5))
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, color="tab:blue")
    else:
        classes = np.unique(labels)
        palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, cls in enumerate(classes):
            at = labels == cls
            axes.scatter(
                points[at, 0],
                points[at, 1],
                s=4,
                alpha=0.7,
                color=palette(i % palette.N),
                label=str(cls),
            )
        if len(classes) <= 20:
            axes.legend(markerscale=3, fontsize=7, title="label", loc="best")
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    return _save(figure, path)


def plot_singular_values(
    sigma: np.ndarray, path: Path, effective_rank: float | None = None
) -> Path:
    """sigma_k / sigma_1 against k on a log scale (the spectrum that RankMe summarises)."""
    figure, axes = _figure()
    normalised = sigma / sigma[0] if sigma.size and sigma[0] > 0 else sigma
    axes.semilogy(np.arange(1, len(sigma) + 1), np.maximum(normalised, 1e-12), linewidth=1.5)
    axes.set_xlabel("k")
    axes.set_ylabel("sigma_k / sigma_1")
    title = "Singular value spectrum of the embeddings"
    if effective_rank is not None:
        title += f" (effective rank {effective_rank:.1f} of {len(sigma)})"
    axes.set_title(title, fontsize=10)
    return _save(figure, path)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection of the centred rows onto their two leading principal directions."""
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ directions[:2].T
    if projection.shape[1] < 2:  # one-dimensional embeddings: plot against zero
        projection = np.hstack([projection, np.zeros((len(projection), 1))])
    return projection


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """scikit-learn t-SNE (PCA initialisation, perplexity 30 or less for few points)."""
    from sklearn.manifold import (
        TSNE,  # imported here: slow to import, used only on request
    )

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        x
    )


def _figure(size: tuple[float, float] = (6.5, 4.0)):
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
