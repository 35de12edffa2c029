"""The story experiment of issue 7 (the paper's Sec. 4.1 / Table 1 on the toy world), model-agnostic.

Five rows over the same stories and per-story seeds (so the ARM rows share their random draws):

    dm_only      each frame generated from its raw sentence alone by the DM (the paper's SD v1.5 row)
    arm          the ARM alone (Eq. 1, no correction)
    acdc_rules   ARM + ACDC on every frame, corrector prompts from the rule-based memory (Eq. 2-3)
    acdc_nomem   ARM + ACDC on every frame, corrector prompts = the raw sentences
    arm_true_ctx the ARM with the ground-truth earlier frames as its context (an oracle only a world
                 with ground-truth frames has): frame i's error here is the ARM's own, so the
                 per-frame gap to `arm` is the error it inherited from its earlier frames

`run_experiment` writes every finished story at once to <out_dir>/<row>/<story_id>.npz (uint8 frames)
and .json (seed, prompts, memory source); a rerun skips what is there, so a killed run resumes.
`summarise` reads those files back and computes every metric of `acdc_lib.metrics` with bootstrap
intervals over stories, plus per-frame curves; `compare_with_paper` sets the changes we measure
beside the paper's Tables 1 and 2.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from acdc_lib import metrics as M
from acdc_lib.io import atomic_write_json, atomic_write_text
from acdc_lib.loop import run_stories, story_generators
from acdc_lib.types import LoopConfig, Story


# --------------------------------------------------------------------------------------------
# Rows and configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """One row of the table: how its frames are made (kind "dm", "loop" or "true_context") and its label."""

    label: str
    kind: str
    correct_frames: str = "none"
    use_memory: bool = False

    def needs(self) -> list[str]:
        """The components `run_experiment` must be given for this row."""
        return ((["arm"] if self.kind in ("loop", "true_context") else []) + (["corrector"] if self.kind == "dm" or
                self.correct_frames != "none" else []) + (["memory"] if self.use_memory else [])
                + (["reference"] if self.kind == "true_context" else []))


ROWS: dict[str, RowSpec] = {
    "dm_only": RowSpec("DM only (raw sentence per frame)", "dm"),
    "arm": RowSpec("ARM alone", "loop"),
    "acdc_rules": RowSpec("ARM + ACDC, rule memory", "loop", "all", True),
    "acdc_nomem": RowSpec("ARM + ACDC, no memory", "loop", "all", False),
    "arm_true_ctx": RowSpec("ARM, true earlier frames (oracle)", "true_context"),
}
GENERATION_FIELDS = ("strength", "guidance_scale", "num_inference_steps", "base_seed", "image_size")


@dataclass
class ExperimentConfig:
    """Settings of the story experiment. Correction defaults are the paper's (DDIM, CFG 7.5, t' = 0.5).

    Args:
        rows: names from ROWS, in table order.
        strength, guidance_scale, num_inference_steps: SDEdit's t', CFG scale, N (dm_only runs all N steps).
        batch_size: stories per batched call (results do not depend on it: one generator pair per story).
        base_seed: story k's seed is `story_seed(base_seed, k)` (k = its index in the story list).
        image_size: side of dm_only frames (None: the corrector's default).
        n_bootstrap: resamples for per-story means; n_bootstrap_set: for FID / F1 (recomputed per resample).
        confidence: level of every interval.
    """

    rows: tuple[str, ...] = tuple(ROWS)
    strength: float = 0.5
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    batch_size: int = 16
    base_seed: int = 0
    image_size: int | None = None
    n_bootstrap: int = 2000
    n_bootstrap_set: int = 200
    confidence: float = 0.95

    def __post_init__(self):
        bad = [r for r in self.rows if r not in ROWS]
        if bad or not self.rows:
            raise ValueError(f"unknown rows {bad or self.rows!r}; allowed: {list(ROWS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        self.rows = tuple(self.rows)


def story_seed(base_seed: int, index: int) -> int:
    """Seed of story `index` under `base_seed`: numpy SeedSequence([base_seed, index]), one 32-bit word."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Per-story files (atomic) and resume
# --------------------------------------------------------------------------------------------
def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.detach().cpu().float() * 255.0).round().to(torch.uint8).numpy()  # frames in [0, 1], checked


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _done(row_dir: Path, story: Story, seed: int) -> bool:
    """Whether the story's files exist (the .json is written last); refuses files of another run."""
    rec_path = row_dir / f"{story.story_id}.json"
    if not rec_path.exists() or not (row_dir / f"{story.story_id}.npz").exists():
        return False
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    if rec["seed"] != seed or rec["sentences"] != list(story.sentences):
        raise ValueError(f"{rec_path} was written for seed {rec['seed']} and sentences {rec['sentences'][:1]}..., "
                         f"but story {story.story_id!r} here has seed {seed} and {story.sentences[:1]}...; "
                         f"use a fresh out_dir or the same story list in the same order")
    return True


def _missing(out_dir: str | Path, row: str, stories: Sequence[Story]) -> Path:
    row_dir = Path(out_dir) / row
    missing = [s.story_id for s in stories if not (row_dir / f"{s.story_id}.json").exists()]
    if missing:
        raise ValueError(f"row {row!r} lacks {len(missing)} of {len(stories)} stories (first: {missing[:3]}); "
                         f"run run_experiment first")
    return row_dir


def load_frames(out_dir: str | Path, row: str, stories: Sequence[Story]) -> torch.Tensor:
    """(S, N, C, H, W) float frames in [0, 1] of `row` as written by `run_experiment`."""
    row_dir = _missing(out_dir, row, stories)
    arrays = [np.load(row_dir / f"{s.story_id}.npz")["frames"] for s in stories]
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def _check_config(out_dir: Path, config: ExperimentConfig) -> None:
    path, mine = out_dir / "config.json", {k: getattr(config, k) for k in GENERATION_FIELDS}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{path} was written with other settings {diff} (stored, now); use a fresh out_dir")
    else:
        atomic_write_json(path, mine)


# --------------------------------------------------------------------------------------------
# Running the rows
# --------------------------------------------------------------------------------------------
def _dm_only(stories: Sequence[Story], corrector, seeds: Sequence[int], config: ExperimentConfig,
             device) -> torch.Tensor:
    """(B, N, C, H, W): frame i of story b from sentence i alone, noise from story b's corrector stream."""
    if not callable(getattr(corrector, "generate", None)):
        raise ValueError(f"row 'dm_only' needs a corrector with generate(prompts, height, width, ...); "
                         f"{type(corrector).__name__} has none")
    gens = [story_generators(s, device)[1] for s in seeds]
    frames = []
    for i in range(len(stories[0])):
        images = corrector.generate([s.sentences[i] for s in stories], config.image_size, config.image_size,
                                    guidance_scale=config.guidance_scale,
                                    num_inference_steps=config.num_inference_steps, generators=gens)
        if images.ndim != 4 or images.shape[0] != len(stories) or not (0 <= images.min() and images.max() <= 1):
            raise ValueError(f"corrector.generate returned {tuple(images.shape)}; expected ({len(stories)}, C, H, W) "
                             f"in [0, 1]")
        frames.append(images.detach().cpu())
    return torch.stack(frames, 1)


def arm_true_context(stories: Sequence[Story], arm, reference: Callable[[Story], torch.Tensor],
                      seeds: Sequence[int], device) -> torch.Tensor:
    """(B, N, C, H, W): frame i of story b sampled by the ARM from u^{1:i} and E(true frames 1..i-1).

    Each story draws from its ARM generator (`story_generators(seed)[0]`), as in the `arm` row, and
    every frame draws the same number of codes, so frame 1 equals the `arm` row's frame 1 and later
    frames differ from it only through the context: the paired per-frame gap is the inherited error.
    """
    ref = torch.stack([reference(s).to(device) for s in stories])                 # (B, N, C, H, W)
    B, N = ref.shape[:2]
    context = torch.stack([arm.encode(ref[:, i]) for i in range(N)], 1)          # (B, N, n) true v^1..v^N
    gens = [story_generators(s, device)[0] for s in seeds]
    frames = []
    for i in range(N):
        tokens = arm.generate([s.sentences[: i + 1] for s in stories], context[:, :i], gens)
        frames.append(arm.decode(tokens).detach().cpu())
    return torch.stack(frames, 1)


def run_experiment(stories: Sequence[Story], out_dir: str | Path, *, arm=None, corrector=None, memory=None,
                   reference: Callable[[Story], torch.Tensor] | None = None,
                   config: ExperimentConfig | None = None, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict[str, list[str]]:
    """Generate every row's frames for `stories`, batched, writing each story's files as its batch ends.

    Stories whose files exist are skipped (resume); files from another story list or other settings
    are refused. Args:
        stories: S stories of equal length N.
        out_dir: results folder; <out_dir>/<row>/<story_id>.{npz,json} and <out_dir>/config.json.
        arm: ARM protocol (rows arm, acdc_*); corrector: Corrector (acdc_*), with generate() for dm_only.
        memory: the memory of acdc_rules (e.g. RuleMemory()).
        reference: story -> (N, C, H, W) ground-truth frames in [0, 1] (row arm_true_ctx), e.g.
            `Evaluator.reference_images`.
    Returns:
        {row: story ids computed by this call}.
    """
    config = config or ExperimentConfig()
    given = {"arm": arm, "corrector": corrector, "memory": memory, "reference": reference}
    for row in config.rows:  # e.g. acdc_rules without a memory would silently equal acdc_nomem
        missing = [k for k in ROWS[row].needs() if given[k] is None]
        if missing:
            raise ValueError(f"row {row!r} needs {missing}; pass them or leave the row out of config.rows")
    seeds = {s.story_id: story_seed(config.base_seed, k) for k, s in enumerate(stories)}
    if len(seeds) != len(stories) or len({len(s) for s in stories}) != 1:
        raise ValueError(f"stories need unique ids and one length; got {len(stories)} stories, {len(seeds)} ids, "
                         f"lengths {sorted({len(s) for s in stories})}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    computed: dict[str, list[str]] = {}
    for row in config.rows:
        spec, row_dir = ROWS[row], out_dir / row
        row_dir.mkdir(exist_ok=True)
        todo = [s for s in stories if not _done(row_dir, s, seeds[s.story_id])]
        computed[row] = []
        with tqdm(total=len(todo), desc=row, unit="story", disable=not progress) as bar:
            for b0 in range(0, len(todo), config.batch_size):
                batch = todo[b0:b0 + config.batch_size]
                bseeds = [seeds[s.story_id] for s in batch]
                if spec.kind == "dm":
                    frames, prompts, sources = _dm_only(batch, corrector, bseeds, config, device), None, None
                elif spec.kind == "true_context":
                    frames, prompts, sources = arm_true_context(batch, arm, reference, bseeds, device), None, None
                else:
                    loop_cfg = LoopConfig(correct_frames=spec.correct_frames, strength=config.strength,
                                          guidance_scale=config.guidance_scale,
                                          num_inference_steps=config.num_inference_steps, use_memory=spec.use_memory)
                    out = run_stories(batch, arm, corrector, memory if spec.use_memory else None, loop_cfg,
                                      seeds=bseeds, device=device)
                    frames = torch.stack([r.final_images() for r in out.stories])
                    prompts = [[f.prompt for f in r.frames] for r in out.stories]
                    sources = [r.memory.source if r.memory else None for r in out.stories]
                for k, s in enumerate(batch):  # frames first, the .json last: it marks the story done
                    _atomic_npz(row_dir / f"{s.story_id}.npz", frames=_to_uint8(frames[k]))
                    atomic_write_json(row_dir / f"{s.story_id}.json", {
                        "story_id": s.story_id, "row": row, "seed": bseeds[k], "sentences": list(s.sentences),
                        "prompts": prompts[k] if prompts else None, "memory_source": sources[k] if sources else None})
                    computed[row].append(s.story_id)
                bar.update(len(batch))
    return computed


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
ATTRIBUTES = {"char": "species", "bg": "place", "time": "time", "action": "action"}  # column -> probe head


@dataclass
class Evaluator:
    """The models and ground truth `summarise` scores with.

    Args:
        embed_images: (B, C, H, W) in [0, 1] -> (B, D) image embeddings (frame consistency).
        predict_attributes: (B, C, H, W) -> {head: (B,) long} (ATTRIBUTES' heads, and counts for validity).
        clip_model_fn: CLIPScore's `model_name_or_path` callable (metrics.clipscore_from_clip_model).
        fid_features: FID's feature module (B, C, H, W) -> (B, F) with int `num_features`.
        num_classes: {head: classes} of the attributes to score.
        reference_images: story -> (N, C, H, W) ground-truth frames (FID's real set).
        true_attributes: story -> {head: (N,) long} ground-truth labels.
    """

    embed_images: Callable[[torch.Tensor], torch.Tensor]
    predict_attributes: Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
    clip_model_fn: Callable[[], tuple]
    fid_features: nn.Module
    num_classes: Mapping[str, int]
    reference_images: Callable[[Story], torch.Tensor]
    true_attributes: Callable[[Story], Mapping[str, torch.Tensor]]


def toy_evaluator(toy) -> Evaluator:
    """The bundle for the toy world's ToyEvaluator (CLIP + probe) and renderer ground truth."""
    from acdc_lib.toyworld.models import IMAGE_SIZE, PROBE_HEADS, state_labels
    from acdc_lib.toyworld.render import render_states

    return Evaluator(
        embed_images=toy.image_features, predict_attributes=toy.predict,
        clip_model_fn=M.clipscore_from_clip_model(toy.clip, toy.tokenizer, IMAGE_SIZE, (0.5,) * 3, (0.5,) * 3,
                                                  {"padding": "max_length"}),  # as ToyEvaluator: x * 2 - 1
        fid_features=M.FeatureModule(toy.image_features, toy.num_features),
        num_classes={h: PROBE_HEADS[h] for h in ATTRIBUTES.values()},
        reference_images=lambda s: render_states(s.states).images,
        true_attributes=lambda s: state_labels(s.states))


@dataclass
class ResultsTable:
    """Every metric per row with intervals, per-frame curves, per-story values and the row labels.

    Args:
        rows: {row: {metric: Interval}}; curves: {row: {curve: [Interval per frame (pair)]}};
        per_story: {row: {metric: [S values]}} of the per-story metrics (not FID / F1, set-level).
        per_frame: {row: {curve: S lists of N 0/1 values}} behind the accuracy and validity curves,
            for paired per-frame comparisons (`frame_gaps`).
    """

    rows: dict[str, dict[str, M.Interval]]
    curves: dict[str, dict[str, list[M.Interval]]]
    labels: dict[str, str]
    n_stories: int
    n_frames: int
    config: dict[str, Any] = field(default_factory=dict)
    per_story: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    per_frame: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"n_stories": self.n_stories, "n_frames": self.n_frames, "config": self.config,
                "labels": self.labels, "rows": {r: {m: asdict(v) for m, v in d.items()} for r, d in self.rows.items()},
                "per_story": self.per_story, "per_frame": self.per_frame,
                "curves": {r: {c: [asdict(v) for v in vs] for c, vs in d.items()} for r, d in self.curves.items()}}

    def to_markdown(self, digits: int = 3) -> str:
        cols = list(next(iter(self.rows.values())))
        lines = ["| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r, d in self.rows.items():
            cells = [f"{d[c].value:.{digits}f} [{d[c].low:.{digits}f}, {d[c].high:.{digits}f}]" for c in cols]
            lines.append(f"| {self.labels.get(r, r)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, stem: str = "results") -> None:
        """<stem>.json and <stem>.md in `out_dir`, written atomically (a notebook's own results.json
        is record_results', so notebook 03 passes another stem). The JSON is compact: its per-story and
        per-frame lists, one number per line when indented, made it 5x larger; the .md is the view."""
        atomic_write_json(Path(out_dir) / f"{stem}.json", self.to_dict(), indent=None)
        atomic_write_text(Path(out_dir) / f"{stem}.md", self.to_markdown())


def _predict(evaluator: Evaluator, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    S, N = frames.shape[:2]
    out = evaluator.predict_attributes(frames.reshape(S * N, *frames.shape[2:]))
    return {k: torch.as_tensor(v).long().cpu().reshape(S, N) for k, v in out.items()}


def summarise(out_dir: str | Path, stories: Sequence[Story], evaluator: Evaluator,
              config: ExperimentConfig | None = None, texts: Sequence[Sequence[str]] | None = None,
              include_reference: bool = True) -> ResultsTable:
    """Score every row's saved frames: metrics with bootstrap intervals over stories, per-frame curves.

    Ground-truth frames are quantised to uint8 like the saved rows, so the "reference" row (the
    evaluator on the true renders: its ceiling) has FID 0 against itself.

    Args:
        texts: S lists of N texts for CLIPScore (default: the raw sentences, as the paper's CLIP-sim).
    """
    config = config or ExperimentConfig()
    S, N = len(stories), len(stories[0])
    texts = texts or [list(s.sentences) for s in stories]
    ref = torch.stack([evaluator.reference_images(s).cpu() for s in stories])   # (S, N, C, H, W)
    ref = torch.from_numpy(_to_uint8(ref)).float() / 255.0
    truth = {h: torch.stack([torch.as_tensor(evaluator.true_attributes(s)[h]) for s in stories]).long()
             for h in evaluator.num_classes}                                     # {head: (S, N)}
    real_feats = M.embed_frames(ref, evaluator.fid_features)                    # (S, N, F)
    for r in config.rows:  # fail before any scoring if a row is incomplete
        _missing(out_dir, r, stories)
    row_names = (["reference"] if include_reference else []) + list(config.rows)
    ci = dict(confidence=config.confidence, seed=config.base_seed)
    rows, curves, per_story, per_frame = {}, {}, {}, {}
    for row in row_names:  # one row's frames in memory at a time
        frames = ref if row == "reference" else load_frames(out_dir, row, stories)
        cons = M.frame_consistency(M.embed_frames(frames, evaluator.embed_images))
        preds = _predict(evaluator, frames)
        values = {"frame_consistency": cons.per_story, "clip_score": M.clip_score(frames, texts, evaluator.clip_model_fn)}
        res = {m: M.bootstrap_ci(v, n_resamples=config.n_bootstrap, **ci) for m, v in values.items()}
        res["fid"] = M.fid_with_ci(real_feats, M.embed_frames(frames, evaluator.fid_features),
                                   n_resamples=config.n_bootstrap_set, **ci)
        curve = {"consistency": [M.bootstrap_ci(cons.per_pair[:, j], n_resamples=config.n_bootstrap, **ci)
                                 for j in range(N - 1)]}
        frame_values = {}
        for col, head in ATTRIBUTES.items():
            if head not in evaluator.num_classes:
                continue
            k = evaluator.num_classes[head]
            sc = M.attribute_scores(preds[head], truth[head], k)
            values[f"{col}_acc"] = sc.per_story
            res[f"{col}_acc"] = M.bootstrap_ci(sc.per_story, n_resamples=config.n_bootstrap, **ci)
            res[f"{col}_f1"] = M.set_statistic_ci(
                S, lambda i, h=head, k=k: M.macro_f1(preds[h][i], truth[h][i], k),
                n_resamples=config.n_bootstrap_set, **ci)
            curve[f"{col}_acc"] = [M.bootstrap_ci(sc.correct[:, j].double(), n_resamples=config.n_bootstrap, **ci)
                                   for j in range(N)]
            frame_values[f"{col}_acc"] = sc.correct.double()
        if all(h in preds for h in M.COUNT_HEADS):
            valid = M.physically_valid(preds).double()                            # (S, N)
            values["physical_validity"] = valid.mean(1)
            res["physical_validity"] = M.bootstrap_ci(valid.mean(1), n_resamples=config.n_bootstrap, **ci)
            curve["physical_validity"] = [M.bootstrap_ci(valid[:, j], n_resamples=config.n_bootstrap, **ci)
                                          for j in range(N)]
            frame_values["physical_validity"] = valid
        rows[row], curves[row] = res, curve
        per_story[row] = {m: torch.as_tensor(v).double().tolist() for m, v in values.items()}
        per_frame[row] = {c: v.long().tolist() for c, v in frame_values.items()}  # 0/1 per story and frame
    labels = {"reference": "Ground-truth renders", **{r: ROWS[r].label for r in config.rows}}
    return ResultsTable(rows, curves, labels, S, N, asdict(config), per_story, per_frame)


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
    d = np.asarray(table.per_story[new_row][metric]) - np.asarray(table.per_story[old_row][metric])
    return M.bootstrap_ci(d, n_resamples=n_resamples, seed=seed, confidence=confidence)


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
}


def _change(old: float, new: float, sign: int) -> dict[str, Any]:
    rel = (new - old) / abs(old) * 100.0 if old != 0 else None  # None: no relative size from 0
    return {"old": old, "new": new, "rel_change_pct": rel, "direction": "+" if new > old else "-" if new < old else "0",
            "better": (new - old) * sign > 0}


def compare_with_paper(ours: ResultsTable, paper: Mapping | None = None) -> list[dict[str, Any]]:
    """Direction and relative size ((new - old) / |old|) of each change, ours beside the paper's.

    All changes use the old value as denominator; the paper's printed FID percentages divide by the
    ACDC value instead (7.34% = 4.14 / 56.36), so ours are recomputed from its numbers.

    Args:
        ours: `summarise`'s table; comparisons whose rows it lacks are left out.
        paper: {"Table 1": PAPER_TABLE1, "Table 2": PAPER_TABLE2} by default.
    Returns:
        one dict per (comparison, metric, paper source): paper_*, ours_* and same_direction.
    """
    paper = paper or {"Table 1": PAPER_TABLE1, "Table 2": PAPER_TABLE2}
    out = []
    for comp, (r_old, r_new, sources) in COMPARISONS.items():
        if r_old not in ours.rows or r_new not in ours.rows:
            continue
        for metric, (col1, col2, sign) in METRIC_MAP.items():
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

    Every per-story metric here is higher-is-better (consistency, CLIPScore, accuracies, validity),
    so a positive change is an improvement. Comparisons whose rows the table lacks are left out.

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
                        "old_value": float(np.mean(table.per_story[old][m])),
                        "new_value": float(np.mean(table.per_story[new][m])),
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


def reproduction_verdicts(comparison: Sequence[Mapping[str, Any]], table: ResultsTable) -> list[dict[str, Any]]:
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
        r0, (old, new, _) = rs[0], COMPARISONS[comp]
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
FRAME_GAPS = (("arm", "arm_true_ctx", "inherited by the ARM (true minus own earlier frames)"),
              ("arm", "acdc_rules", "ACDC (rule memory) minus ARM alone"),
              ("arm_true_ctx", "acdc_rules", "ACDC (rule memory) minus the oracle-context ARM"))


def frame_gaps_markdown(table: ResultsTable, curves: Sequence[str] = ("char_acc", "bg_acc", "time_acc", "action_acc"),
                        pairs: Sequence[tuple[str, str, str]] = FRAME_GAPS, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """A markdown table of `frame_gaps` for each (pair, curve) the table has, and the same as records."""
    n = table.n_frames
    lines = ["| change | curve | " + " | ".join(f"frame {i + 1}" for i in range(n)) + f" | frame {n} [95% CI] "
             f"| frames 2-{n} mean [95% CI] |", "|---" * (n + 4) + "|"]
    records = []
    for old, new, what in pairs:
        if old not in table.per_frame or new not in table.per_frame:
            continue
        for c in curves:
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


def plot_example_frames(out_dir: str | Path, story: Story, rows: Sequence[str],
                        reference: Callable[[Story], torch.Tensor] | None = None,
                        labels: Mapping[str, str] | None = None):
    """A grid of one story's frames: one line per row (and the ground-truth renders first). Returns the figure."""
    import matplotlib.pyplot as plt

    lines = ([("reference", reference(story).cpu().float())] if reference is not None else []) + \
        [(r, load_frames(out_dir, r, [story])[0]) for r in rows]
    N = len(story)
    fig, axes = plt.subplots(len(lines), N, figsize=(1.3 * N + 1.6, 1.35 * len(lines)), squeeze=False)
    for a, (r, frames) in enumerate(lines):
        for i in range(N):
            ax = axes[a][i]
            img = frames[i].clamp(0, 1)
            if img.shape[0] == 1:  # one channel: grey levels on a fixed [0, 1] scale
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if a == 0:
                ax.set_title(f"frame {i + 1}", fontsize=8)
        axes[a][0].set_ylabel((labels or {}).get(r, "Ground truth" if r == "reference" else r), fontsize=7,
                              rotation=0, ha="right", va="center")
    return fig


def sweep_label(strength: float) -> str:
    """Row name of ACDC (rule memory) at SDEdit strength t' in a sweep table."""
    return f"acdc_rules_t{strength:g}"


def strength_sweep(stories: Sequence[Story], out_root: str | Path, strengths: Sequence[float], *, arm, corrector,
                   memory, config: ExperimentConfig, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict[float, Path]:
    """Run the acdc_rules row at each SDEdit strength t' into out_root/t<t'> (resumable like run_experiment).

    Returns {t': folder}. The stories keep their seeds (story k: story_seed(base_seed, k)), so the
    first k stories of a larger run draw the same ARM tokens here.
    """
    bad = [s for s in strengths if isinstance(s, (bool, str)) or not isinstance(s, (int, float)) or not 0.0 < s <= 1.0]
    if bad or not strengths:
        raise ValueError(f"strengths must be a non-empty list of t' in (0, 1], got {list(strengths)!r}")
    dirs = {}
    for s in strengths:
        d = Path(out_root) / f"t{s:g}"
        cfg = ExperimentConfig(**{**asdict(config), "rows": ("acdc_rules",), "strength": float(s)})
        run_experiment(stories, d, arm=arm, corrector=corrector, memory=memory, config=cfg, device=device,
                       progress=progress)
        dirs[float(s)] = d
    return dirs


def summarise_sweep(dirs: Mapping[float, str | Path], stories: Sequence[Story], evaluator: Evaluator,
                    config: ExperimentConfig, base_dir: str | Path | None = None,
                    base_rows: Sequence[str] = ("dm_only", "arm")) -> ResultsTable:
    """One table over a t' sweep: `base_rows` of the main run (same stories, with the reference) then ACDC per t'.

    Args:
        dirs: `strength_sweep`'s {t': folder}.
        base_dir: the main run's folder holding `base_rows` for these stories (None: no base rows).
    """
    parts = []
    if base_dir is not None:
        parts.append(summarise(base_dir, stories, evaluator,
                               ExperimentConfig(**{**asdict(config), "rows": tuple(base_rows)})))
    for s, d in dirs.items():
        t = summarise(d, stories, evaluator, ExperimentConfig(**{**asdict(config), "rows": ("acdc_rules",),
                                                                  "strength": float(s)}), include_reference=False)
        name = sweep_label(s)
        t.rows, t.curves, t.per_story, t.per_frame = ({name: x["acdc_rules"]}
                                                      for x in (t.rows, t.curves, t.per_story, t.per_frame))
        t.labels = {name: f"ARM + ACDC, rule memory, t'={s:g}, N={config.num_inference_steps}"}
        parts.append(t)
    merged = {k: {} for k in ("rows", "curves", "per_story", "labels", "per_frame")}
    for t in parts:
        for k in merged:
            merged[k].update(getattr(t, k))
    return ResultsTable(merged["rows"], merged["curves"], merged["labels"], len(stories), len(stories[0]),
                        {**asdict(config), "strengths": [float(s) for s in dirs]}, merged["per_story"],
                        merged["per_frame"])


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
