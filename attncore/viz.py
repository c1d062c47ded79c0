"""Attention heatmaps (the seeds' d2l `show_heatmaps`), written to PNG with
matplotlib -- an optional extra: pip install 'attncore[viz]'."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _validate as V


def _figure_class():
    """matplotlib's Figure, used through its object API: attncore never
    touches pyplot's global state or the user's backend."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("attncore.viz needs matplotlib, which is not installed; "
                          "install the extra: pip install 'attncore[viz]'") from None
    return Figure


def show_heatmaps(weights: Any, xlabel: str = "Keys", ylabel: str = "Queries",
                  titles: Optional[Sequence[str]] = None, path: Any = None, cmap: str = "Reds",
                  figsize: Tuple[float, float] = (2.5, 2.5),
                  xticklabels: Optional[Sequence[str]] = None,
                  yticklabels: Optional[Sequence[str]] = None) -> Any:
    """Draw attention weights as a grid of heatmaps and save them as a PNG.

    Parameters
    ----------
    weights : array (rows, cols, Lq, Lk), (n, Lq, Lk) or (Lq, Lk)
        Attention weights, e.g. ``scaled_dot_product_attention(...,
        return_weights=True)[1]`` (batch x heads gives the grid). A 3-D array
        is one row of n maps.
    xlabel, ylabel : str
        Axis labels (bottom row / left column only).
    titles : list of str, optional
        One title per column.
    path : str or os.PathLike, optional
        Where to write the PNG; without it the figure is returned unsaved.
    cmap : str
        matplotlib colour map.
    figsize : (float, float)
        Size of one map in inches.
    xticklabels, yticklabels : list of str, optional
        Token labels for the keys / queries.

    Returns
    -------
    The matplotlib Figure (a ``matplotlib.figure.Figure`` made through the
    object API: pyplot's figure list and the active backend are untouched;
    show it in a notebook by returning it, or with ``fig.savefig``).

    Example
    -------
    >>> import numpy as np, attncore, attncore.viz
    >>> w = attncore.scaled_dot_product_attention(*(np.eye(4)[None],) * 3, return_weights=True)[1]
    >>> fig = attncore.viz.show_heatmaps(w, path="attention.png")  # doctest: +SKIP
    """
    raw = V.as_array(weights, "weights", "show_heatmaps")
    if not (raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.integer)
            or np.issubdtype(raw.dtype, np.floating) or raw.dtype.name == "bfloat16"):
        raise TypeError(f"show_heatmaps: weights must be real numbers (a float, int or bool "
                        f"array); got dtype {raw.dtype}")
    w = raw.astype(np.float64)
    if w.size == 0:
        raise ValueError(f"show_heatmaps: weights of shape {w.shape} hold no weight to draw")
    if w.ndim == 2:
        w = w[None, None]
    elif w.ndim == 3:
        w = w[None]
    elif w.ndim != 4:
        raise ValueError(f"show_heatmaps: weights must have 2, 3 or 4 dimensions "
                         f"((rows, cols,) Lq, Lk); got shape {w.shape}")
    rows, cols = w.shape[:2]
    if titles is not None and len(titles) != cols:
        raise ValueError(f"show_heatmaps: {len(titles)} titles for {cols} columns")
    fig = _figure_class()(figsize=(figsize[0] * cols, figsize[1] * rows))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    image = None
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            image = ax.imshow(w[i, j], cmap=cmap, vmin=0.0, vmax=max(float(w.max()), 1e-12))
            if i == rows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if titles is not None and i == 0:
                ax.set_title(titles[j])
            if xticklabels is not None:
                ax.set_xticks(range(len(xticklabels)), labels=xticklabels, rotation=90)
            if yticklabels is not None:
                ax.set_yticks(range(len(yticklabels)), labels=yticklabels)
    fig.colorbar(image, ax=axes, shrink=0.6)
    if path is not None:
        fig.savefig(path, dpi=100, bbox_inches="tight")   # Agg canvas: no display needed
    return fig
