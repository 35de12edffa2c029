"""The figure style shared by all notebooks, and the one way figures are saved."""
from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

from .io import FIGURES_DIR, SMOKE_FIGURES_DIR

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 10,
    "legend.frameon": False,
}


def use_style() -> None:
    """Apply the repository's matplotlib style."""
    mpl.rcParams.update(STYLE)


def figure_dir(fig_dir: str | Path | None) -> Path:
    """Where figures go: `fig_dir` when given (papermill runs pass the repo's figures/), else
    figures/smoke/ (git-ignored), so smoke runs never overwrite the reproduction's figures."""
    d = Path(fig_dir) if fig_dir is not None else SMOKE_FIGURES_DIR
    if not d.is_absolute():
        d = FIGURES_DIR.parent / d
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str, fig_dir: str | Path | None = None, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Save `fig` as figure_dir(fig_dir)/name.<fmt> for each format; returns the paths written."""
    if not name or "/" in name:
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    out = []
    for fmt in formats:
        p = figure_dir(fig_dir) / f"{name}.{fmt}"
        fig.savefig(p, format=fmt, metadata={"Software": None} if fmt == "png" else None)
        out.append(p)
    return out
