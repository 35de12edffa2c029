"""Figures a reader can read: long videos wrap into rows, legends sit off the lines, labels do not overlap, and
Fig. 5 marks the parts that make a frame wrong."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from acdc_lib.experiment.ablations import plot_pareto, plot_tprime_tradeoff  # noqa: E402
from acdc_lib.experiment.physical import plot_fig5  # noqa: E402
from acdc_lib.experiment.report import plot_frame_rows  # noqa: E402


def _frames(n, generator):
    return torch.rand(n, 3, 8, 8, generator=generator)


def test_a_32_frame_video_wraps_into_blocks_of_rows():
    g = torch.Generator().manual_seed(0)
    rows = {r: _frames(32, g) for r in ("true", "ARM alone", "ACDC")}
    fig = plot_frame_rows(rows)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3 * 32
    titles = sorted(int(ax.get_title().split()[1]) for ax in shown if ax.get_title())
    assert titles == list(range(1, 33))  # every frame numbered once, above its block's first row
    assert fig.get_figwidth() <= 1.3 * 12 + 1.6 and len({round(ax.get_position().x0, 6) for ax in shown}) == 11  # 11, 11, 10
    # frame 12 opens the second block, in the first column, below frame 1's block
    first = {int(ax.get_title().split()[1]): ax for ax in shown if ax.get_title()}
    assert round(first[12].get_position().x0, 6) == round(first[1].get_position().x0, 6) and first[12].get_position().y0 < first[1].get_position().y0
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()].count("ARM alone") == 3
    plt.close(fig)
    small = plot_frame_rows({"a": _frames(6, g)})
    assert len([ax for ax in small.axes if ax.images]) == 6 and len(small.axes) == 6  # short videos: one line
    plt.close(small)


def test_tprime_legends_do_not_cover_the_lines():
    tps = [0.1 * k for k in range(1, 10)]
    iv = lambda v: {"value": v, "low": v * 0.9, "high": v * 1.1}  # noqa: E731
    trade = [{"t_prime": t, "deviation": iv(3 + 10 * t), "bound_corrected": 50 * np.exp(6 * t),
              "bound_printed": 55 * np.exp(7 * t), "pixel_rms": iv(8 + 22 * t), "feature_dist": iv(0.03 + 0.1 * t)}
             for t in tps]
    fig = plot_tprime_tradeoff(trade, tps, [0.9] * 9, {"physical_validity": [0.6] * 9}, 0.3)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 3
    for leg in legends:
        ax = leg.axes
        assert leg.get_window_extent(r).y1 < ax.get_window_extent(r).y0  # below the panel, off every line
    assert "feature distance, right axis" in [t.get_text() for t in legends[1].get_texts()]
    plt.close(fig)


def test_pareto_labels_do_not_overlap():
    def q(v):
        return {"value": v, "low": v - 0.011, "high": v + 0.011}

    pts = [dict(policy="arm", adaptive=False, corrections=0, quality=q(0.848)),
           dict(policy="acdc2", adaptive=False, corrections=2, quality=q(0.8665)),
           dict(policy="every3", adaptive=False, corrections=2, quality=q(0.864)),  # nearly on top of acdc2
           dict(policy="every2", adaptive=False, corrections=3, quality=q(0.8815)),
           dict(policy="adaptive0.33", adaptive=True, corrections=2.0, quality=q(0.8915)),
           dict(policy="adaptive0.5", adaptive=True, corrections=2.1, quality=q(0.889))]
    fig = plot_pareto(pts)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts]
    assert sorted(t.get_text() for t in texts) == sorted(p["policy"] for p in pts)
    boxes = [t.get_window_extent(r) for t in texts]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    plt.close(fig)


def test_fig5_outlines_the_wrong_part_and_enlarges_it():
    g = torch.Generator().manual_seed(0)
    given = torch.rand(3, 16, 16, generator=g)
    mask = torch.zeros(1, 16, 16)
    mask[0, 4:6, 7:10] = 1  # a 2 x 3 part: its outline has 2 * (2 + 3) = 10 pixel edges
    fig = plot_fig5(given, mask, {"ARM alone": _frames(4, g), "ACDC": _frames(4, g)})
    top = fig.axes[0]
    assert len(top.lines) == 10
    xs = sorted({x for ln in top.lines for x in ln.get_xdata()})
    ys = sorted({y for ln in top.lines for y in ln.get_ydata()})
    assert (xs[0], xs[-1], ys[0], ys[-1]) == (6.5, 9.5, 3.5, 5.5)  # along the part's pixel borders
    zoom = fig.axes[2]
    assert zoom.get_title() == "wrong part, enlarged" and zoom.images[0].get_array().shape[:2] == (2 + 6, 3 + 6)
    assert len(fig.axes[4].lines) == 10  # frame 1 of the first condition carries the same outline
    plt.close(fig)
