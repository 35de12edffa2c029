"""Ablations of the story experiment (the paper's Table 2 and the questions it leaves open), model-agnostic.

    run_variants / summarise_variants   one row under several settings (t', CFG, N, a memory, a threshold),
                                        each in its own resumable folder, scored into one table
    measure_sdedit                      one SDEdit pass with what Theorems 2-3 speak of: the deviation
                                        ||x~(0) - x|| in the DM's space, the largest score norm C on each
                                        sampled path, abar(t'), d and E||x||
    CorruptedMemory, corrupt_prompt     a memory whose prompts name a wrong species, place or time at a
                                        set rate (Theorem 3's wrong condition y~)
    prompt_distance                     d(y, y~) as the DM's text encoder sees it
    corrections_per_story, pareto_*     what a correction policy spends and what it buys
    policy_costs                        per-stage loop time per frame for each policy (Open Question 4)

Nothing here knows the toy world: the evaluator, the ground truth, the corrector and the memory's
vocabulary come in as arguments.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from acdc_lib import metrics as M
from acdc_lib.experiment.rows import GENERATION_FIELDS, ROWS, ExperimentConfig, run_experiment
from acdc_lib.experiment.scoring import ResultsTable, summarise
from acdc_lib.loop import run_stories, story_generators
from acdc_lib.memory import Vocabulary
from acdc_lib.types import STAGES, Evaluator, GroundTruth, LoopConfig, Memory, MemoryOutput, Story

# --------------------------------------------------------------------------------------------
# One row under several settings
# --------------------------------------------------------------------------------------------
_SETTINGS = ("strength", "guidance_scale", "num_inference_steps", "drift_threshold")


@dataclass(eq=False)
class Variant:
    """One row of `ROWS` run under its own settings, in its own folder.

    Args:
        row: a name of `ROWS` (e.g. "acdc_rules").
        label: the table's label for it.
        settings: ExperimentConfig fields to change: strength, guidance_scale, num_inference_steps,
            drift_threshold.
        memory: the memory of this variant (None: the one given to `run_variants`).
    """

    row: str
    label: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    memory: Memory | None = None

    def __post_init__(self):
        if self.row not in ROWS:
            raise ValueError(f"unknown row {self.row!r}; allowed: {list(ROWS)}")
        bad = [k for k in self.settings if k not in _SETTINGS]
        if bad:
            raise ValueError(f"variant settings {bad} are not allowed; allowed: {list(_SETTINGS)}")

    def config(self, base: ExperimentConfig) -> ExperimentConfig:
        """The experiment settings of this variant: `base` with its row and settings."""
        return ExperimentConfig(**{**asdict(base), "rows": (self.row,), **dict(self.settings)})


def _check_variants(variants: Mapping[str, Variant]) -> None:
    if not variants:
        raise ValueError("variants must name at least one Variant")
    for name, v in variants.items():
        if not isinstance(v, Variant):
            raise ValueError(f"variant {name!r} must be a Variant, got {type(v).__name__}")
        if not re.fullmatch(r"[A-Za-z0-9_.=-]+", name):
            raise ValueError(f"variant name {name!r} is not allowed; it names a folder: use letters, digits, _ . = -")


def run_variants(stories: Sequence[Story], out_root: str | Path, variants: Mapping[str, Variant], *, arm,
                 corrector=None, memory: Memory | None = None, config: ExperimentConfig | None = None,
                 device: str | torch.device = "cpu", progress: bool = True,
                 known: Mapping[str | Path, ExperimentConfig] | None = None) -> dict[str, Path]:
    """Run every variant into out_root/<name> with `run_experiment` (resumable; other settings refused).

    Stories keep their seeds (story k: story_seed(config.base_seed, k)) in every variant, so the
    variants share the ARM's first frame and differ only by what their settings change.

    known: folders that already hold runs of these same stories with `memory`, each with the settings
    it was run with (e.g. a t' sweep's). A variant without a memory of its own whose row such a folder
    holds at equal settings (generation settings and batch size) uses that folder: its frames would be
    the same bytes, so they are not made again (the folder is resumed, so a missing story is computed).
    Returns {name: folder}.
    """
    _check_variants(variants)
    config = config or ExperimentConfig()
    dirs = {}
    for name, v in variants.items():
        cfg = v.config(config)
        same = [Path(d) for d, c in (known or {}).items()
                if v.memory is None and v.row in c.rows and c.batch_size == cfg.batch_size
                and all(getattr(c, k) == getattr(cfg, k) for k in GENERATION_FIELDS)]
        d = same[0] if same else Path(out_root) / name
        run_experiment(stories, d, arm=arm, corrector=corrector, memory=v.memory if v.memory is not None else memory,
                       config=cfg, device=device, progress=progress)
        dirs[name] = d
    return dirs


def summarise_variants(dirs: Mapping[str, str | Path], variants: Mapping[str, Variant], stories: Sequence[Story],
                       evaluator: Evaluator, config: ExperimentConfig | None = None,
                       ground_truth: GroundTruth | None = None) -> ResultsTable:
    """One table with a row per variant (named as in `variants`), scored like `summarise`."""
    _check_variants(variants)
    config = config or ExperimentConfig()
    parts = []
    for name, v in variants.items():
        t = summarise(dirs[name], stories, evaluator, v.config(config), include_reference=False,
                      ground_truth=ground_truth)
        t.rows, t.curves, t.per_story, t.per_frame = ({name: x[v.row]}
                                                      for x in (t.rows, t.curves, t.per_story, t.per_frame))
        t.labels = {name: v.label}
        parts.append(t)
    return merge_tables(parts, {**asdict(config), "variants": {n: {"row": v.row, **dict(v.settings)}
                                                               for n, v in variants.items()}})


def merge_tables(tables: Sequence[ResultsTable], config: Mapping[str, Any] | None = None) -> ResultsTable:
    """The rows of several tables over the same stories in one table (later tables win on a name clash)."""
    if not tables:
        raise ValueError("merge_tables needs at least one table")
    shape = {(t.n_stories, t.n_frames) for t in tables}
    if len(shape) != 1:
        raise ValueError(f"tables cover different stories or frames {sorted(shape)}; merge tables of one story list")
    merged = {k: {} for k in ("rows", "curves", "per_story", "labels", "per_frame", "skipped")}
    for t in tables:
        for k in merged:
            merged[k].update(getattr(t, k))
    return ResultsTable(merged["rows"], merged["curves"], merged["labels"], tables[0].n_stories,
                        tables[0].n_frames, dict(config or tables[0].config), merged["per_story"],
                        merged["per_frame"], merged["skipped"])


# --------------------------------------------------------------------------------------------
# One SDEdit pass, measured as Theorems 2-3 speak of it
# --------------------------------------------------------------------------------------------
@dataclass
class SDEditMeasure:
    """One SDEdit pass over M frames, in the space the DM denoises in (pixels in [-1, 1] or latents).

    Attributes:
        corrected: (M, C, H, W) x~(0) as images in [0, 1].
        deviation: (M,) ||x~(0) - x|| in the DM's space (Theorem 2's left-hand side, per frame).
        score_max: (M,) the largest ||s(x_t, y, t)|| = ||eps~|| / sqrt(1 - abar_t) met on each frame's
            sampled path (the guided eps under CFG, which is what the sampler follows); Theorem 2's C
            is their maximum.
        start_norm: (M,) ||x|| of each starting point (E||x|| is the printed bound's eta).
        alpha_bar: abar at the timestep the pass starts from (t').
        dim: d, the number of elements of one frame in the DM's space.
        steps: denoising steps that ran.
    """

    corrected: torch.Tensor
    deviation: np.ndarray
    score_max: np.ndarray
    start_norm: np.ndarray
    alpha_bar: float
    dim: int
    steps: int


def as_unet_corrector(corrector):
    """The corrector as a `UNetCorrector` (itself, or one over a pipeline corrector's own modules)."""
    from acdc_lib.sdedit import UNetCorrector

    if isinstance(corrector, UNetCorrector):
        return corrector
    get = getattr(corrector, "unet_corrector", None)
    if get is None:
        raise ValueError(f"{type(corrector).__name__} exposes no UNet, text encoder and scheduler; the SDEdit "
                         f"measurements need a UNetCorrector or a PipelineCorrector")
    return get()


@torch.no_grad()
def model_space_distance(corrector, images: torch.Tensor, others: torch.Tensor) -> np.ndarray:
    """(M,) ||x - x'|| between two batches of images in [0, 1], mapped to the DM's space (as `measure_sdedit`)."""
    if images.shape != others.shape:
        raise ValueError(f"images {tuple(images.shape)} and others {tuple(others.shape)} must have one shape")
    c = as_unet_corrector(corrector)
    return (_model_space(c, images) - _model_space(c, others)).flatten(1).norm(dim=1).double().cpu().numpy()


@torch.no_grad()
def _model_space(unet_corrector, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the DM's space, deterministically (a VAE's posterior mean, not a sample)."""
    c = unet_corrector
    x = images.to(c.device, c.dtype) * 2.0 - 1.0
    if c.vae is None:
        return x
    enc = c.vae.encode(x)
    z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
    shift = getattr(c.vae.config, "shift_factor", None) or 0.0
    return (z - shift) * c.vae.config.scaling_factor


@torch.no_grad()
def measure_sdedit(corrector, images: torch.Tensor, prompts: Sequence[str], *, strength: float,
                   guidance_scale: float, num_inference_steps: int,
                   generators: Sequence[torch.Generator]) -> SDEditMeasure:
    """Correct `images` once (the corrector's own `correct`) while recording the score norm on each path.

    A pipeline corrector is measured through a UNetCorrector over its own modules, at its model's size
    (the frames are resized there, the corrected frames back); deviations are in its latent space.

    A forward hook on the UNet reads every prediction: under CFG the batch holds the unconditional
    and conditional halves, combined here as the sampler combines them. diffusers has no callback
    that exposes the guided prediction of an image-to-image pass, hence the hook.
    """
    c = as_unet_corrector(corrector)
    size_in = tuple(images.shape[-2:])
    if hasattr(corrector, "model_size"):  # a pipeline corrector runs at its model's size: measure there
        from acdc_lib.sdedit import _resize

        images = _resize(images, corrector.model_size(*size_in)).clamp(0.0, 1.0)
    B = images.shape[0]
    score_max = torch.zeros(B, dtype=torch.float64)
    abar = c.scheduler.alphas_cumprod

    def hook(module, args, kwargs, out):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        eps = out.sample if hasattr(out, "sample") else out[0]
        eps = eps.float()
        if eps.shape[0] == 2 * B:
            u, cnd = eps.chunk(2)
            eps = u + guidance_scale * (cnd - u)
        eps = eps[:, :c.unet.config.in_channels] if c.vae is None else eps[:, :c.vae.config.latent_channels]
        a_t = float(abar[int(torch.as_tensor(t).flatten()[0])])
        norm = eps.flatten(1).norm(dim=1).double().cpu() / np.sqrt(1.0 - a_t)
        torch.maximum(score_max, norm, out=score_max)

    handle = c.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        corrected = c.correct(images, list(prompts), strength=strength, guidance_scale=guidance_scale,
                              num_inference_steps=num_inference_steps, generators=list(generators))
    finally:
        handle.remove()
    c.scheduler.set_timesteps(num_inference_steps)
    start = num_inference_steps - c.last_steps_run
    t0 = int(c.scheduler.timesteps[start * c.scheduler.order])
    x0, x1 = _model_space(c, images), _model_space(c, corrected)
    dev = (x1 - x0).flatten(1).norm(dim=1).double().cpu().numpy()
    if tuple(corrected.shape[-2:]) != size_in:
        from acdc_lib.sdedit import _resize

        corrected = _resize(corrected.float(), size_in).clamp(0.0, 1.0)
    return SDEditMeasure(corrected=corrected.cpu(), deviation=dev, score_max=score_max.numpy(),
                         start_norm=x0.flatten(1).norm(dim=1).double().cpu().numpy(), alpha_bar=float(abar[t0]),
                         dim=int(x0[0].numel()), steps=c.last_steps_run)


@torch.no_grad()
def prompt_distance(corrector, prompts: Sequence[str], others: Sequence[str]) -> np.ndarray:
    """d(y, y~) per pair: the Frobenius norm of the difference of the DM's text-encoder states of the two prompts."""
    if len(prompts) != len(others):
        raise ValueError(f"got {len(prompts)} prompts and {len(others)} others; pass them in pairs")
    c = as_unet_corrector(corrector)
    a, b = c.encode_prompts(list(prompts)).float(), c.encode_prompts(list(others)).float()
    return (a - b).flatten(1).norm(dim=1).double().cpu().numpy()


# --------------------------------------------------------------------------------------------
# A memory that is wrong at a set rate (Theorem 3's wrong condition)
# --------------------------------------------------------------------------------------------
CORRUPTIBLE = ("species", "place", "time")


def _phrases(vocabulary: Vocabulary, kind: str) -> dict[str, str]:
    if kind == "species":
        return {s: s for s in vocabulary.species}
    if kind == "place":
        return dict(vocabulary.place_phrases)
    if kind == "time":
        return dict(vocabulary.time_phrases)
    raise ValueError(f"unknown kind {kind!r}; allowed: {list(CORRUPTIBLE)}")


def corrupt_prompt(prompt: str, kind: str, vocabulary: Vocabulary, rng: np.random.Generator) -> str | None:
    """`prompt` with its `kind` ("species", "place" or "time") replaced by another value of that kind.

    The phrase found is the longest of the vocabulary's phrases of that kind (so "snowy field" wins
    over "field"); the replacement is drawn uniformly from the other values with `rng`. None when the
    prompt names no value of that kind.
    """
    phrases = _phrases(vocabulary, kind)
    found = None
    for value, phrase in sorted(phrases.items(), key=lambda kv: -len(kv[1])):
        m = re.search(r"\b" + re.escape(phrase) + r"\b", prompt)
        if m:
            found = (value, m)
            break
    if found is None:
        return None
    value, m = found
    others = [v for v in phrases if v != value and phrases[v] != phrases[value]]
    new = phrases[others[int(rng.integers(len(others)))]]
    return prompt[:m.start()] + new + prompt[m.end():]


MEMORY_ERRORS = ("wrong", "unresolved")


class CorruptedMemory:
    """Wraps a memory: each refined prompt is in error with probability `rate`.

    mode "wrong": one of its species, place or time is swapped for another value (the kind drawn uniformly
    among those the prompt names): Theorem 3's wrong condition. mode "unresolved": the prompt is left as the
    story's own sentence, what no memory gives (every field the memory would have resolved is missing), so rate
    0 is the wrapped memory and rate 1 no memory at all: the rates between measure the curve from one to the other.

    Deterministic: story s's draws come from numpy's SeedSequence([seed, crc of its sentences]), so a
    story gets the same corruption in every run and in any batch. `last_changes` lists, for the last
    `refine` call, the kind changed per prompt ("unresolved" in that mode; None: left as it was).
    """

    def __init__(self, memory: Memory, vocabulary: Vocabulary, rate: float, seed: int = 0, mode: str = "wrong"):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be a number in [0, 1] (the share of prompts in error), got {rate!r}")
        if mode not in MEMORY_ERRORS:
            raise ValueError(f"mode must be one of {MEMORY_ERRORS}, got {mode!r}")
        self.memory, self.vocabulary, self.rate, self.seed = memory, vocabulary, float(rate), int(seed)
        self.mode = mode
        self.last_changes: list[str | None] = []

    def __repr__(self) -> str:
        return f"CorruptedMemory({self.memory!r}, rate={self.rate:g}, seed={self.seed}, mode={self.mode!r})"

    def refine(self, sentences: Sequence[str]) -> MemoryOutput:
        import zlib

        out = self.memory.refine(list(sentences))
        key = zlib.crc32("\n".join(sentences).encode("utf-8"))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, key]))
        prompts, changes = [], []
        for p, sentence in zip(out.prompts, sentences):
            hit = rng.random() < self.rate
            if self.mode == "unresolved":
                new = sentence if hit and p != sentence else None
                prompts.append(new if new is not None else p)
                changes.append("unresolved" if new is not None else None)
                continue
            kinds = [k for k in CORRUPTIBLE if corrupt_prompt(p, k, self.vocabulary, np.random.default_rng(0))]
            kind = kinds[int(rng.integers(len(kinds)))] if kinds else None
            new = corrupt_prompt(p, kind, self.vocabulary, rng) if hit and kind else None
            prompts.append(new if new is not None else p)
            changes.append(kind if new is not None else None)
        self.last_changes = changes
        tag = "corrupted" if self.mode == "wrong" else "unresolved"
        return replace(out, prompts=prompts, source=f"{out.source}+{tag}({self.rate:g})")


# --------------------------------------------------------------------------------------------
# Identity: how varied a row's frame-1 identities are, and what SDEdit keeps of a true one
# --------------------------------------------------------------------------------------------
IDENTITY_HEADS = ("marking", "accessory")


def identity_diversity(first_frames: torch.Tensor, read_identity: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
                       heads: Sequence[str] = IDENTITY_HEADS) -> dict[str, float]:
    """How varied a row's frame-1 identities are over its stories.

    "Identity kept" in free generation is agreement with the row's own frame 1, which a row that draws one
    default identity in every frame maximises; this says whether the row draws varied identities at all.

    Args:
        first_frames: (S, C, H, W) frame 1 of each story, in [0, 1].
        read_identity: an evaluator's reader, images -> {head: (S,) long}.
    Returns:
        stories, distinct (identities read), most_common_share, entropy_bits (of the identities read).
    """
    ids = read_identity(first_frames)
    missing = [h for h in heads if h not in ids]
    if missing:
        raise ValueError(f"read_identity gives no {missing}; it gives {sorted(ids)}")
    keys = list(zip(*(torch.as_tensor(ids[h]).tolist() for h in heads)))
    p = np.array(sorted(Counter(keys).values(), reverse=True), dtype=np.float64) / len(keys)
    return {"stories": len(keys), "distinct": int(p.size), "most_common_share": float(p[0]),
            "entropy_bits": float(-(p * np.log2(p)).sum()) + 0.0}  # + 0.0: one identity gives 0, not -0


def identity_kept(before: torch.Tensor, after: torch.Tensor,
                  read_identity: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
                  heads: Sequence[str] = IDENTITY_HEADS) -> np.ndarray:
    """(B,) share of the identity heads read the same in `after` as in `before` (e.g. a true frame and its
    SDEdit correction: what the correction keeps of an identity that is known)."""
    a, b = read_identity(before), read_identity(after)
    same = torch.stack([torch.as_tensor(a[h]) == torch.as_tensor(b[h]) for h in heads]).double()  # (H, B)
    return same.mean(0).numpy()


# --------------------------------------------------------------------------------------------
# What a policy spends and what it buys
# --------------------------------------------------------------------------------------------
def corrections_per_story(run_dir: str | Path, row: str, stories: Sequence[Story]) -> np.ndarray:
    """(S,) frames each story's run corrected, read from its record (a corrected frame has a prompt)."""
    out = []
    for s in stories:
        path = Path(run_dir) / row / f"{s.story_id}.json"
        if not path.exists():
            raise ValueError(f"{path} is missing; run the row for these stories first")
        rec = json.loads(path.read_text(encoding="utf-8"))
        out.append(sum(p is not None for p in (rec.get("prompts") or [])))
    return np.asarray(out, dtype=np.float64)


def row_prompts(run_dir: str | Path, row: str, stories: Sequence[Story]) -> list[list[str | None]]:
    """Each story's corrector prompts as its run of `row` recorded them (None for a frame not corrected)."""
    out = []
    for s in stories:
        path = Path(run_dir) / row / f"{s.story_id}.json"
        if not path.exists():
            raise ValueError(f"{path} is missing; run the row for these stories first")
        out.append(list(json.loads(path.read_text(encoding="utf-8")).get("prompts") or [None] * len(s)))
    return out


def story_quality(table: ResultsTable, row: str, metrics: Sequence[str]) -> np.ndarray:
    """(S,) the mean of `metrics` per story of `row` (e.g. the attribute accuracies)."""
    missing = [m for m in metrics if m not in table.per_story.get(row, {})]
    if missing:
        raise ValueError(f"row {row!r} has no per-story {missing}; it has {list(table.per_story.get(row, {}))}")
    return np.mean([np.asarray(table.per_story[row][m], dtype=np.float64) for m in metrics], axis=0)


def versus_fixed_frontier(quality: Mapping[str, np.ndarray], corrections: Mapping[str, np.ndarray], fixed: Sequence[str],
                          candidate: str, n_resamples: int = 2000, seed: int = 0,
                          confidence: float = 0.95) -> dict[str, Any]:
    """Whether `candidate` beats the fixed policies at its own number of corrections, paired per story.

    The fixed frontier at c corrections per story is the straight line between the two fixed policies
    whose mean corrections bracket c (each the best, by mean quality, among fixed policies with that
    count), taken per story; the difference candidate - frontier gets a bootstrap interval over stories.
    """
    c = float(np.mean(corrections[candidate]))
    by_count: dict[float, str] = {}
    for f in fixed:
        k = float(np.mean(corrections[f]))
        if k not in by_count or quality[f].mean() > quality[by_count[k]].mean():
            by_count[k] = f
    counts = sorted(by_count)
    if not counts or c < counts[0] or c > counts[-1]:
        raise ValueError(f"{candidate!r} corrects {c:.2f} frames per story, outside the fixed policies' range {counts}")
    hi = next(k for k in counts if k >= c)
    lo = max(k for k in counts if k <= c)
    lam = 0.0 if hi == lo else (c - lo) / (hi - lo)
    frontier = (1 - lam) * quality[by_count[lo]] + lam * quality[by_count[hi]]
    diff = quality[candidate] - frontier
    ci = M.bootstrap_ci(torch.as_tensor(diff), n_resamples=n_resamples, seed=seed, confidence=confidence)
    return {"candidate": candidate, "corrections": c, "between": [by_count[lo], by_count[hi]], "weight_hi": lam,
            "candidate_quality": float(quality[candidate].mean()), "frontier_quality": float(frontier.mean()),
            "diff": asdict(ci), "beats": bool(ci.low > 0), "loses": bool(ci.high < 0)}


def policy_costs(stories: Sequence[Story], arm, corrector, memory: Memory | None,
                 policies: Mapping[str, LoopConfig], seeds: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", repeats: int = 1) -> dict[str, dict[str, Any]]:
    """Per-stage loop time per frame for each policy on one batch, from the loop's own timings.

    Each policy runs `repeats` times on `stories` (one batch); the fastest run counts (the least
    disturbed by other work). The ratio is the policy's wall time over the policy named "none"
    (ARM alone), which must be among `policies`.
    """
    if "none" not in policies:
        raise ValueError(f"policies must include 'none' (ARM alone, the ratio's denominator); got {list(policies)}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    n_frames = len(stories) * len(stories[0])
    out = {}
    for name, cfg in policies.items():
        best = None
        for _ in range(repeats):
            res = run_stories(stories, arm, corrector, memory, cfg, seeds=seeds, device=device)
            wall = sum(res.timings.values())
            if best is None or wall < best[0]:
                best = (wall, res)
        wall, res = best
        n_corr = sum(f.corrected for r in res.stories for f in r.frames)
        out[name] = {"seconds_per_frame": {s: res.timings[s] / n_frames for s in STAGES},
                     "wall_per_frame": wall / n_frames, "corrected_share": n_corr / n_frames}
    base = out["none"]["wall_per_frame"]
    for d in out.values():
        d["ratio_to_arm_alone"] = d["wall_per_frame"] / base
    return out


def seeds_of(stories: Sequence[Story], base_seed: int) -> list[int]:
    """The per-story seeds `run_experiment` uses (story k: story_seed(base_seed, k))."""
    from acdc_lib.loop import story_seed

    return [story_seed(base_seed, k) for k in range(len(stories))]


def correction_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """The correction stream of each seed (the second of `story_generators`), as the loop's corrector gets it."""
    return [story_generators(s, device)[1] for s in seeds]


__all__ = ["CORRUPTIBLE", "CorruptedMemory", "SDEditMeasure", "Variant", "as_unet_corrector", "correction_generators",
           "corrections_per_story", "corrupt_prompt", "measure_sdedit", "merge_tables", "model_space_distance", "policy_costs",
           "prompt_distance", "row_prompts", "run_variants", "seeds_of", "story_quality", "summarise_variants",
           "versus_fixed_frontier"]


# --------------------------------------------------------------------------------------------
# Figures of the ablations (drawn from plain data, so a run's recipe can redraw them)
# --------------------------------------------------------------------------------------------
def plot_tprime_tradeoff(tradeoff: Sequence[Mapping[str, Any]], t_primes: Sequence[float] = (),
                         accuracy: Sequence[float] = (), attributes: Mapping[str, Sequence[float]] | None = None,
                         recommended: float | None = None):
    """Three panels against t': what SDEdit moves (with Theorem 2's bounds), the distance to the ARM's frame, and,
    when `accuracy` is given, what the loop fixes and keeps.

    Args:
        tradeoff: per t' of the measurement, {"t_prime", "deviation": Interval dict, "bound_corrected",
            "bound_printed", "pixel_rms": Interval dict, "feature_dist": Interval dict}.
        t_primes, accuracy: the loop sweep's t' and mean attribute accuracy at each.
        attributes: more sweep curves by name (e.g. physical_validity), one value per t'.
        recommended: the t' to mark.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    tp_ = [r["t_prime"] for r in tradeoff]
    dev = [r["deviation"] for r in tradeoff]
    ax[0].errorbar(tp_, [d["value"] for d in dev], yerr=[[d["value"] - d["low"] for d in dev], [d["high"] - d["value"] for d in dev]],
                   marker="o", label="measured ||x~(0) - x||")
    ax[0].plot(tp_, [r["bound_corrected"] for r in tradeoff], "--", label="Theorem 2, corrected")
    ax[0].plot(tp_, [r["bound_printed"] for r in tradeoff], ":", label="Theorem 2, printed")
    # every legend goes below its panel, where no line can run under it
    below = dict(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncol=2)
    ax[0].set_yscale("log"); ax[0].set_xlabel("t'"); ax[0].set_title("what SDEdit moves (DM space)"); ax[0].legend(**below)
    ax[1].plot(tp_, [r["pixel_rms"]["value"] for r in tradeoff], marker="o", label="pixel RMS (0-255), left axis")
    ax1b = ax[1].twinx()
    ax1b.plot(tp_, [r["feature_dist"]["value"] for r in tradeoff], marker="s", color="C1", label="feature distance, right axis")
    ax[1].set_xlabel("t'"); ax[1].set_title("distance to the ARM's frame")
    ax[1].legend(*(a + b for a, b in zip(ax[1].get_legend_handles_labels(), ax1b.get_legend_handles_labels())), **below)
    if len(accuracy):
        ax[2].plot(t_primes, accuracy, marker="o", label="attribute accuracy")
        for k, v in (attributes or {}).items():
            ax[2].plot(t_primes, v, marker=".", label=k)
        if recommended is not None:
            ax[2].axvline(recommended, color="grey", ls="--", lw=1, label=f"recommended t' = {recommended:g}")
        ax[2].set_xlabel("t'"); ax[2].set_title("what ACDC fixes and keeps (loop)"); ax[2].legend(**below)
    fig.tight_layout()
    return fig


def plot_wrong_memory(frames: Mapping[float, Mapping[str, np.ndarray]]):
    """Deviation of the corrected frame against the prompt's distance d(y, y~), one colour per corruption rate k
    ({k: {"d": (S, N), "deviation": (S, N)}})."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for k, v in frames.items():
        ax.scatter(v["d"], v["deviation"], s=6, alpha=0.5, label=f"k={k:g}")
    ax.set_xlabel("d(y, y~) (text-encoder states)"); ax.set_ylabel("||x~(0) - x|| (DM space)"); ax.legend(fontsize=7)
    return fig


def plot_pareto(points: Sequence[Mapping[str, Any]], short: Mapping[str, str] | None = None):
    """Quality against corrections per story, one point per policy (red diamonds: adaptive).

    Args:
        points: {"policy", "adaptive", "corrections", "quality": Interval dict} per policy.
        short: annotation per policy (default: the policy name without "acdc_", "_rules", "_llm").
    """
    import matplotlib.pyplot as plt

    from acdc_lib.plotting import place_labels

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    points = sorted(points, key=lambda p: p["corrections"])
    for p in points:
        q_ = p["quality"]
        ax.errorbar(p["corrections"], q_["value"], yerr=[[q_["value"] - q_["low"]], [q_["high"] - q_["value"]]],
                    marker="D" if p["adaptive"] else "o", color="C3" if p["adaptive"] else "C0", capsize=2)
    ax.set_xlabel("frames corrected per story"); ax.set_ylabel("mean attribute accuracy")
    ax.set_title("quality against corrections (red: adaptive)")
    ax.margins(x=0.15, y=0.1)  # room for the labels at the ends
    ax.autoscale_view()
    names = [(short or {}).get(p["policy"], p["policy"].replace("acdc_", "").replace("_rules", "").replace("_llm", ""))
             for p in points]
    place_labels(ax, [p["corrections"] for p in points], [p["quality"]["value"] for p in points], names,
                 avoid=[(p["corrections"], p["quality"]["low"], p["quality"]["high"]) for p in points])
    return fig
