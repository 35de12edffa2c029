"""Regenerating the repository's figures from the notebooks' runs (no model is run).

Every notebook draws its figures through `acdc_lib.plotting.plot_and_save`, which records in the run
folder a recipe per figure: the plotting function's import name and the data it was called with
(<run folder>/figures/<name>.json and .npz). `regenerate` replays every recipe of a parameter set's runs,
saves the figure again and says whether its bytes equal the file the notebook saved: equal bytes show
that the run holds everything the figure shows. A figure of figures/ that no run has a recipe for is
listed by `without_recipe`, never skipped in silence.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from acdc_lib.experiment.claims import Source
from acdc_lib.plotting import RECIPES, figure_dir, replay, save_figure


@dataclass
class Regenerated:
    """One figure: its name, the run it came from, and whether the rebuilt PNG has the bytes of the one
    that was there (None when there was none); `error` says why a recipe could not be replayed."""

    name: str
    run: str
    identical: bool | None
    error: str = ""


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def recipes(sources: Sequence[Source]) -> dict[str, tuple[Source, Path]]:
    """Figure name -> (the run, its recipe file), over the runs with results, first run first."""
    out: dict[str, tuple[Source, Path]] = {}
    for s in sources:
        if s.results is None or s.folder is None or not (s.folder / RECIPES).is_dir():
            continue
        for p in sorted((s.folder / RECIPES).glob("*.json")):
            out.setdefault(p.stem, (s, p))
    return out


def regenerate(sources: Sequence[Source], fig_dir: str | Path | None,
               compare_dir: str | Path | None = None) -> list[Regenerated]:
    """Replay every recipe of `sources`' runs and save each figure into `fig_dir`.

    Args:
        sources: `acdc_lib.experiment.claims.find_sources`' runs.
        fig_dir: where to save (as `save_figure`: None is figures/smoke/).
        compare_dir: the figures to compare with (default: fig_dir itself, read before saving).
    Returns:
        one Regenerated per figure, in name order; a recipe that fails to replay is reported, not raised.
    """
    import matplotlib.pyplot as plt

    out_dir = figure_dir(fig_dir)
    cmp_dir = Path(compare_dir) if compare_dir is not None else out_dir
    out = []
    for name, (src, recipe) in sorted(recipes(sources).items()):
        before = _digest(cmp_dir / f"{name}.png")
        try:
            fig = replay(recipe)
        except Exception as e:  # noqa: BLE001 -- one bad recipe must not hide the other figures
            out.append(Regenerated(name, src.folder.name, None, f"{type(e).__name__}: {e}"))
            continue
        save_figure(fig, name, fig_dir)
        plt.close(fig)
        after = _digest(out_dir / f"{name}.png")
        out.append(Regenerated(name, src.folder.name, None if before is None else before == after))
    return out


def without_recipe(figures_dir: str | Path, sources: Sequence[Source], own_prefix: str = "08_") -> list[str]:
    """PNG figures in `figures_dir` that no run of `sources` has a recipe for (the report's own, `own_prefix`,
    excepted)."""
    have = recipes(sources)
    return sorted(p.stem for p in Path(figures_dir).glob("*.png") if p.stem not in have and not p.stem.startswith(own_prefix))


def plot_benchmark_ratios(checks: Sequence[dict]):
    """measured / target of every benchmark check, one bar each (green: passes, red: fails). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(checks) + 1.2))
    y = range(len(checks))
    ax.barh(list(y), [c["ratio"] for c in checks], color=["tab:green" if c["pass"] else "tab:red" for c in checks])
    ax.set_yticks(list(y), [f"{c['benchmark']}: {c['label']} ({'>=' if c['higher_is_better'] else '<='} 1)"
                            for c in checks], fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")  # ratios span 0.5x to 25x; on a log axis 2x over and 2x under look alike
    ax.invert_yaxis()
    ax.set_xlabel("measured / target (log scale)")
    return fig
