"""StoryGPT-V beside ACDC on the same stories (notebook 09): rows, long stories, costs and StoryGPT-V's claims.

StoryGPT-V is a trained story generator (a character-aware LDM conditioned by an LM through [IMG] tokens); it
runs here as the "generator" rows of `rows.ROWS` (`storygpt_v` and its three ablations), built by name through
`acdc_lib.components` (kind "story_generator"), next to notebook 03's rows on the same stories and seeds, so
every comparison is paired per story. Nothing here knows a backend: the toy world registers StoryGPT-V-toy.

    gens = build_generators(model_id=None, device="cpu")               # {row: generator}
    run_experiment(stories, out, arm=..., corrector=..., memory=..., generator_rows=gens,
                   config=ExperimentConfig(rows=TABLE_ROWS, ...))
    claims = storygpt_claims(table, long)                              # their four claims, paired intervals
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from acdc_lib import components
from acdc_lib import metrics as M
from acdc_lib.experiment.rows import ExperimentConfig, run_experiment
from acdc_lib.experiment.scoring import ResultsTable, paired_difference, summarise
from acdc_lib.types import Story

STORYGPT_ROWS = ("storygpt_v", "storygpt_v_noreg", "storygpt_v_text", "storygpt_v_caption")
# row -> the variant option of the "story_generator" builder (the toy world's `storygpt.VARIANTS`)
VARIANTS = {"storygpt_v": "storygpt_v", "storygpt_v_noreg": "no_reg", "storygpt_v_text": "text_embedding",
            "storygpt_v_caption": "caption_only"}
ACDC_ROWS = ("dm_only", "arm", "acdc_rules")  # notebook 03's rows that notebook 09 puts beside StoryGPT-V
TABLE_ROWS = ACDC_ROWS + STORYGPT_ROWS
LONG_METHODS = ("arm", "acdc_rules", "storygpt_v")  # the methods of the long-story profile
LONG_LENGTHS = (6, 24, 48, 96)  # their Table 5 runs 4 to 50 frames; Story-LDM ran out of 80 GB at 42


def build_generators(name: str = "storygpt_v", model_id: str | Path | None = None,
                     rows: Sequence[str] = STORYGPT_ROWS, device: str = "cpu", **options: Any) -> dict[str, Any]:
    """{row: story generator} of the StoryGPT-V rows, each the registered generator `name` with its variant.

    Raises FileNotFoundError (from the builder) naming the missing checkpoint folders and how to train them.
    """
    bad = [r for r in rows if r not in VARIANTS]
    if bad:
        raise ValueError(f"unknown StoryGPT-V rows {bad}; allowed: {list(VARIANTS)}")
    return {r: components.build("story_generator", name, model_id=model_id, device=device, variant=VARIANTS[r],
                                **options) for r in rows}


def long_stories(stories: Sequence[Story], n_frames: int) -> list[Story]:
    """Each story cycled to `n_frames` frames (sentences and ground-truth states repeat from frame 1), as the
    long-story benchmark cycles them: every frame keeps an exact truth, and from frame 7 on the story returns to
    places and actions it has shown, so a method that keeps its character should keep it right."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    out = []
    for s in stories:
        n = len(s.sentences)
        if n == 0:
            raise ValueError(f"story {s.story_id!r} has no sentences")
        idx = [i % n for i in range(n_frames)]
        out.append(dataclasses.replace(s, story_id=f"{s.story_id}-x{n_frames}",
                                       sentences=[s.sentences[i] for i in idx],
                                       states=[s.states[i] for i in idx] if s.states else s.states))
    return out


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing), so that a CPU
    run's resident-set rise is its own working memory. Without it, blocks an earlier run freed stay mapped
    wherever live allocations fragment the heap, and a later run that reuses them shows no rise at all (the
    toy ARM read 0.004 MiB at 24 to 96 frames after a 6-frame run). psutil reads the RSS but cannot release it,
    and torch's CPU allocator calls malloc directly, so this is the one lever."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): no malloc_trim
        trim = None
    if trim is not None:
        trim(0)


def measure(fn: Callable[[], Any], device: str | torch.device = "cpu", poll_s: float = 0.005) -> tuple[Any, float, float]:
    """(fn(), wall seconds, peak memory rise in MiB while it ran): CUDA's peak allocated memory on a GPU; on a
    CPU the resident set size sampled every `poll_s` seconds by a thread (torch's CPU allocations are not seen by
    tracemalloc, and getrusage's high-water mark never falls between runs). On a CPU the heap's free pages are
    handed back first (`_release_free_heap`), so the rise is what the run itself held at its highest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    import psutil

    _release_free_heap()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(poll_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return out, seconds, (peak[0] - base) / 2 ** 20


def long_story_profile(stories: Sequence[Story], out_dir: str | Path, lengths: Sequence[int], evaluator,
                       ground_truth, config: ExperimentConfig, methods: Sequence[str] = LONG_METHODS,
                       device: str = "cpu", **parts: Any) -> dict[str, Any]:
    """Their Table 5 and Fig. 6: per length and method, seconds per frame and the run's peak memory rise (what
    drawing the stories added at its highest, their Fig. 6's memory), and character accuracy and identity per
    frame with 95% intervals over stories.

    Args:
        stories: the base stories (cycled to each length by `long_stories`).
        out_dir: run folder; <out_dir>/len_<L>/ holds each length's rows (resumable: a finished story is not
            redone, and then its time is not measured again: the time recorded is that of the call that ran it).
        lengths: frames per story (6, 24, 48, 96).
        evaluator, ground_truth: for `summarise`.
        config: the experiment's settings (its rows are replaced by each method in turn).
        methods: rows of `rows.ROWS`.
        **parts: arm, corrector, memory, generator_rows, as `run_experiment` takes them.
    Returns:
        {"lengths", "methods", "seconds_per_frame": {method: [per length]}, "peak_mib": {...},
         "curves": {length: {method: {"char_acc": [...], "identity_acc": [...]}}} (per-frame values, the
         intervals' bounds as {"value", "low", "high"} lists), "table": {length: ResultsTable.to_dict()}}.
    """
    out_dir = Path(out_dir)
    res: dict[str, Any] = {"lengths": list(lengths), "methods": list(methods),
                           "seconds_per_frame": {m: [] for m in methods}, "peak_mib": {m: [] for m in methods},
                           "curves": {}, "table": {}}
    for L in lengths:
        longer = long_stories(stories, L)
        run_dir = out_dir / f"len_{L}"
        for m in methods:
            cfg = dataclasses.replace(config, rows=(m,))
            computed, secs, peak = measure(lambda: run_experiment(longer, run_dir, config=cfg, device=device,
                                                                  progress=False, **parts), device)
            n = max(1, len(computed.get(m, []))) * L
            res["seconds_per_frame"][m].append(secs / n if computed.get(m) else float("nan"))
            res["peak_mib"][m].append(peak if computed.get(m) else float("nan"))
        table = summarise(run_dir, longer, evaluator, dataclasses.replace(config, rows=tuple(methods)),
                          include_reference=False, ground_truth=ground_truth)
        res["table"][L] = table.to_dict()
        res["curves"][L] = {m: {c: {k: [getattr(iv, k) for iv in table.curves[m][c]] for k in ("value", "low", "high")}
                                for c in ("char_acc", "identity_acc") if c in table.curves[m]} for m in methods}
    return res


def window_difference(table: Mapping[str, Any], row: str, first: Sequence[int], last: Sequence[int],
                      curve: str = "char_acc", n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Paired over stories: the mean of `curve` over frames `last` minus over frames `first` (0-based) of one row
    of a `ResultsTable.to_dict()`; {value, low, high} with a 95% bootstrap interval."""
    per = np.asarray(table["per_frame"][row][curve], dtype=float)  # (S, N) 0/1
    diff = per[:, list(last)].mean(1) - per[:, list(first)].mean(1)
    iv = M.bootstrap_ci(torch.as_tensor(diff), n_resamples=n_resamples, seed=seed, method="percentile")
    return {"value": iv.value, "low": iv.low, "high": iv.high}


def _part(name: str, d: Mapping[str, Any] | M.Interval) -> dict[str, Any]:
    d = dataclasses.asdict(d) if isinstance(d, M.Interval) else d
    return {"name": name, "value": float(d["value"]), "low": float(d["low"]), "high": float(d["high"])}


CLAIMS = {
    "char_ldm": "Char-LDM's attention guidance (L_reg) improves character accuracy",
    "fused": "aligning the LM to the fused embedding beats the text embedding",
    "interleaved": "interleaved text and frames beat captions only",
    "long": "character accuracy holds up to 50 frames",
}


def storygpt_claims(table: ResultsTable, long: Mapping[str, Any] | None = None, metric: str = "char_acc",
                    n_resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """StoryGPT-V's four claims, each {claim, parts: [{name, value, low, high}], note}: paired 95% intervals over
    stories of the row that has the factor minus the row without it (the report re-judges them by its rules).

    The long-story claim compares, in the 48-frame run of `long` (`long_story_profile`), frames 43-48 with frames
    1-6 of StoryGPT-V (the same six sentences, cycled): 0 or above is "holds" (kind "no decrease").
    """
    kw = dict(n_resamples=n_resamples, seed=seed)
    pairs = (("char_ldm", "storygpt_v_noreg", "with - without L_reg"),
             ("fused", "storygpt_v_text", "fused - text embedding"),
             ("interleaved", "storygpt_v_caption", "interleaved - caption only"))
    out = []
    for key, other, name in pairs:
        if other in table.rows and "storygpt_v" in table.rows and metric in table.rows["storygpt_v"]:
            d = paired_difference(table, other, "storygpt_v", metric, **kw)
            out.append({"claim": CLAIMS[key], "parts": [_part(f"{metric}, {name}", d)], "note": ""})
        else:
            out.append({"claim": CLAIMS[key], "parts": [], "verdict": "not testable here",
                        "note": f"rows storygpt_v and {other} with {metric} were not both run"})
    t = None if long is None else (long.get("table") or {})
    t48 = None if t is None else (t.get(48) or t.get("48"))
    if t48 is not None and "storygpt_v" in t48.get("per_frame", {}):
        d = window_difference(t48, "storygpt_v", range(6), range(42, 48), metric, **kw)
        out.append({"claim": CLAIMS["long"], "parts": [_part(f"{metric}, frames 43-48 - frames 1-6", d)],
                    "note": "48-frame stories: the test stories' six sentences cycled eight times"})
    else:
        out.append({"claim": CLAIMS["long"], "parts": [], "verdict": "not testable here",
                    "note": "no 48-frame run (LONG_FRAMES without 48)"})
    return out


def head_to_head(table: ResultsTable, metrics: Sequence[str] = ("char_acc", "bg_acc", "identity_acc", "fid"),
                 n_resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """StoryGPT-V minus ARM + ACDC (rule memory), paired per story, for each metric both rows have (FID: the two
    rows' values and whether their intervals are apart); {metric, value, low, high | separate, better}."""
    out = []
    for m in metrics:
        if m not in table.rows.get("storygpt_v", {}) or m not in table.rows.get("acdc_rules", {}):
            continue
        lower_better = m in ("fid", "position_err_px")
        if m in table.per_story.get("storygpt_v", {}):
            d = paired_difference(table, "acdc_rules", "storygpt_v", m, n_resamples=n_resamples, seed=seed)
            row = {"metric": m, "value": d.value, "low": d.low, "high": d.high}
            sig = bool(np.isfinite(d.low) and not (d.low <= 0.0 <= d.high))
        else:
            a, b = table.rows["storygpt_v"][m], table.rows["acdc_rules"][m]
            sig = a.high < b.low or b.high < a.low
            row = {"metric": m, "value": a.value - b.value, "separate": bool(sig)}
        better = (row["value"] < 0) == lower_better if row["value"] != 0 else None
        row["better"] = ("StoryGPT-V" if better else "ACDC") if sig and better is not None else "neither (interval holds 0)"
        out.append(row)
    return out


def head_to_head_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One plain sentence per metric of `head_to_head`."""
    lines = []
    for r in rows:
        iv = (f"[{r['low']:+.3f}, {r['high']:+.3f}]" if "low" in r
              else f"(row intervals {'apart' if r['separate'] else 'overlap'})")
        lines.append(f"{r['metric']}: StoryGPT-V - ACDC {r['value']:+.3f} {iv}: better: {r['better']}")
    return lines


def check_generator_settings(run_dir: str | Path, settings: Mapping[str, Any]) -> None:
    """Record the story generators' own settings (sampler steps, guidance, checkpoints) in
    run_dir/story_generators.json, or refuse a folder whose generator rows were made with others (the rows'
    config.json records the ACDC rows' settings only)."""
    import json

    from acdc_lib.io import atomic_write_json

    path = Path(run_dir) / "story_generators.json"
    mine = json.loads(json.dumps(dict(settings)))
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{path} was written with other story-generator settings {diff} (stored, now); use a "
                             f"fresh RUN_DIR, or delete the folder's storygpt_v* rows and that file")
    else:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, mine)


def plot_long_stories(profile: Mapping[str, Any], labels: Mapping[str, str] | None = None):
    """Their Table 5 and Fig. 6 as four panels: character accuracy and identity kept per frame at the longest
    length (95% bands), seconds per frame and the run's peak memory rise against the story length. Returns the
    figure."""
    import matplotlib.pyplot as plt

    labels = dict(labels or {})
    lengths = [int(L) for L in profile["lengths"]]
    longest = max(lengths)
    curves = profile["curves"].get(longest) or profile["curves"].get(str(longest)) or {}
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    for ax, c, title in ((axes[0], "char_acc", "character accuracy"), (axes[1], "identity_acc", "identity kept")):
        for m in profile["methods"]:
            d = curves.get(m, {}).get(c)
            if d:
                x = np.arange(1, len(d["value"]) + 1)
                line, = ax.plot(x, d["value"], label=labels.get(m, m))
                ax.fill_between(x, d["low"], d["high"], color=line.get_color(), alpha=0.2)
        ax.set(xlabel="frame", title=f"{title}, {longest}-frame stories", ylim=(0, 1.02))
    for ax, key, title in ((axes[2], "seconds_per_frame", "seconds per frame"),
                           (axes[3], "peak_mib", "peak memory rise (MiB)")):
        for m in profile["methods"]:
            ax.plot(lengths, profile[key][m], "-o", label=labels.get(m, m))
        ax.set(xlabel="frames per story", title=title, xticks=lengths)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_cost(train_log: Mapping[str, Any], models: Sequence[str] = ("char_ldm", "aligned_lm")) -> dict[str, Any]:
    """Training minutes of a generator's models from a train_log.json ({model: {"wall_s", "torch_threads"}}):
    {model: minutes, "total": minutes, "threads": {...}}; a missing record is None and leaves "total" None."""
    mins = {m: (train_log[m]["wall_s"] / 60 if m in train_log and "wall_s" in train_log[m] else None) for m in models}
    total = None if any(v is None for v in mins.values()) else sum(mins.values())
    return {**mins, "total": total, "threads": {m: train_log.get(m, {}).get("torch_threads") for m in models}}


__all__ = ["ACDC_ROWS", "CLAIMS", "LONG_LENGTHS", "LONG_METHODS", "STORYGPT_ROWS", "TABLE_ROWS", "VARIANTS",
           "build_generators", "check_generator_settings", "head_to_head", "head_to_head_lines", "long_stories",
           "long_story_profile", "measure", "plot_long_stories", "storygpt_claims", "training_cost",
           "window_difference"]
