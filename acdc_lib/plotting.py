"""The figure style shared by all notebooks, the one way figures are saved, and their recipes.

`plot_and_save` draws and saves a figure and, in a run folder, records how it was drawn (the plotting
function and its data), so that `replay` can draw it again from the run alone (notebook 08 does, for
every figure). Small plots several notebooks share live here too.
"""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib as mpl
import numpy as np

from .io import FIGURES_DIR, SMOKE_FIGURES_DIR, atomic_write_bytes, atomic_write_text

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


# --------------------------------------------------------------------------------------------
# Figure recipes: what a figure was drawn from, so notebook 08 can draw it again without a model
# --------------------------------------------------------------------------------------------
RECIPES = "figures"  # sub-folder of a run folder holding <name>.json (+ <name>.npz) per figure


def _encode(x: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """Plain JSON for `x`; arrays and tensors go to `arrays` under a new key (restored by `_decode`)."""
    import torch

    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, np.generic):
        return {"__npscalar__": x.dtype.str, "value": x.item()}
    if isinstance(x, (np.ndarray, torch.Tensor)):
        key = f"a{len(arrays)}"
        arrays[key] = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return {"__tensor__" if isinstance(x, torch.Tensor) else "__array__": key}
    if isinstance(x, Path):
        return {"__path__": str(x)}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        cls = type(x)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(x, f.name), arrays, f"{where}.{f.name}")
                           for f in dataclasses.fields(x) if f.init}}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, dict):
        return {"__dict__": [[_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                             for k, v in x.items()]}
    raise TypeError(f"cannot record {where} of type {type(x).__name__} in a figure recipe; pass plain data "
                    "(numbers, strings, lists, dicts, arrays, tensors, dataclasses of these)")


def _locate(name: str) -> Any:
    import importlib

    module, _, qual = name.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(x: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(x, list):
        return [_decode(v, arrays) for v in x]
    if not isinstance(x, dict):
        return x
    if "__npscalar__" in x:
        return np.dtype(x["__npscalar__"]).type(x["value"])
    if "__array__" in x:
        return arrays[x["__array__"]]
    if "__tensor__" in x:
        import torch

        return torch.from_numpy(np.array(arrays[x["__tensor__"]]))
    if "__path__" in x:
        return Path(x["__path__"])
    if "__dataclass__" in x:
        return _locate(x["__dataclass__"])(**{k: _decode(v, arrays) for k, v in x["fields"].items()})
    if "__tuple__" in x:
        return tuple(_decode(v, arrays) for v in x["__tuple__"])
    if "__dict__" in x:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in x["__dict__"]}
    raise ValueError(f"unknown entry in a figure recipe: {sorted(x)}")


def plot_and_save(plot: Callable[..., Any], *args: Any, name: str, fig_dir: str | Path | None = None,
                  out_dir: str | Path | None = None, **kwargs: Any):
    """Draw `plot(*args, **kwargs)`, save it as figure `name` (`save_figure`), and, when `out_dir` is a run
    folder, record the recipe there (out_dir/figures/<name>.json and .npz): the function's import name
    and its arguments, so `replay` draws the same figure from the run alone. Returns the figure.

    Args:
        plot: a module-level function returning a matplotlib figure; it must draw from its arguments
            alone (no randomness, no model).
        name: the figure's file stem.
        fig_dir: as in `save_figure`.
        out_dir: the notebook's OUT_DIR (None: no recipe, as in interactive and smoke runs).
    """
    if getattr(plot, "__qualname__", "<").startswith("<") or "<locals>" in getattr(plot, "__qualname__", ""):
        raise ValueError(f"figure {name!r}: plot must be a module-level function, got {plot!r}")
    if out_dir is not None:  # encode first: an argument that cannot be recorded fails before anything is drawn
        arrays: dict[str, np.ndarray] = {}
        recipe = {"function": f"{plot.__module__}:{plot.__qualname__}", "args": _encode(list(args), arrays, "args"),
                  "kwargs": _encode(dict(kwargs), arrays, "kwargs")}
    fig = plot(*args, **kwargs)
    save_figure(fig, name, fig_dir)
    if out_dir is not None:
        d = Path(out_dir) / RECIPES
        d.mkdir(parents=True, exist_ok=True)
        if arrays:
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(d / f"{name}.npz", buf.getvalue())
        elif (d / f"{name}.npz").exists():
            (d / f"{name}.npz").unlink()
        atomic_write_text(d / f"{name}.json", json.dumps(recipe, sort_keys=True))
    return fig


def replay(recipe: str | Path):
    """Draw the figure a recipe (<run folder>/figures/<name>.json) describes; returns the figure."""
    p = Path(recipe)
    try:
        r = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"figure recipe {p} cannot be read ({e}); rerun its notebook") from None
    arrays: dict[str, np.ndarray] = {}
    if p.with_suffix(".npz").is_file():
        with np.load(p.with_suffix(".npz")) as z:
            arrays = {k: z[k] for k in z.files}
    try:
        fn = _locate(r["function"])
        args, kwargs = _decode(r["args"], arrays), _decode(r["kwargs"], arrays)
    except (KeyError, AttributeError, ImportError) as e:
        raise ValueError(f"figure recipe {p} names what this code no longer has ({e!r}); rerun its notebook") from None
    return fn(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Small plots the notebooks share
# --------------------------------------------------------------------------------------------
def plot_category_counts(counts: Mapping[str, Mapping[str, int]], keys: Sequence[str] | None = None):
    """One bar panel per key of `counts` ({key: {category: count}}), e.g. frames per species. Returns the figure."""
    import matplotlib.pyplot as plt

    keys = list(keys or counts)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.25 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        c = counts[key]
        ax.bar(list(c), list(c.values()), color="tab:blue")
        ax.set_title(f"frames per {key}")
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    return fig


def plot_distance_histograms(distances: Mapping[str, Mapping[str, Any]], n_stories: int, n_bins: int = 40):
    """Histograms of prompt distances, one panel per encoder ({encoder: {memory: (P,) distances}}). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(distances), figsize=(6 * len(distances), 3.2), squeeze=False)
    for ax, (enc, per_memory) in zip(axes[0], distances.items()):
        bins = np.linspace(0, max(d.max() for d in per_memory.values()) + 1e-9, n_bins)
        for label, d in per_memory.items():
            ax.hist(d, bins=bins, alpha=0.6, label=f"{label} (mean {d.mean():.2f})")
        ax.set(xlabel=f"d(y, y~) = 1 - cos under {enc}", ylabel="prompts", title=f"{enc}, {n_stories} toy stories")
        ax.legend()
    return fig


# candidate label positions around a point: (dx, dy) in points, horizontal and vertical alignment; right and
# left first (error bars run vertically through the point), then the diagonals
_LABEL_SPOTS = [((6, 0), "left", "center"), ((-6, 0), "right", "center"), ((5, 7), "left", "bottom"),
                ((5, -7), "left", "top"), ((-5, 7), "right", "bottom"), ((-5, -7), "right", "top")]


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                 avoid: Sequence[tuple[float, float, float]] = (), fontsize: float = 6) -> list:
    """Annotate point k with labels[k] where the text overlaps no other label, no point and no error bar.

    Each label tries spots around its point (right, left, then the diagonals), then the same spots farther
    out with a thin leader line; the first spot that overlaps nothing placed so far and stays inside the
    axes wins (the last one tried is kept when none is free).

    Args:
        ax: the axes (its limits must be final: positions are measured in display space).
        xs, ys: the points, in data coordinates.
        labels: one text per point.
        avoid: (x, y_low, y_high) vertical segments to keep clear (error bars), in data coordinates.
        fontsize: of the labels.
    Returns:
        the annotations, in the order of `labels`.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    r = 4 * fig.dpi / 72  # a marker's half width (4 points) in pixels
    blocked = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in to_px(np.column_stack([xs, ys]))]
    for x, lo, hi in avoid:
        (x0, y0), (_, y1) = to_px([(x, lo), (x, hi)])
        blocked.append(Bbox.from_extents(x0 - 2, min(y0, y1), x0 + 2, max(y0, y1)))
    out: list = [None] * len(labels)
    for k in sorted(range(len(labels)), key=lambda k: (-ys[k], xs[k])):  # top to bottom, left to right
        x, y, text = xs[k], ys[k], labels[k]
        ann = None
        for scale in (1, 2.5, 4):
            for (dx, dy), ha, va in _LABEL_SPOTS:
                if ann is not None:
                    ann.remove()
                arrow = {"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if scale > 1 else None
                ann = ax.annotate(text, (x, y), xytext=(dx * scale, dy * scale), textcoords="offset points",
                                  ha=ha, va=va, fontsize=fontsize, arrowprops=arrow)
                box = ann.get_window_extent(renderer).padded(1)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(box.overlaps(b) for b in blocked):
                    break
            else:
                continue
            break
        blocked.append(ann.get_window_extent(renderer))
        out[k] = ann
    return out
