"""Scoring the experiment's saved frames with any Evaluator: every metric with bootstrap intervals.

`summarise` reads the rows written by `run_experiment` and computes, per row, what the evaluator and
the ground truth allow: frame consistency and CLIPScore always; subject consistency when the evaluator
embeds subjects; FID, attribute accuracy / macro-F1 and the "reference" row when a ground truth gives
true frames and labels; physical validity when the evaluator reads it. The table says which ran.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from acdc_lib import metrics as M
from acdc_lib.experiment.rows import (ROWS, ExperimentConfig, _missing, _to_uint8, bad_frames, load_frames,
                                     stopped_stories, sweep_label)
from acdc_lib.io import atomic_write_json, atomic_write_text, nan_as_null
from acdc_lib.types import Evaluator, GroundTruth, Story


@dataclass
class ResultsTable:
    """Every metric per row with intervals, per-frame curves, per-story values and the row labels.

    Args:
        rows: {row: {metric: Interval}}; curves: {row: {curve: [Interval per frame (pair)]}};
        per_story: {row: {metric: [S values]}} of the per-story metrics (not FID / F1, set-level).
        per_frame: {row: {curve: S lists of N 0/1 values}} behind the accuracy and validity curves,
            for paired per-frame comparisons (`frame_gaps`).
        skipped: {metric or row: why it was not measured} (no ground truth, a reader the evaluator lacks).
        bad_frames: {row: {story_id: [frames that went wrong, as `acdc_lib.types.FrameFault.describe`
            says them]}}; a story one of them stopped is scored in no row (`n_stories` counts the others).
    """

    rows: dict[str, dict[str, M.Interval]]
    curves: dict[str, dict[str, list[M.Interval]]]
    labels: dict[str, str]
    n_stories: int
    n_frames: int
    config: dict[str, Any] = field(default_factory=dict)
    per_story: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    per_frame: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    bad_frames: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; a value undefined for a story or frame (NaN) becomes None."""
        return nan_as_null({"n_stories": self.n_stories, "n_frames": self.n_frames, "config": self.config,
                "labels": self.labels, "rows": {r: {m: asdict(v) for m, v in d.items()} for r, d in self.rows.items()},
                "per_story": self.per_story, "per_frame": self.per_frame, "skipped": self.skipped,
                "curves": {r: {c: [asdict(v) for v in vs] for c, vs in d.items()} for r, d in self.curves.items()},
                **({"bad_frames": self.bad_frames} if self.bad_frames else {})})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ResultsTable":
        """The table `to_dict` wrote (a run folder's <stem>.json), with null read back as NaN."""
        missing = [k for k in ("rows", "curves", "labels", "n_stories", "n_frames") if k not in d]
        if missing:
            raise ValueError(f"not a results table: keys {missing} are missing (it has {sorted(d)})")
        nan = lambda v: float("nan") if v is None else v  # noqa: E731
        iv = lambda v: M.Interval(*(float(nan(v[k])) for k in ("value", "low", "high")))  # noqa: E731
        return cls(rows={r: {m: iv(v) for m, v in ms.items()} for r, ms in d["rows"].items()},
                   curves={r: {c: [iv(v) for v in vs] for c, vs in cs.items()} for r, cs in d["curves"].items()},
                   labels=dict(d["labels"]), n_stories=int(d["n_stories"]), n_frames=int(d["n_frames"]),
                   config=dict(d.get("config") or {}),
                   per_story={r: {m: [nan(x) for x in xs] for m, xs in ms.items()}
                              for r, ms in (d.get("per_story") or {}).items()},
                   per_frame={r: {c: [[nan(x) for x in row] for row in rows] for c, rows in cs.items()}
                              for r, cs in (d.get("per_frame") or {}).items()},
                   skipped=dict(d.get("skipped") or {}), bad_frames=dict(d.get("bad_frames") or {}))

    @classmethod
    def read(cls, path: str | Path) -> "ResultsTable":
        """Read a table that `write` saved as <stem>.json."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results table {path} not found")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"results table {path} is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def to_markdown(self, digits: int = 3) -> str:
        cols = list(next(iter(self.rows.values())))
        lines = ["| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r, d in self.rows.items():
            cells = [f"{d[c].value:.{digits}f} [{d[c].low:.{digits}f}, {d[c].high:.{digits}f}]" for c in cols]
            lines.append(f"| {self.labels.get(r, r)} | " + " | ".join(cells) + " |")
        if self.skipped:
            lines += ["", "Not measured: " + "; ".join(f"{m} ({why})" for m, why in self.skipped.items()) + "."]
        if self.bad_frames:
            counts = [f"{self.labels.get(r, r)}: {len(d)} ({sum(any(x.endswith('stopped') for x in v) for v in d.values())}"
                      f" stopped)" for r, d in self.bad_frames.items() if d]
            lines += ["", "Stories with a frame that went wrong (NaN, Inf or constant): " + "; ".join(counts)
                      + f". Stopped stories are scored in no row; {self.n_stories} stories are scored."]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, stem: str = "results") -> None:
        """<stem>.json and <stem>.md in `out_dir`, written atomically (a notebook's own results.json
        is record_results', so notebook 03 passes another stem). The JSON is compact: its per-story and
        per-frame lists, one number per line when indented, made it 5x larger; the .md is the view."""
        atomic_write_json(Path(out_dir) / f"{stem}.json", self.to_dict(), indent=None)
        atomic_write_text(Path(out_dir) / f"{stem}.md", self.to_markdown())


def _per_frame(fn, frames: torch.Tensor):
    """Apply a per-image reader to (S, N, C, H, W) frames; its (S*N, ...) output comes back as (S, N, ...)
    (a dict of such outputs, key by key)."""
    S, N = frames.shape[:2]
    out = fn(frames.reshape(S * N, *frames.shape[2:]))
    if isinstance(out, Mapping):
        return {k: torch.as_tensor(v).cpu().reshape(S, N, *v.shape[1:]) for k, v in out.items()}
    out = torch.as_tensor(out).cpu()
    return out.reshape(S, N, *out.shape[1:])


def summarise(out_dir: str | Path, stories: Sequence[Story], evaluator: Evaluator,
              config: ExperimentConfig | None = None, texts: Sequence[Sequence[str]] | None = None,
              include_reference: bool = True, ground_truth: GroundTruth | None = None) -> ResultsTable:
    """Score every row's saved frames: metrics with bootstrap intervals over stories, per-frame curves.

    Ground-truth frames are quantised to uint8 like the saved rows, so the "reference" row (the
    evaluator on the true frames: its ceiling) has FID 0 against itself.

    Args:
        out_dir, stories, config: as given to `run_experiment`.
        evaluator: the scoring models (`acdc_lib.types.Evaluator`).
        texts: S lists of N texts for CLIPScore (default: the raw sentences, as the paper's CLIP-sim).
        include_reference: add the "reference" row (needs `ground_truth`).
        ground_truth: true frames and labels (`acdc_lib.types.GroundTruth`); None for stories without
            them (LLM-written stories, your own prompts): FID, the attribute columns and the reference
            row are then not measured, and `ResultsTable.skipped` says so.
    """
    config = config or ExperimentConfig()
    if not isinstance(evaluator, Evaluator):
        raise ValueError(f"evaluator must implement acdc_lib.types.Evaluator, got {type(evaluator).__name__}")
    if ground_truth is not None and not isinstance(ground_truth, GroundTruth):
        raise ValueError(f"ground_truth must implement acdc_lib.types.GroundTruth or be None, got "
                         f"{type(ground_truth).__name__}")
    S, N = len(stories), len(stories[0])
    texts = texts or [list(s.sentences) for s in stories]
    for r in config.rows:  # fail before any scoring if a row is incomplete
        _missing(out_dir, r, stories)
    # A story that a frame gone wrong stopped holds fewer than N frames: it is scored in no row (so rows stay
    # paired), and the table lists every bad frame of every row.
    faults = {r: {sid: [f"frame {f.get('frame', -1) + 1} ({f.get('stage')}): {f.get('reason')}; {f.get('action')}"
                        for f in fs] for sid, fs in bad_frames(out_dir, r, stories).items()} for r in config.rows}
    faults = {r: d for r, d in faults.items() if d}
    out_of = {sid for r in config.rows for sid in stopped_stories(out_dir, r, stories)}
    if out_of:
        if len(out_of) == S:
            raise ValueError(f"every one of the {S} stories was stopped by a frame that went wrong in some row "
                             f"({faults}); nothing is left to score")
        keep = [k for k, s in enumerate(stories) if s.story_id not in out_of]
        stories, texts, S = [stories[k] for k in keep], [texts[k] for k in keep], len(keep)
    skipped: dict[str, str] = {}
    subject = getattr(evaluator, "embed_subject", None)
    validity = getattr(evaluator, "physically_valid", None)
    if subject is None:
        skipped["subject_consistency"] = f"the {evaluator.name} evaluator embeds no subjects"
    ref = truth = real_feats = None
    if ground_truth is None:
        why = "no ground truth for these stories"
        skipped.update({"fid": why, **{f"{c}_acc": why for c in evaluator.attributes},
                        **{f"{c}_f1": why for c in evaluator.attributes}})
        if include_reference:
            skipped["reference"] = why
    else:
        ref = torch.stack([ground_truth.reference_images(s).cpu() for s in stories])   # (S, N, C, H, W)
        ref = torch.from_numpy(_to_uint8(ref)).float() / 255.0
        truth = {c: torch.stack([torch.as_tensor(ground_truth.true_attributes(s)[c]) for s in stories]).long()
                 for c in evaluator.attributes}                                  # {column: (S, N)}
        real_feats = M.embed_frames(ref, evaluator.fid_features)                # (S, N, F)
    if not evaluator.attributes:
        skipped["attribute_accuracy"] = f"the {evaluator.name} evaluator reads no attributes"
    if validity is None:
        skipped["physical_validity"] = f"the {evaluator.name} evaluator reads no physical validity"
    carried = getattr(evaluator, "carried_scores", None)
    if carried is None:
        skipped["identity_acc"] = f"the {evaluator.name} evaluator reads no frame-carried identity or position"
    elif ground_truth is None:
        skipped["identity_acc"] = "no ground truth for these stories"
        carried = None
    row_names = (["reference"] if include_reference and ref is not None else []) + list(config.rows)
    ci = dict(confidence=config.confidence, seed=config.base_seed)
    rows, curves, per_story, per_frame = {}, {}, {}, {}
    for row in row_names:  # one row's frames in memory at a time
        frames = ref if row == "reference" else load_frames(out_dir, row, stories)
        cons = M.frame_consistency(M.embed_frames(frames, evaluator.embed_images))
        values = {"frame_consistency": cons.per_story}
        if subject is not None:  # VBench's subject consistency: the same measure on subject features
            values["subject_consistency"] = M.frame_consistency(M.embed_frames(frames, subject)).per_story
        values["clip_score"] = M.clip_score(frames, texts, evaluator.clip_model_fn)
        res = {m: M.bootstrap_ci(v, n_resamples=config.n_bootstrap, **ci) for m, v in values.items()}
        if real_feats is not None:
            res["fid"] = M.fid_with_ci(real_feats, M.embed_frames(frames, evaluator.fid_features),
                                       n_resamples=config.n_bootstrap_set, **ci)
        curve = {"consistency": [M.bootstrap_ci(cons.per_pair[:, j], n_resamples=config.n_bootstrap, **ci)
                                 for j in range(N - 1)]}
        frame_values = {}
        if truth is not None and evaluator.attributes:
            preds = _predictions(evaluator, frames)
            for col, k in evaluator.attributes.items():
                sc = M.attribute_scores(preds[col], truth[col], k)
                values[f"{col}_acc"] = sc.per_story
                res[f"{col}_acc"] = M.bootstrap_ci(sc.per_story, n_resamples=config.n_bootstrap, **ci)
                res[f"{col}_f1"] = M.set_statistic_ci(
                    S, lambda i, c=col, k=k: M.macro_f1(preds[c][i], truth[c][i], k),
                    n_resamples=config.n_bootstrap_set, **ci)
                curve[f"{col}_acc"] = [M.bootstrap_ci(sc.correct[:, j].double(), n_resamples=config.n_bootstrap,
                                                      **ci) for j in range(N)]
                frame_values[f"{col}_acc"] = sc.correct.double()
        if validity is not None:
            valid = _per_frame(validity, frames).double()                           # (S, N)
            values["physical_validity"] = valid.mean(1)
            res["physical_validity"] = M.bootstrap_ci(valid.mean(1), n_resamples=config.n_bootstrap, **ci)
            curve["physical_validity"] = [M.bootstrap_ci(valid[:, j], n_resamples=config.n_bootstrap, **ci)
                                          for j in range(N)]
            frame_values["physical_validity"] = valid
        if carried is not None:  # what only frames carry, against the row's own frame 1 (NaN: undefined)
            scores = [carried(frames[k], stories[k]) for k in range(S)]
            for name in scores[0]:
                m = torch.stack([torch.as_tensor(sc[name]) for sc in scores]).double()   # (S, N), frame 1 NaN
                per = _nanmean_rows(m[:, 1:])
                values[name] = per
                res[name] = _finite_ci(per, n_resamples=config.n_bootstrap, **ci)
                # frame 1 is where the row fixed them: agreement 1, movement 0, by definition
                first = 1.0 if name.endswith("_acc") else 0.0
                curve[name] = [M.Interval(first, first, first)] + [
                    _finite_ci(m[:, j], n_resamples=config.n_bootstrap, **ci) for j in range(1, N)]
        rows[row], curves[row] = res, curve
        per_story[row] = {m: torch.as_tensor(v).double().tolist() for m, v in values.items()}
        per_frame[row] = {c: v.long().tolist() for c, v in frame_values.items()}  # 0/1 per story and frame
    labels = {"reference": getattr(ground_truth, "label", "Ground truth"), **{r: ROWS[r].label for r in config.rows}}
    # what FID was computed on: a reader of the table needs the feature size to tell a rank-deficient FID
    fid_on = {} if real_feats is None else {"fid_features": {"evaluator": evaluator.name,
                                                         "dim": int(real_feats.shape[-1])}}
    return ResultsTable(rows, curves, labels, S, N, {**asdict(config), **fid_on}, per_story, per_frame, skipped,
                        faults)


def _nanmean_rows(m: torch.Tensor) -> torch.Tensor:
    """(S,) mean of each row's finite values; NaN for a row with none."""
    ok = torch.isfinite(m)
    return torch.where(ok.any(1), torch.where(ok, m, 0.0).sum(1) / ok.sum(1).clamp_min(1), torch.nan)


def _finite_ci(values: torch.Tensor, **kw) -> M.Interval:
    """bootstrap_ci over the finite values only (stories where the metric is defined); NaN when none are."""
    x = torch.as_tensor(values).double()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return M.Interval(float("nan"), float("nan"), float("nan"))
    if x.numel() == 1:
        return M.Interval(float(x[0]), float(x[0]), float(x[0]))
    return M.bootstrap_ci(x.numpy(), **kw)


def _predictions(evaluator: Evaluator, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """{column: (S, N) long} of every attribute the evaluator reads, from one call on all frames."""
    S, N = frames.shape[:2]
    out = evaluator.predict_attributes(frames.reshape(S * N, *frames.shape[2:]))
    missing = [c for c in evaluator.attributes if c not in out]
    if missing:
        raise ValueError(f"{type(evaluator).__name__}.predict_attributes returned no {missing}; its attributes "
                         f"are {list(evaluator.attributes)}")
    return {c: torch.as_tensor(out[c]).long().cpu().reshape(S, N) for c in evaluator.attributes}


def paired_difference(table: ResultsTable, old_row: str, new_row: str, metric: str, n_resamples: int = 2000,
                      seed: int = 0, confidence: float = 0.95) -> M.Interval:
    """Mean per-story change new_row - old_row of a per-story metric, with a bootstrap interval.

    The rows share stories and seeds (the ARM rows even their draws), so the paired interval is
    the one to read for "what correction does"; it is narrower than the two rows' own intervals.
    """
    missing = [r for r in (old_row, new_row) if metric not in table.per_story.get(r, {})]
    if missing:
        raise ValueError(f"no per-story {metric!r} for rows {missing}; per-story metrics: "
                         f"{sorted(next(iter(table.per_story.values()), {}))}")
    d = np.asarray(table.per_story[new_row][metric], dtype=float) - np.asarray(table.per_story[old_row][metric],
                                                                               dtype=float)
    d = d[np.isfinite(d)]  # a metric that is undefined for a story (NaN) leaves that story out of both rows
    if d.size < 2:
        return M.Interval(float(d.mean()) if d.size else float("nan"), float("nan"), float("nan"))
    return M.bootstrap_ci(d, n_resamples=n_resamples, seed=seed, confidence=confidence)



def frame_trend(table: ResultsTable, curve: str = "char_acc", rows: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """First vs last frame of a per-frame curve, per row: does the value fall along the story?

    `falls` is True when the last frame's 95% interval lies wholly below the first frame's.
    """
    out = []
    for r in rows or table.curves:
        pts = table.curves[r].get(curve)
        if pts is None:
            raise ValueError(f"curve {curve!r} not in row {r!r}; available: {sorted(table.curves[r])}")
        first, last = pts[0], pts[-1]
        out.append({"row": r, "label": table.labels.get(r, r), "curve": curve, "first": first.value,
                    "last": last.value, "change": last.value - first.value, "falls": last.high < first.low})
    return out


def _frame_values(table: ResultsTable, row: str, curve: str) -> np.ndarray:
    got = table.per_frame.get(row, {})
    if curve not in got:
        raise ValueError(f"no per-frame {curve!r} for row {row!r}; rows with per-frame values: {sorted(table.per_frame)}, "
                         f"curves: {sorted(got)}")
    return np.asarray(got[curve], dtype=float)                                   # (S, N)


def frame_gaps(table: ResultsTable, old_row: str, new_row: str, curve: str = "char_acc", n_resamples: int = 2000,
               seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Paired per-story change new_row - old_row of a per-frame curve, frame by frame and over the later frames.

    Returns {"per_frame": [Interval per frame], "later": Interval of the per-story mean change over
    frames 2..N}. With old_row="arm", new_row="arm_true_ctx" the change at frame i is what the ARM lost
    by continuing from its own frames instead of the true ones: the error it inherited.
    """
    return paired_frame_gaps(_frame_values(table, old_row, curve), _frame_values(table, new_row, curve),
                             n_resamples=n_resamples, seed=seed, confidence=confidence)


def paired_frame_gaps(old: Any, new: Any, n_resamples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """`frame_gaps` on (S, N) arrays of per-story, per-frame values of the same stories (N >= 2)."""
    old, new = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    if old.shape != new.shape or old.ndim != 2 or old.shape[1] < 2:
        raise ValueError(f"old and new must be (stories, frames >= 2) arrays of one shape, got {old.shape}, {new.shape}")
    d = new - old                                                                 # (S, N)
    kw = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    return {"per_frame": [M.bootstrap_ci(d[:, j], **kw) for j in range(d.shape[1])],
            "later": M.bootstrap_ci(d[:, 1:].mean(1), **kw)}


# (old row, new row, what the change measures) for `frame_gaps_markdown`

def summarise_sweep(dirs: Mapping[float, str | Path], stories: Sequence[Story], evaluator: Evaluator,
                    config: ExperimentConfig, base_dir: str | Path | None = None,
                    base_rows: Sequence[str] = ("dm_only", "arm"),
                    ground_truth: GroundTruth | None = None) -> ResultsTable:
    """One table over a t' sweep: `base_rows` of the main run (same stories, with the reference) then ACDC per t'.

    Args:
        dirs: `strength_sweep`'s {t': folder}.
        base_dir: the main run's folder holding `base_rows` for these stories (None: no base rows).
        ground_truth: as in `summarise`.
    """
    parts = []
    if base_dir is not None:
        parts.append(summarise(base_dir, stories, evaluator,
                               ExperimentConfig(**{**asdict(config), "rows": tuple(base_rows)}),
                               ground_truth=ground_truth))
    for s, d in dirs.items():
        t = summarise(d, stories, evaluator, ExperimentConfig(**{**asdict(config), "rows": ("acdc_rules",),
                                                                  "strength": float(s)}), include_reference=False,
                      ground_truth=ground_truth)
        name = sweep_label(s)
        t.rows, t.curves, t.per_story, t.per_frame = ({name: x["acdc_rules"]}
                                                      for x in (t.rows, t.curves, t.per_story, t.per_frame))
        t.bad_frames = {name: t.bad_frames["acdc_rules"]} if t.bad_frames else {}
        t.labels = {name: f"ARM + ACDC, rule memory, t'={s:g}, N={config.num_inference_steps}"}
        parts.append(t)
    merged = {k: {} for k in ("rows", "curves", "per_story", "labels", "per_frame", "skipped", "bad_frames")}
    for t in parts:
        for k in merged:
            merged[k].update(getattr(t, k))
    return ResultsTable(merged["rows"], merged["curves"], merged["labels"], len(stories), len(stories[0]),
                        {**asdict(config), "strengths": [float(s) for s in dirs]}, merged["per_story"],
                        merged["per_frame"], merged["skipped"], merged["bad_frames"])


