"""The paper's Tables 1-2 beside ours: changes, verdicts, per-frame claims, markdown and figures."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from acdc_lib import metrics as M
from acdc_lib.experiment.rows import load_frames
from acdc_lib.experiment.scoring import ResultsTable, frame_gaps, frame_trend, paired_difference
from acdc_lib.types import Story

# --------------------------------------------------------------------------------------------
# The paper's numbers and the comparison
# --------------------------------------------------------------------------------------------
# ACDC paper, Table 1 (story generation, 1k LLM-written stories of 6 prompts): row -> column -> value.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "Stable Diffusion v1.5": {"Frame consistency": 0.6822, "CLIP-sim": 28.91, "ImageReward": -0.8455, "FID": 32.11},
    "Show-o": {"Frame consistency": 0.8211, "CLIP-sim": 28.76, "ImageReward": -0.5752, "FID": 60.50},
    "Show-o + ACDC (ours)": {"Frame consistency": 0.9062, "CLIP-sim": 30.82, "ImageReward": -0.0003, "FID": 56.36},
    "UIO-2 XXL": {"Frame consistency": 0.8833, "CLIP-sim": 29.46, "ImageReward": -0.8354, "FID": 67.12},
    "UIO-2 XXL + ACDC (ours)": {"Frame consistency": 0.8962, "CLIP-sim": 31.09, "ImageReward": -0.2624, "FID": 57.80},
}
# ACDC paper, Table 2 (ablation, 100 test stories): (ACDC # frames corrected, LLM memory) -> column -> value.
PAPER_TABLE2: dict[tuple[int, bool], dict[str, float]] = {
    (0, False): {"F.Con.": 0.822, "CLIP": 28.60, "FID": 112.5},
    (2, True): {"F.Con.": 0.888, "CLIP": 28.58, "FID": 109.6},
    (4, True): {"F.Con.": 0.843, "CLIP": 28.79, "FID": 107.6},
    (6, True): {"F.Con.": 0.853, "CLIP": 30.85, "FID": 101.4},
    (6, False): {"F.Con.": 0.835, "CLIP": 29.43, "FID": 101.6},
}
# our metric -> (Table 1 column, Table 2 column, +1 if higher is better else -1)
METRIC_MAP = {"frame_consistency": ("Frame consistency", "F.Con.", 1), "clip_score": ("CLIP-sim", "CLIP", 1),
              "fid": ("FID", "FID", -1)}
# comparison -> (our old row, our new row, [(paper source, old value getter key, new key)])
COMPARISONS = {
    "ACDC vs ARM": ("arm", "acdc_rules", [("Table 1", "Show-o", "Show-o + ACDC (ours)"),
                                          ("Table 1", "UIO-2 XXL", "UIO-2 XXL + ACDC (ours)")]),
    "memory vs no memory": ("acdc_nomem", "acdc_rules", [("Table 2", (6, False), (6, True))]),
    "ARM vs DM only": ("dm_only", "arm", [("Table 1", "Stable Diffusion v1.5", "Show-o"),
                                          ("Table 1", "Stable Diffusion v1.5", "UIO-2 XXL")]),
    "ACDC (LLM memory) vs ARM": ("arm", "acdc_llm", [("Table 1", "Show-o", "Show-o + ACDC (ours)"),
                                                     ("Table 1", "UIO-2 XXL", "UIO-2 XXL + ACDC (ours)")]),
    "LLM memory vs no memory": ("acdc_nomem", "acdc_llm", [("Table 2", (6, False), (6, True))]),
}


def _change(old: float, new: float, sign: int) -> dict[str, Any]:
    rel = (new - old) / abs(old) * 100.0 if old != 0 else None  # None: no relative size from 0
    return {"old": old, "new": new, "rel_change_pct": rel, "direction": "+" if new > old else "-" if new < old else "0",
            "better": (new - old) * sign > 0}


def compare_with_paper(ours: ResultsTable, paper: Mapping | None = None,
                       comparisons: Mapping[str, tuple] | None = None) -> list[dict[str, Any]]:
    """Direction and relative size ((new - old) / |old|) of each change, ours beside the paper's.

    All changes use the old value as denominator; the paper's printed FID percentages divide by the
    ACDC value instead (7.34% = 4.14 / 56.36), so ours are recomputed from its numbers.

    Args:
        ours: `summarise`'s table; comparisons whose rows, and metrics it did not measure, are left out.
        paper: {"Table 1": PAPER_TABLE1, "Table 2": PAPER_TABLE2} by default.
        comparisons: {name: (old row, new row, [(table, paper old, paper new)])}, COMPARISONS by default.
    Returns:
        one dict per (comparison, metric, paper source): paper_*, ours_* and same_direction.
    """
    paper = paper or {"Table 1": PAPER_TABLE1, "Table 2": PAPER_TABLE2}
    out = []
    for comp, (r_old, r_new, sources) in (comparisons or COMPARISONS).items():
        if r_old not in ours.rows or r_new not in ours.rows:
            continue
        for metric, (col1, col2, sign) in METRIC_MAP.items():
            if metric not in ours.rows[r_old] or metric not in ours.rows[r_new]:
                continue  # not measured here (e.g. FID without a reference set)
            o = _change(ours.rows[r_old][metric].value, ours.rows[r_new][metric].value, sign)
            if metric in ours.per_story.get(r_old, {}) and metric in ours.per_story.get(r_new, {}):
                d = paired_difference(ours, r_old, r_new, metric)
                o["diff_ci"], o["ci_excludes_0"] = asdict(d), not d.low <= 0.0 <= d.high
            for table, p_old, p_new in sources:
                col = col1 if table == "Table 1" else col2
                p = _change(paper[table][p_old][col], paper[table][p_new][col], sign)
                out.append({"comparison": comp, "metric": metric, "paper_source": f"{table}: {p_old} -> {p_new}",
                            **{f"paper_{k}": v for k, v in p.items()}, **{f"ours_{k}": v for k, v in o.items()},
                            "same_direction": o["direction"] == p["direction"]})
    return out


def comparison_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of `compare_with_paper`'s rows."""
    pct = lambda v: "n/a" if v is None else f"{v:+.1f}%"
    ci = lambda r: {True: "yes", False: "no"}.get(r.get("ours_ci_excludes_0"), "n/a (set-level)")
    lines = ["| comparison | metric | paper (source) | paper change | ours change | paired 95% CI excludes 0 "
             "| same direction |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['comparison']} | {r['metric']} | {r['paper_source']} | {pct(r['paper_rel_change_pct'])} "
                     f"| {pct(r['ours_rel_change_pct'])} | {ci(r)} | {'yes' if r['same_direction'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot_curves(table: ResultsTable, curves: Sequence[str] = ("char_acc", "bg_acc", "consistency"),
                rows: Sequence[str] | None = None):
    """One panel per curve: the per-frame value of every row against frame index, with its interval band.

    Consistency is per consecutive pair, drawn at the later frame (pair (i-1, i) at i). Returns the figure.
    """
    import matplotlib.pyplot as plt

    rows = list(rows or table.curves)
    bad = [c for c in curves if any(c not in table.curves[r] for r in rows)]
    if bad:
        raise ValueError(f"curves {bad} are not in the table; available: {sorted(next(iter(table.curves.values())))}")
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.0), squeeze=False)
    for ax, c in zip(axes[0], curves):
        for r in rows:
            pts = table.curves[r][c]
            x = np.arange(len(pts)) + (2 if c == "consistency" else 1)          # 1-based frame index
            ax.plot(x, [p.value for p in pts], marker="o", label=table.labels.get(r, r))
            ax.fill_between(x, [p.low for p in pts], [p.high for p in pts], alpha=0.15)
        ax.set(title=c, xlabel="frame", xticks=np.arange(1, table.n_frames + 1))
    # one legend below the panels (inside the first panel it hid the curves); savefig's tight bbox keeps it
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, -0.05),
               ncol=min(len(rows), 5), fontsize=8)
    return fig



# --------------------------------------------------------------------------------------------
# Notebook 03: paired changes on the exact metrics, plain-words verdicts, example frames, t' sweep
# --------------------------------------------------------------------------------------------
def paired_changes(table: ResultsTable, metrics: Sequence[str] | None = None, n_resamples: int = 2000,
                   seed: int = 0, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Paired per-story change (new - old) of every per-story metric, for each comparison of COMPARISONS.

    Every per-story metric here is higher-is-better (consistency, CLIPScore, accuracies, validity)
    except position_err_px (pixels, lower is better), so a positive change is an improvement but there. Comparisons whose rows the table lacks are left out.

    Args:
        metrics: per-story metric names (default: all the table has for both rows).
    Returns:
        one dict per (comparison, metric): old/new rows and values, diff (Interval as dict), excludes_0.
    """
    out = []
    for comp, (old, new, _) in COMPARISONS.items():
        if old not in table.per_story or new not in table.per_story:
            continue
        names = metrics if metrics is not None else [m for m in table.per_story[old] if m in table.per_story[new]]
        for m in names:
            d = paired_difference(table, old, new, m, n_resamples=n_resamples, seed=seed, confidence=confidence)
            out.append({"comparison": comp, "old": old, "new": new, "metric": m,
                        "old_value": float(np.nanmean(table.per_story[old][m])),
                        "new_value": float(np.nanmean(table.per_story[new][m])),
                        "diff": asdict(d), "excludes_0": not d.low <= 0.0 <= d.high})
    return out


def paired_changes_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A markdown table of `paired_changes`' rows."""
    f = lambda v: f"{v:.{digits}f}"
    lines = ["| comparison | metric | old | new | change [95% CI] | CI excludes 0 |", "|---|---|---|---|---|---|"]
    for r in rows:
        d = r["diff"]
        lines.append(f"| {r['comparison']} | {r['metric']} | {f(r['old_value'])} | {f(r['new_value'])} "
                     f"| {d['value']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}] "
                     f"| {'yes' if r['excludes_0'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _verdict(paper_better: set, ours_better: bool | None, significant: bool) -> str:
    if len(paper_better) != 1:
        return "paper mixed"
    claim = paper_better == {True}
    if ours_better is None:
        return "no change"
    if ours_better == claim:
        return "reproduced" if significant else "same direction, not significant"
    return "opposite, significant" if significant else "opposite, not significant"


def reproduction_verdicts(comparison: Sequence[Mapping[str, Any]], table: ResultsTable,
                          comparisons: Mapping[str, tuple] | None = None) -> list[dict[str, Any]]:
    """One verdict per (comparison, metric) of `compare_with_paper`'s rows: does the toy world show the paper's change?

    The paper's claim is the direction its sources agree on ("paper mixed" when they do not).
    Significance of ours: the paired per-story interval excludes 0; for FID (set-level, no
    per-story value) the two rows' own intervals do not overlap, a stricter test.
    Verdicts: reproduced, same direction, not significant, opposite, significant,
    opposite, not significant, no change, paper mixed.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in comparison:
        groups.setdefault((r["comparison"], r["metric"]), []).append(r)
    out = []
    for (comp, metric), rs in groups.items():
        r0, (old, new, _) = rs[0], (comparisons or COMPARISONS)[comp]
        if "ours_ci_excludes_0" in r0:
            significant, test = bool(r0["ours_ci_excludes_0"]), "paired per-story 95% interval"
        else:
            a, b = table.rows[old][metric], table.rows[new][metric]
            significant, test = a.high < b.low or b.high < a.low, "rows' 95% intervals (set-level)"
        ours_better = None if r0["ours_direction"] == "0" else bool(r0["ours_better"])
        paper_better = {bool(r["paper_better"]) for r in rs}
        out.append({"comparison": comp, "metric": metric, "verdict": _verdict(paper_better, ours_better, significant),
                    "ours_rel_change_pct": r0["ours_rel_change_pct"], "ours_better": ours_better,
                    "significant": significant, "test": test,
                    "paper_rel_change_pct": [r["paper_rel_change_pct"] for r in rs],
                    "paper_sources": [r["paper_source"] for r in rs], "paper_better": sorted(paper_better)})
    return out


def verdicts_markdown(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """Plain-words bullet list of `reproduction_verdicts`."""
    pct = lambda v: "n/a" if v is None else f"{v:+.1f}%"
    lines = []
    for v in verdicts:
        paper = ", ".join(f"{pct(p)} ({s.split(': ', 1)[1]})" for p, s in zip(v["paper_rel_change_pct"],
                                                                            v["paper_sources"]))
        lines.append(f"- **{v['comparison']}, {v['metric']}: {v['verdict']}.** Paper: {paper}. "
                     f"Ours: {pct(v['ours_rel_change_pct'])} ({'significant' if v['significant'] else 'not significant'}"
                     f" by the {v['test']}).")
    return "\n".join(lines) + "\n"



FRAME_GAPS = (("arm", "arm_true_ctx", "inherited by the ARM (true minus own earlier frames)"),
              ("arm", "acdc_rules", "ACDC (rule memory) minus ARM alone"),
              ("arm_true_ctx", "acdc_rules", "ACDC (rule memory) minus the oracle-context ARM"))


def frame_gaps_markdown(table: ResultsTable, curves: Sequence[str] = ("char_acc", "bg_acc", "time_acc", "action_acc"),
                        pairs: Sequence[tuple[str, str, str]] = FRAME_GAPS, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """A markdown table of `frame_gaps` for each (pair, curve) the table has, and the same as records.

    Pairs whose rows, and curves that either row, the table lacks (no ground truth, another memory) are left out."""
    n = table.n_frames
    lines = ["| change | curve | " + " | ".join(f"frame {i + 1}" for i in range(n)) + f" | frame {n} [95% CI] "
             f"| frames 2-{n} mean [95% CI] |", "|---" * (n + 4) + "|"]
    records = []
    for old, new, what in pairs:
        if old not in table.per_frame or new not in table.per_frame:
            continue
        for c in curves:
            if c not in table.per_frame[old] or c not in table.per_frame[new]:
                continue
            g = frame_gaps(table, old, new, c, n_resamples=n_resamples, seed=seed)
            last, later = g["per_frame"][-1], g["later"]
            lines.append(f"| {what} | {c} | " + " | ".join(f"{v.value:+.3f}" for v in g["per_frame"])
                         + f" | {last.signed()} | {later.signed()} |")
            records.append({"old": old, "new": new, "change": what, "curve": c,
                            "per_frame": [asdict(v) for v in g["per_frame"]], "later": asdict(later),
                            "later_excludes_0": not later.low <= 0.0 <= later.high})
    return "\n".join(lines) + "\n", records


def accumulation_claims(gaps: Sequence[Mapping[str, Any]], n_frames: int) -> list[str]:
    """Plain-words lines on accumulation measured against the oracle row (`arm_true_ctx`), per curve.

    Args:
        gaps: `frame_gaps_markdown`'s records (so no interval is bootstrapped twice).
        n_frames: N, for the wording "frames 2-N".
    For each curve: the error the ARM alone inherits over frames 2..N (oracle minus ARM, paired per
    story) and where ACDC with rule memory stands against the oracle over the same frames. Empty when
    the records hold no oracle comparison. "Significant": the 95% interval of the per-story mean excludes 0.
    """
    later = {(g["old"], g["new"], g["curve"]): M.Interval(**g["later"]) for g in gaps}
    lines = []
    for (old, new, c), inh in later.items():
        if (old, new) != ("arm", "arm_true_ctx"):
            continue
        sig = not inh.low <= 0.0 <= inh.high
        line = (f"{c}: the ARM alone inherits {inh.signed()} over frames 2-{n_frames} (oracle minus ARM), "
                + ("significant: its errors here accumulate" if sig and inh.value > 0 else
                   "significant, but its own frames help it" if sig else "not significant: nothing inherited"))
        a = later.get(("arm_true_ctx", "acdc_rules", c))
        if a is not None:
            where = "above" if a.low > 0 else "below" if a.high < 0 else "level with"
            line += f"; ACDC (rule memory) is {where} the oracle ({a.signed()})"
        lines.append(line + ".")
    return lines


def example_frames(out_dir: str | Path, story: Story, rows: Sequence[str],
                   reference: Callable[[Story], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One story's frames per row from a run folder, the ground-truth renders first ("reference") when given."""
    lines = {"reference": reference(story).cpu().float()} if reference is not None else {}
    return {**lines, **{r: load_frames(out_dir, r, [story])[0] for r in rows}}


def plot_frame_rows(frames: Mapping[str, torch.Tensor], labels: Mapping[str, str] | None = None,
                    max_columns: int = 12):
    """A grid of one story's frames: one line per row of `frames` ({row: (N, C, H, W) in [0, 1]}). Returns the figure.

    More than `max_columns` frames are wrapped: frames 1..k of every row, then frames k+1..2k of every row,
    and so on, with k chosen so the blocks are about equally wide (32 frames: 11, 11, 10).
    """
    import matplotlib.pyplot as plt

    lines = list(frames.items())
    N = len(lines[0][1])
    blocks = -(-N // max_columns)  # ceil
    per_line = -(-N // blocks)
    step = len(lines) + 1  # a block's rows and a thin empty row that keeps the next block's titles clear
    heights = ([1.0] * len(lines) + [0.3]) * (blocks - 1) + [1.0] * len(lines)
    fig, axes = plt.subplots(len(heights), per_line, figsize=(1.3 * per_line + 1.6, 1.35 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for row in range(len(heights)):
        if row % step == len(lines):
            for ax in axes[row]:
                ax.axis("off")
    for row in range((blocks - 1) * step, len(heights)):
        for ax in axes[row][N - (blocks - 1) * per_line:]:
            ax.axis("off")  # the last block's empty cells
    for a, (r, fr) in enumerate(lines):
        for i in range(N):
            block, col = divmod(i, per_line)
            ax = axes[block * step + a][col]
            img = fr[i].clamp(0, 1)
            if img.shape[0] == 1:  # one channel: grey levels on a fixed [0, 1] scale
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if a == 0:
                ax.set_title(f"frame {i + 1}", fontsize=8)
        for block in range(blocks):
            axes[block * step + a][0].set_ylabel((labels or {}).get(r, "Ground truth" if r == "reference" else r),
                                                       fontsize=7, rotation=0, ha="right", va="center")
    return fig


def plot_example_frames(out_dir: str | Path, story: Story, rows: Sequence[str],
                        reference: Callable[[Story], torch.Tensor] | None = None,
                        labels: Mapping[str, str] | None = None):
    """`plot_frame_rows` of `example_frames`: one story's frames per row of a run folder. Returns the figure."""
    return plot_frame_rows(example_frames(out_dir, story, rows, reference), labels)


def paper_table_markdown(table: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The paper's Table 1 (default) as a markdown table (values as printed)."""
    table = table or PAPER_TABLE1
    cols = list(next(iter(table.values())))
    lines = ["| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(f"{v:g}" for v in d.values()) + " |" for r, d in table.items()]
    return "\n".join(lines) + "\n"


def curve_claims(table: ResultsTable, curve: str = "char_acc") -> list[str]:
    """Plain-words lines on the paper's per-frame claims, from the per-frame curves of `table`.

    Three claims (Sec. 4.1 and Fig. 4): errors accumulate in the ARM alone (last frame below the
    first); ACDC holds the later frames up (ACDC's last frame above the ARM's); memory matters more
    in later frames (the rule-minus-no-memory gap is larger at the last frame than at the first).
    "Significant" means the two 95% intervals compared do not overlap (unpaired, conservative).
    """
    t = {x["row"]: x for x in frame_trend(table, curve, [r for r in ("arm", "acdc_rules", "acdc_nomem")
                                                         if r in table.curves])}
    c, n = table.curves, table.n_frames
    apart = lambda a, b: a.high < b.low or b.high < a.low
    sig = lambda s: "significant" if s else "not significant"
    lines = []
    if "arm" in t:
        a = t["arm"]
        lines.append(f"Errors accumulate in the ARM alone: {curve} {a['first']:.3f} at frame 1, {a['last']:.3f} at "
                     f"frame {n} (change {a['change']:+.3f}, {sig(a['falls'])}).")
    if "arm" in t and "acdc_rules" in t:
        r, a = c["acdc_rules"][curve], c["arm"][curve]
        lines.append(f"ACDC (rule memory) at frame {n}: {curve} {r[-1].value:.3f} against the ARM's {a[-1].value:.3f} "
                     f"({r[-1].value - a[-1].value:+.3f}, {sig(apart(r[-1], a[-1]))}); at frame 1 "
                     f"{r[0].value - a[0].value:+.3f} ({sig(apart(r[0], a[0]))}).")
    if "acdc_rules" in t and "acdc_nomem" in t:
        r, m = c["acdc_rules"][curve], c["acdc_nomem"][curve]
        g1, gn = r[0].value - m[0].value, r[-1].value - m[-1].value
        lines.append(f"Memory in later frames: rule minus no-memory {curve} {g1:+.3f} at frame 1 "
                     f"({sig(apart(r[0], m[0]))}), {gn:+.3f} at frame {n} ({sig(apart(r[-1], m[-1]))}); the gap is "
                     f"{'larger' if gn > g1 else 'not larger'} later, "
                     f"{'as' if gn > g1 else 'unlike'} the paper's Fig. 4.")
    return lines
