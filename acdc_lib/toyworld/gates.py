"""The gates of the toy world's models, measured on held-out test stories.

- Evaluator: probe accuracy on clean renders >= 98% for species and for place; CLIP retrieval (the
  right explicit caption among 100) >= 80% top-1.
- VQ: the probe's accuracy on reconstructions >= 95% of its accuracy on the originals (mean over the
  visual attributes species, place, time, action).
- DM: frames sampled from explicit captions show the captioned species AND place (both, by the
  probe) >= 90% of the time.
- ARM regime (world version 2, fixed before measuring; it replaces version 1's rule on the visual
  attributes): on test stories 200-999, in the continuation task (the story's true frame 1 is given,
  the ARM draws frames 2..N), for the mean over what only the frames carry (marking, collar, layout,
  x cell, facing), the error the free-running ARM inherits (the ARM with the true earlier frames minus
  the free-running ARM) is above 0 at frame 6 and larger at frame 6 than at frame 3, both with 95%
  paired bootstrap confidence, and the free-running ARM's frame-2 accuracy is at least 75%.

Every function takes its models and stories as arguments and its randomness as a seed, so the
notebook and `python -m acdc_lib.toyworld.gates` measure the same numbers.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from acdc_lib.defaults import PAPER_GUIDANCE_SCALE
from acdc_lib.io import atomic_write_json, nan_as_null
from acdc_lib.toyworld import models as M
from acdc_lib.toyworld.world import FRAME_ONLY_ATTRIBUTES, SceneState, explicit_caption

VISUAL = M.VISUAL_HEADS
FRAME_ONLY = FRAME_ONLY_ATTRIBUTES  # probe heads of what only the frames carry
# The regime gate's stories and seed, written down before any version-2 model was measured.
REGIME_STORIES: tuple[int, int] = (200, 1000)
REGIME_SEED = 20261130
REGIME_FRAMES: tuple[int, int] = (3, 6)  # the inherited error must grow from frame 3 to frame 6
REGIME_FRAME2_MIN = 0.75


@dataclass
class Gate:
    """One gate: a measured value against a threshold.

    Args:
        name: what is measured, e.g. "evaluator species accuracy".
        value: the measured value (a fraction).
        threshold: the value must be >= threshold.
        detail: per-attribute numbers and settings behind the value.
    """

    name: str
    value: float
    threshold: float
    detail: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def verdict(self) -> str:
        """A deterministic line: "<name> <rule, default '>= threshold as %'>: PASS|FAIL"."""
        rule = self.rule if self.rule is not None else f">= {self.threshold:.0%}"
        return f"{self.name} {rule}: {'PASS' if self.passed else 'FAIL'}"


def load_split(name: str, n: int | None = None):
    """The first n stories (all when None) of a story split (`acdc_lib.toyworld.splits.load_split`)."""
    from acdc_lib.toyworld.splits import load_split as _load

    stories = _load(name)
    return stories if n is None else stories[:n]


def frames_of(stories) -> tuple[list[SceneState], list[str]]:
    """All ground-truth states of `stories` (story-major) and their explicit captions."""
    states = [SceneState.from_dict(d) for st in stories for d in st.states]
    return states, [explicit_caption(s) for s in states]


def accuracy(pred: dict[str, torch.Tensor], truth: dict[str, torch.Tensor], keys=None) -> dict[str, float]:
    """{attribute: fraction of rows where pred == truth} over `keys` (default: every key of pred)."""
    return {k: float((pred[k] == truth[k]).float().mean()) for k in (keys or pred)}


def _render(states) -> torch.Tensor:
    from acdc_lib.toyworld.render import render_states

    return render_states(list(states)).images


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------
def retrieval_top1(evaluator: M.ToyEvaluator, images: torch.Tensor, captions: Sequence[str], group: int = 100) -> float:
    """Image -> caption top-1 accuracy within consecutive groups of `group` (the right caption among `group`).

    Captions name the character, which is not drawn, so two frames of the same species, place, time
    and action under different names are indistinguishable: that ceiling is part of the number.
    """
    n = (len(captions) // group) * group
    if n == 0:
        raise ValueError(f"need at least {group} frames for retrieval among {group}, got {len(captions)}")
    fi, ft = evaluator.image_features(images[:n]), evaluator.text_features(list(captions[:n]))
    hits = 0
    for i in range(0, n, group):
        sim = fi[i:i + group] @ ft[i:i + group].T
        hits += int((sim.argmax(1) == torch.arange(group)).sum())
    return hits / n


def evaluator_gates(evaluator: M.ToyEvaluator, stories, *, seed: int = 0, group: int = 100) -> tuple[list[Gate], dict]:
    """Probe accuracy on the clean renders of every frame of `stories`, and CLIP retrieval among `group`.

    Retrieval uses one frame per story (drawn with `seed`), so the `group` candidates come from
    different stories.
    """
    states, captions = frames_of(stories)
    images = _render(states)
    acc = accuracy(evaluator.predict(images), M.state_labels(states))
    rng = np.random.default_rng(seed)
    N = len(stories[0].states)
    pick = [i * N + int(rng.integers(N)) for i in range(len(stories))]
    r1 = retrieval_top1(evaluator, images[pick], [captions[i] for i in pick], group)
    gates = [Gate("evaluator species accuracy", acc["species"], 0.98, {"n_frames": len(states)}),
             Gate("evaluator place accuracy", acc["place"], 0.98, {"n_frames": len(states)}),
             Gate(f"CLIP retrieval top-1 among {group}", r1, 0.80, {"n_queries": len(pick) // group * group})]
    gates += [Gate(f"evaluator {k} accuracy", acc[k], 0.98, {"n_frames": len(states)}) for k in FRAME_ONLY]
    return gates, {"probe_accuracy_clean": acc, "retrieval_top1": r1, "images": images, "states": states}


# --------------------------------------------------------------------------------------------
# VQ
# --------------------------------------------------------------------------------------------
def vq_gate(vq, evaluator: M.ToyEvaluator, images: torch.Tensor, states) -> tuple[Gate, dict]:
    """Probe accuracy on VQ reconstructions relative to the originals (mean over the visual attributes)."""
    truth = M.state_labels(states)
    rec = torch.cat([M.vq_decode(vq, M.vq_encode(vq, images[i:i + 512])) for i in range(0, len(images), 512)])
    p0, p1 = evaluator.predict(images), evaluator.predict(rec)
    a0, a1 = accuracy(p0, truth, VISUAL), accuracy(p1, truth, VISUAL)
    ratio = float(np.mean(list(a1.values())) / np.mean(list(a0.values())))
    mse = float((rec - images).pow(2).mean())
    detail = {"accuracy_originals": a0, "accuracy_reconstructions": a1, "mse": mse, "n_frames": len(states),
              # not part of the gate (measured on the stated attributes only), but what the ARM can copy at best
              "frame_only_originals": accuracy(p0, truth, FRAME_ONLY),
              "frame_only_reconstructions": accuracy(p1, truth, FRAME_ONLY),
              "codes_used": int(torch.unique(M.vq_encode(vq, images[:2048])).numel())}
    return Gate("VQ probe accuracy on reconstructions / originals", ratio, 0.95, detail), {"reconstructions": rec}


# --------------------------------------------------------------------------------------------
# DM
# --------------------------------------------------------------------------------------------
def dm_gate(corrector, evaluator: M.ToyEvaluator, states, *, seed: int = 0, guidance_scale: float = PAPER_GUIDANCE_SCALE,
            num_inference_steps: int = 25, batch_size: int = 64) -> tuple[Gate, dict]:
    """Sample one frame per state from its explicit caption (DDIM + CFG) and check species and place by the probe.

    Row k uses torch.Generator().manual_seed(seed + k), so a frame does not depend on the batching.
    """
    captions = [explicit_caption(s) for s in states]
    imgs = []
    for i in range(0, len(states), batch_size):
        gens = [torch.Generator().manual_seed(seed + k) for k in range(i, min(i + batch_size, len(states)))]
        imgs.append(corrector.generate(captions[i:i + batch_size], guidance_scale=guidance_scale,
                                       num_inference_steps=num_inference_steps, generators=gens))
    images = torch.cat(imgs)
    pred, truth = evaluator.predict(images), M.state_labels(states)
    both = float(((pred["species"] == truth["species"]) & (pred["place"] == truth["place"])).float().mean())
    acc = accuracy(pred, truth, VISUAL)
    detail = {"accuracy": acc, "n_frames": len(states), "guidance_scale": guidance_scale,
              "num_inference_steps": num_inference_steps}
    return Gate("DM samples show captioned species and place", both, 0.90, detail), {"images": images,
                                                                                     "captions": captions}


# --------------------------------------------------------------------------------------------
# ARM
# --------------------------------------------------------------------------------------------
def arm_curve(arm, evaluator: M.ToyEvaluator, stories, *, seed: int = 0, batch_size: int = 32,
              context: str = "own") -> dict:
    """ARM generation of `stories` (no correction) and the probe's accuracy per frame index.

    context="own": free-running, `acdc_lib.loop.run_stories` with correct_frames="none" (Eq. 1).
    context="true": frame i from the text and the ground-truth frames 1..i-1 (the oracle row of
    `acdc_lib.experiment`), with the same random draws, so the per-frame gap between the two curves
    is the error the ARM inherits from its own earlier frames. Story k gets seed `seed + k`.
    Returns {"per_frame": {attribute: [acc at frame 1..N]}, "mean": [mean over VISUAL per frame],
    "correct": {attribute: (S, N) bool}, "images": (S, N, 3, 32, 32)}.
    """
    from acdc_lib.experiment import arm_true_context
    from acdc_lib.loop import run_stories
    from acdc_lib.types import LoopConfig

    if context not in ("own", "true"):
        raise ValueError(f"context must be 'own' or 'true', got {context!r}")
    cfg = LoopConfig(correct_frames="none", use_memory=False)
    frames = []
    for i in range(0, len(stories), batch_size):
        chunk = stories[i:i + batch_size]
        seeds = [seed + i + k for k in range(len(chunk))]
        if context == "true":
            device = getattr(arm, "device", "cpu")
            frames += list(arm_true_context(chunk, arm, lambda s: _render(s.states), seeds, device))
            continue
        out = run_stories(chunk, arm, None, None, cfg, seeds=seeds)
        frames += [s.arm_images() for s in out.stories]
    images = torch.stack(frames)  # (S, N, 3, H, W)
    S, N = images.shape[:2]
    states, _ = frames_of(stories)
    pred, truth = evaluator.predict(images.flatten(0, 1)), M.state_labels(states)
    correct = {k: pred[k].view(S, N) == truth[k].view(S, N) for k in VISUAL}
    per_frame = {k: [float(correct[k][:, j].float().mean()) for j in range(N)] for k in VISUAL}
    mean = [float(np.mean([per_frame[k][j] for k in VISUAL])) for j in range(N)]
    return {"per_frame": per_frame, "mean": mean, "correct": correct, "images": images, "n_stories": S}


def continuation_curve(arm, evaluator: M.ToyEvaluator, stories, *, seed: int = 0, context: str = "own",
                       context_frames: int | None = None, batch_size: int = 50) -> dict:
    """The continuation task: the story's true frame 1 is given (through the ARM's VQ), the ARM draws 2..N.

    context="own": frame i conditions on the ARM's own frames 2..i-1 (free-running after frame 1).
    context="true": frame i conditions on the true frames 1..i-1 (the oracle), with the same draws: story
    k's generator is seeded `seed + k` in both, so frame 2 is the same draw and the gap between the two
    at later frames is the error the ARM inherits from its own frames. `context_frames` windows the
    ARM's context to its last K frames (ToyARM's context_frames).
    Returns {"per_frame": {head: [acc at frame 1..N]}, "mean_frame_only": [...], "mean_visual": [...],
    "correct": {head: (S, N) bool}, "images": (S, N, 3, 32, 32), "n_stories": S}; frame 1 is the VQ
    round trip of the true frame.
    """
    import copy

    if context not in ("own", "true"):
        raise ValueError(f"context must be 'own' or 'true', got {context!r}")
    if context_frames is not None:
        arm = copy.copy(arm)
        arm.context_frames = context_frames
    device = getattr(arm, "device", torch.device("cpu"))
    frames = []
    for i in range(0, len(stories), batch_size):
        chunk = stories[i:i + batch_size]
        n = len(chunk[0].sentences)
        if any(len(st.sentences) != n for st in chunk):
            raise ValueError("the stories of one batch must have the same number of sentences")
        true_tokens = torch.stack([arm.encode(_render(st.states)) for st in chunk])  # (B, N, 64)
        gens = [torch.Generator(device=device).manual_seed(seed + i + k) for k in range(len(chunk))]
        tokens = [true_tokens[:, 0]]
        for j in range(1, n):
            prev = true_tokens[:, :j] if context == "true" else torch.stack(tokens, 1)
            tokens.append(arm.generate([st.sentences[:j + 1] for st in chunk], prev, gens).cpu())
        toks = torch.stack(tokens, 1)
        frames.append(torch.stack([arm.decode(toks[:, j]).cpu() for j in range(n)], 1))
    images = torch.cat(frames)
    S, N = images.shape[:2]
    states, _ = frames_of(stories)
    pred, truth = evaluator.predict(images.flatten(0, 1)), M.state_labels(states)
    heads = [*VISUAL, *FRAME_ONLY]
    correct = {k: pred[k].view(S, N) == truth[k].view(S, N) for k in heads}
    per_frame = {k: [float(correct[k][:, j].float().mean()) for j in range(N)] for k in heads}
    return {"per_frame": per_frame, "correct": correct, "images": images, "n_stories": S,
            "mean_frame_only": [float(np.mean([per_frame[k][j] for k in FRAME_ONLY])) for j in range(N)],
            "mean_visual": [float(np.mean([per_frame[k][j] for k in VISUAL])) for j in range(N)]}


def frame_only_scores(curve: dict) -> np.ndarray:
    """(S, N) per story and frame: the fraction of FRAME_ONLY attributes read right."""
    return np.mean([curve["correct"][k].float().numpy() for k in FRAME_ONLY], 0)


def regime_gate(own: dict, true: dict, *, n_resamples: int = 2000, seed: int = 0) -> Gate:
    """The version-2 ARM regime gate from two `continuation_curve`s of the same stories and seeds.

    inherited(i) = true-context minus free-running score at frame i (mean over FRAME_ONLY per story).
    Passes when the 95% paired bootstrap interval of inherited(6) lies above 0, that of
    inherited(6) - inherited(3) lies above 0, and the free-running frame-2 accuracy is >= 75%.
    The value is 1 when all three hold, else 0; the detail has every number.
    """
    from acdc_lib.metrics import bootstrap_ci

    a, b = frame_only_scores(own), frame_only_scores(true)
    if a.shape != b.shape or a.shape[1] < max(REGIME_FRAMES):
        raise ValueError(f"own and true must cover the same stories with >= {max(REGIME_FRAMES)} frames, got "
                         f"{a.shape} and {b.shape}")
    early, late = (f - 1 for f in REGIME_FRAMES)
    inh = b - a
    kw = dict(n_resamples=n_resamples, seed=seed)
    at_late, growth = bootstrap_ci(inh[:, late], **kw), bootstrap_ci(inh[:, late] - inh[:, early], **kw)
    frame2 = float(a[:, 1].mean())
    ok = at_late.low > 0 and growth.low > 0 and frame2 >= REGIME_FRAME2_MIN
    detail = {"inherited_at_6": asdict(at_late), "growth_3_to_6": asdict(growth), "frame2_own": frame2,
              "inherited_at_3": asdict(bootstrap_ci(inh[:, early], **kw)),
              "own_per_frame": a.mean(0).tolist(), "true_per_frame": b.mean(0).tolist(),
              "per_attribute_own": {k: own["per_frame"][k] for k in FRAME_ONLY},
              "per_attribute_true": {k: true["per_frame"][k] for k in FRAME_ONLY},
              "n_stories": int(a.shape[0])}
    return Gate("ARM regime (continuation, frame-only attributes)", 1.0 if ok else 0.0, 1.0, detail,
                rule=f"(inherited error at frame {REGIME_FRAMES[1]} > 0 and larger than at frame {REGIME_FRAMES[0]}, "
                     f"95% paired bootstrap; frame-2 accuracy >= {REGIME_FRAME2_MIN:.0%})")


def arm_inheritance(own: dict, true: dict, *, n_resamples: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """How much of the free-running ARM's fall is inherited, from two `arm_curve`s of the same stories.

    Args:
        own, true: `arm_curve(..., context="own")` and `arm_curve(..., context="true")` of the same
            stories with the same seed (so frame 1 is the same draw in both).
        n_resamples, seed, confidence: of the paired bootstrap over stories (`metrics.bootstrap_ci`).
    Returns:
        {attribute or "mean": {"fall": frame 1 minus frame N, free-running (the ARM regime gate's
        quantity); "inherited": true minus own, each story's mean over frames 2..N; "inherited_last":
        the same at frame N}}, each an `Interval` over stories. "mean" averages VISUAL per story first.
        Only the true-context curve separates accumulation from later frames being harder: the
        context-free DM row of notebook 03 falls too.
    """
    from acdc_lib.experiment import paired_frame_gaps
    from acdc_lib.metrics import bootstrap_ci

    for name, c in (("own", own), ("true", true)):
        if "correct" not in c or set(c["correct"]) != set(VISUAL):
            raise ValueError(f"{name} must be an arm_curve result with per-story 'correct' for {list(VISUAL)}")
    shapes = {tuple(c["correct"][k].shape) for c in (own, true) for k in VISUAL}
    if len(shapes) != 1:
        raise ValueError(f"own and true must cover the same stories; got (stories, frames) {sorted(shapes)}")
    a = {k: own["correct"][k].float().numpy() for k in VISUAL}
    b = {k: true["correct"][k].float().numpy() for k in VISUAL}
    a["mean"], b["mean"] = np.mean([a[k] for k in VISUAL], 0), np.mean([b[k] for k in VISUAL], 0)
    kw = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    out = {}
    for k in a:
        gaps = paired_frame_gaps(a[k], b[k], **kw)  # the oracle minus own, as notebook 03's frame_gaps
        out[k] = {"fall": bootstrap_ci(a[k][:, 0] - a[k][:, -1], **kw), "inherited": gaps["later"],
                  "inherited_last": gaps["per_frame"][-1]}
    return out


def inheritance_lines(res: dict[str, dict[str, Any]], n_frames: int) -> list[str]:
    """One line per attribute of `arm_inheritance`'s result, signed intervals."""
    return [f"{k:>8}: fall frame 1 -> {n_frames} (free-running) {r['fall'].signed()}; inherited over frames "
            f"2-{n_frames} {r['inherited'].signed()}, at frame {n_frames} {r['inherited_last'].signed()}"
            for k, r in res.items()]


@torch.no_grad()
def arm_frame_nll(arm, stories, *, swap_earlier_frames: bool = False, batch_size: int = 50) -> list[float]:
    """Teacher-forced loss (mean nats per code) of the ARM on each frame's image codes, frame 1..N.

    The context is the story's true text and the VQ codes of its true earlier frames. With
    `swap_earlier_frames`, the earlier frames' codes come from the next story in `stories` instead (its
    text stays), so the difference from the plain call is what the ARM draws from its earlier frames: an
    ARM that ignores them scores the same both ways, and its own mistakes cannot propagate through them.
    Needs at least two stories to swap.
    """
    if swap_earlier_frames and len(stories) < 2:
        raise ValueError("swap_earlier_frames needs at least two stories (one lends the other its frames)")
    layout, lm = arm.layout, arm.lm
    device = next(lm.parameters()).device
    ids = M.arm_sequences(stories, arm.vq, arm.tokenizer, layout)  # (S, N * segment)
    n_frames = ids.shape[1] // layout.segment
    frame_of = torch.arange(ids.shape[1]) // layout.segment
    is_code = ids >= layout.code_offset

    def losses(x: torch.LongTensor, frames: Sequence[int]) -> list[float]:
        """Mean loss on the codes of each of `frames`, from one causal pass over x up to the last of them."""
        end = (max(frames) + 1) * layout.segment  # later frames cannot matter to a causal LM
        total, count = torch.zeros(len(frames)), torch.zeros(len(frames))
        for b in range(0, len(x), batch_size):
            xb = x[b:b + batch_size, :end].to(device)
            logits = lm(**M.lm_inputs(lm, arm.slots, layout, xb)).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), xb[:, 1:], reduction="none").cpu()
            for k, i in enumerate(frames):
                mask = is_code[b:b + batch_size, 1:end] & (frame_of[1:end] == i)
                total[k] += nll[mask].sum()
                count[k] += mask.sum()
        return (total / count).tolist()

    if not swap_earlier_frames:  # the true context serves every frame: one pass
        return losses(ids, range(n_frames))
    lender = ids.roll(1, dims=0)
    out = losses(ids, [0])  # frame 1 has no earlier frames to lend
    for i in range(1, n_frames):
        x, lent = ids.clone(), (frame_of < i) & is_code
        x[lent] = lender[lent]
        out += losses(x, [i])
    return out


def arm_regime_gate(curve: dict, *, first_min: float = 0.75, drop_min: float = 0.05) -> Gate:
    """The ARM regime: mean accuracy at frame 1 >= first_min and the last frame >= drop_min lower.

    The value reported is min(first - first_min, (first - last) - drop_min) + 1, so >= 1 passes;
    the detail has the two numbers.
    """
    first, last = curve["mean"][0], curve["mean"][-1]
    value = 1.0 + min(first - first_min, (first - last) - drop_min)
    return Gate("ARM regime", value, 1.0, {"frame1": first, "last": last, "mean_per_frame": curve["mean"]},
                rule=f"(frame-1 accuracy >= {first_min:.0%}, last frame >= {drop_min:.0%} lower)")


def summarize(gates: Sequence[Gate]) -> list[dict]:
    """JSON-ready list of gates (name, value, threshold, passed, detail)."""
    return [{**asdict(g), "passed": g.passed} for g in gates]


# --------------------------------------------------------------------------------------------
# Figures and budget summaries for notebook 02
# --------------------------------------------------------------------------------------------
def image_grid(rows: Sequence[torch.Tensor], row_titles: Sequence[str] | None = None, col_titles=None,
               scale: float = 0.9):
    """A matplotlib figure showing rows of (K, 3, H, W) images in [0, 1]; returns the figure."""
    import matplotlib.pyplot as plt

    R, K = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(R, K, figsize=(K * scale, R * scale * 1.05), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(K):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(r):
                ax.imshow(r[j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            if j == 0 and row_titles is not None:
                ax.text(-2, 16, row_titles[i], ha="right", va="center", fontsize=7)
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.1)
    return fig


def plot_arm_curves(curves: dict[str, dict]):
    """Per-frame probe accuracy of free-running ARMs: one panel per visual attribute + the mean."""
    import matplotlib.pyplot as plt

    keys = [*VISUAL, "mean"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.8), sharey=True)
    for ax, k in zip(axes, keys):
        for name, c in curves.items():
            y = c["mean"] if k == "mean" else c["per_frame"][k]
            ax.plot(range(1, len(y) + 1), y, marker="o", label=name)
        ax.set_title(k)
        ax.set_xlabel("frame")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("probe accuracy vs ground truth")
    axes[-1].legend()
    return fig


def plot_continuation(own: dict, true: dict):
    """Frame-only accuracy per frame of two `continuation_curve`s (own frames vs true earlier frames), and
    per attribute, with the visual mean beside."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
    N = len(own["mean_frame_only"])
    x = range(1, N + 1)
    for c, name, style in ((own, "own frames", "-o"), (true, "true earlier frames", "--s")):
        axes[0].plot(x, c["mean_frame_only"], style, label=f"frame-only, {name}")
        axes[0].plot(x, c["mean_visual"], style, alpha=0.4, label=f"visual, {name}")
    axes[0].set(xlabel="frame", ylabel="probe accuracy", title="continuation: frame 1 given", ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    for k in FRAME_ONLY:
        line, = axes[1].plot(x, own["per_frame"][k], "-o", label=k)
        axes[1].plot(x, true["per_frame"][k], "--", color=line.get_color(), alpha=0.6)
    axes[1].set(xlabel="frame", title="per attribute (dashed: true earlier frames)", ylim=(0, 1.02))
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def checkpoint_sizes(root: Path = M.CHECKPOINT_DIR) -> dict[str, float]:
    """MB of all files per top-level model folder (weights and configs), and their total."""
    out: dict[str, float] = {}
    for d in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        out[d.name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2 ** 20
    out["total"] = sum(out.values())
    return out


def training_minutes(root: Path = M.CHECKPOINT_DIR) -> dict[str, float]:
    """Wall minutes per trained model from train_log.json and "total": the wall time of the whole run.

    When the models were trained in parallel (`train all --jobs 2`, logged as "all"), "total" is that
    run's wall time and "sum" the sum of the per-model times; trained one after another, both are the sum.
    Models trained in a later parallel run (logged as "all_<name>", with its tasks) add that run's wall
    time to "total", and models trained alone after "all" add theirs.
    """
    log = json.loads((Path(root) / "train_log.json").read_text())
    runs = {k: v for k, v in log.items() if k == "all" or k.startswith("all_")}
    out = {k: v["wall_s"] / 60 for k, v in log.items() if k not in runs}
    out["sum"] = sum(out.values())
    if not runs:
        out["total"] = out["sum"]
        return out
    logged_as = {"probe": "evaluator_probe", "clip": "evaluator_clip", "arms": "arm"}  # task -> its log record
    covered = {logged_as.get(t, t) for v in runs.values() for t in v["config"]["extra"].get("tasks", [])}
    alone = sum(m for k, m in out.items() if k not in covered and k != "sum")
    out["total"] = sum(v["wall_s"] for v in runs.values()) / 60 + alone
    return out


# --------------------------------------------------------------------------------------------
# CLI: measure every gate on the test split and write gates.json beside the checkpoints
# --------------------------------------------------------------------------------------------
def measure_all(n_stories: int | None = None, *, dm_frames: int = 256, arm_stories: int = 200,
                checkpoints: Path = M.CHECKPOINT_DIR, extra_arms: Sequence[str] = ("arm_weak", "arm_strong"),
                dm_steps: int = 25, seed: int = 0, k_values: Sequence[int] = (2, 3)) -> dict:
    """Measure all gates on the test split with the models under `checkpoints`; returns the gates.json dict."""
    t0 = time.time()
    test = load_split("test", n_stories)
    ev = M.load_evaluator(checkpoints / "evaluator")
    g_ev, ev_out = evaluator_gates(ev, test, seed=seed)
    g_vq, _ = vq_gate(M.load_vq(checkpoints / "vq"), ev, ev_out["images"], ev_out["states"])
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(ev_out["states"]), size=min(dm_frames, len(ev_out["states"])), replace=False))
    g_dm, _ = dm_gate(M.load_dm(checkpoints / "dm"), ev, [ev_out["states"][i] for i in pick], seed=seed,
                      num_inference_steps=dm_steps)
    curves = {}
    arm_names = ["arm", *[a for a in extra_arms if (checkpoints / a).is_dir()]]
    for name in arm_names:
        c = arm_curve(M.load_arm(checkpoints / name, checkpoints / "vq"), ev, test[:arm_stories], seed=seed)
        curves[name] = {"per_frame": c["per_frame"], "mean": c["mean"], "n_stories": c["n_stories"]}
    arm = M.load_arm(checkpoints / "arm", checkpoints / "vq")
    regime, k_curves = regime_measurement(arm, ev, test, k_values=k_values)
    g_arm = regime_gate(regime["own"], regime["true"])
    gates = [*g_ev, g_vq, g_dm, g_arm]
    return {
        "split": "test", "n_test_stories": len(test), "probe_accuracy_clean": ev_out["probe_accuracy_clean"],
        "gates": summarize(gates), "arm_curves": curves, "all_passed": all(g.passed for g in gates),
        "regime": {"stories": list(REGIME_STORIES), "seed": REGIME_SEED,
                   **{c: {"mean_frame_only": regime[c]["mean_frame_only"], "mean_visual": regime[c]["mean_visual"],
                          "per_frame": regime[c]["per_frame"]} for c in ("own", "true")}},
        "context_window_curves": k_curves, "measure_seconds": round(time.time() - t0, 1),
    }


def regime_measurement(arm, evaluator: M.ToyEvaluator, test, *, k_values: Sequence[int] = (2, 3),
                       k_stories: int = 200) -> tuple[dict, dict]:
    """The regime gate's two continuation curves on test stories REGIME_STORIES (seed REGIME_SEED), and the
    free-running frame-only curve for each context window K in `k_values` on the first `k_stories` of them
    (with the ARM's own window, arm.context_frames or the whole story, under its own key)."""
    lo, hi = REGIME_STORIES
    if len(test) < hi:
        raise ValueError(f"the regime gate needs test stories {lo}..{hi - 1}; the split has {len(test)}")
    stories = test[lo:hi]
    res = {c: continuation_curve(arm, evaluator, stories, seed=REGIME_SEED, context=c) for c in ("own", "true")}
    k_curves = {str(arm.context_frames or len(stories[0].sentences)): {
        "own": res["own"]["mean_frame_only"], "n_stories": len(stories)}}
    for K in k_values:
        sub = stories[:k_stories]
        k_curves[str(K)] = {c: continuation_curve(arm, evaluator, sub, seed=REGIME_SEED, context=c,
                                                  context_frames=K)["mean_frame_only"] for c in ("own", "true")}
        k_curves[str(K)]["n_stories"] = len(sub)
    return res, k_curves


def measure_inheritance(stories: str, *, checkpoints: Path = M.CHECKPOINT_DIR, seed: int = 0,
                        arm_name: str = "arm") -> dict:
    """`arm_inheritance` of the ARM `arm_name` on the test stories "START:STOP"; test story j draws with seed + j.

    Returns a JSON-ready dict: the stories, the per-frame curves of both contexts, the intervals and
    `inheritance_lines`. The slice lets a fresh set of test stories check a figure measured on others.
    """
    try:
        start, stop = (int(v) for v in stories.split(":"))
    except ValueError:
        raise ValueError(f"stories must be START:STOP (two ints), got {stories!r}") from None
    test = load_split("test")
    if not 0 <= start < stop <= len(test) or stop - start < 2:
        raise ValueError(f"stories {stories!r}: need 0 <= START < STOP <= {len(test)} and >= 2 stories")
    chunk, ev = test[start:stop], M.load_evaluator(checkpoints / "evaluator")
    arm = M.load_arm(checkpoints / arm_name, checkpoints / "vq")
    own = arm_curve(arm, ev, chunk, seed=seed + start)
    true = arm_curve(arm, ev, chunk, seed=seed + start, context="true")
    res = arm_inheritance(own, true)
    return {"arm": arm_name, "stories": stories, "n_stories": len(chunk), "seed": seed,
            "curves": {"own": {"mean": own["mean"], "per_frame": own["per_frame"]},
                       "true": {"mean": true["mean"], "per_frame": true["per_frame"]}},
            "intervals": {k: {m: asdict(v) for m, v in r.items()} for k, r in res.items()},
            "lines": inheritance_lines(res, len(own["mean"]))}


# --------------------------------------------------------------------------------------------
# Physical errors: does the ARM carry one into the frames it draws next?
# --------------------------------------------------------------------------------------------


def physical_propagation(arm, evaluator: M.ToyEvaluator, stories, *, seed: int = 0, n_resamples: int = 2000) -> dict:
    """The continuation task with a physically wrong frame 1, against the same stories with a right one.

    For each kind of `PHYSICAL_KINDS`, frame 1 is the render of its variant of the story's first state
    (through the ARM's VQ, as the ARM sees it) and the ARM draws frames 2..N from its own frames, with
    the draws of the normal run (story k seeded seed + k): the paired difference of the probe's error
    rate at each frame is what the wrong frame 1 adds. For the natural errors of the normal run:
    P(frame i+1 wrong | frame i wrong) - P(frame i+1 wrong | frame i right) over frames 2..N, with an
    interval over stories. Returns a JSON-ready dict; `lines` says it in words.
    """
    from acdc_lib import metrics as MT
    from acdc_lib.experiment.physical import propagation_lift
    from acdc_lib.toyworld.physical import PHYSICAL_KINDS, physical_errors, wrong_state

    S = len(stories)
    firsts = {"normal": [], **{k: [] for k in PHYSICAL_KINDS}}
    for st in stories:
        right = SceneState.from_dict(st.states[0]).replace(n_suns=None, n_moons=None, n_ears=None, n_tails=None)
        firsts["normal"].append(right)
        for k in PHYSICAL_KINDS:
            firsts[k].append(wrong_state(right, k))
    wrong = {}
    for kind, states in firsts.items():
        gens = [torch.Generator().manual_seed(seed + k) for k in range(S)]
        tokens = [arm.encode(_render(states)).cpu()]
        for j in range(1, len(stories[0].sentences)):
            tokens.append(arm.generate([st.sentences[:j + 1] for st in stories], torch.stack(tokens, 1), gens).cpu())
        images = torch.stack([arm.decode(t).cpu() for t in tokens], 1)                     # (S, N, 3, H, W)
        pred = evaluator.predict(images.flatten(0, 1))
        wrong[kind] = {c: w.view(S, -1).float().numpy() for c, w in physical_errors(pred).items()}  # (S, N) each
    out = {"n_stories": S, "seed": seed, "kinds": {}, "natural": {}, "lines": []}
    for kind, c in PHYSICAL_KINDS.items():
        a, b = wrong[kind][c], wrong["normal"][c]
        added = [asdict(MT.bootstrap_ci(a[:, j] - b[:, j], n_resamples=n_resamples, seed=seed)) for j in range(a.shape[1])]
        out["kinds"][kind] = {"count": c, "wrong_rate": a.mean(0).tolist(), "normal_rate": b.mean(0).tolist(),
                              "added": added}
        out["lines"].append(f"{kind}: the probe reads frame 1 wrong in {a[:, 0].mean():.2f} of stories (normal frame 1: "
                            f"{b[:, 0].mean():.2f}); at frame 2 the wrong frame 1 adds {added[1]['value']:+.3f} "
                            f"[{added[1]['low']:+.3f}, {added[1]['high']:+.3f}] to the {c} error rate, at frame 3 "
                            f"{added[2]['value']:+.3f} [{added[2]['low']:+.3f}, {added[2]['high']:+.3f}]")
    for c, w in wrong["normal"].items():
        res = propagation_lift(w.astype(bool), seed=seed)
        out["natural"][c] = res
        ci = res["lift"]
        out["lines"].append(f"natural {c} errors: {res['rate']:.2f} of frames 3..N; " + (
            f"after a wrong frame the next is wrong {ci['value']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] more often "
            f"than after a right one ({res['n_wrong_before']} wrong frames; stories differ, so this is not yet cause)"
            if np.isfinite(ci["low"]) else f"too few wrong frames ({res['n_wrong_before']}) to compare"))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure the toy models' gates on the test split; write gates.json")
    p.add_argument("--checkpoints", type=Path, default=M.CHECKPOINT_DIR)
    p.add_argument("--n-stories", type=int, default=None, help="test stories (default: all)")
    p.add_argument("--dm-frames", type=int, default=256)
    p.add_argument("--arm-stories", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--inheritance", metavar="START:STOP", default=None,
                   help="instead of the gates: the shipped ARM's fall and inherited error (arm_inheritance) on test "
                        "stories START..STOP-1, printed (and written to --out); writes no gates.json")
    p.add_argument("--propagation", metavar="START:STOP", default=None,
                   help="instead of the gates: does the shipped ARM carry a physically wrong frame 1 into the frames "
                        "it draws next (physical_propagation), on test stories START..STOP-1; writes no gates.json")
    p.add_argument("--seed", type=int, default=0, help="with --inheritance or --propagation: test story j draws "
                                                       "with seed + j")
    p.add_argument("--out", type=Path, default=None, help="with --inheritance or --propagation: a JSON file for the result")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.inheritance is not None:
        res = measure_inheritance(a.inheritance, checkpoints=a.checkpoints, seed=a.seed)
        print(f"ARM on test stories {res['stories']} ({res['n_stories']}), 95% paired bootstrap intervals:")
        print("\n".join(res["lines"]))
        if a.out is not None:
            atomic_write_json(a.out, res)
        return
    if a.propagation is not None:
        test = load_split("test")
        try:
            start, stop = (int(v) for v in a.propagation.split(":"))
        except ValueError:
            raise SystemExit(f"--propagation must be START:STOP (two ints), got {a.propagation!r}") from None
        if not 0 <= start < stop <= len(test) or stop - start < 2:
            raise SystemExit(f"--propagation {a.propagation!r}: need 0 <= START < STOP <= {len(test)} and >= 2 stories")
        res = physical_propagation(M.load_arm(a.checkpoints / "arm", a.checkpoints / "vq"),
                                   M.load_evaluator(a.checkpoints / "evaluator"), test[start:stop], seed=a.seed + start)
        print(f"ARM on test stories {a.propagation} ({res['n_stories']}), 95% paired bootstrap intervals:")
        print("\n".join(res["lines"]))
        if a.out is not None:
            atomic_write_json(a.out, nan_as_null(res))
        return
    res = measure_all(a.n_stories, dm_frames=a.dm_frames, arm_stories=a.arm_stories, checkpoints=a.checkpoints)
    atomic_write_json(a.checkpoints / "gates.json", res)
    for g in res["gates"]:
        print(f"{g['name']}: {g['value']:.4f} {g['rule'] or '>= ' + str(g['threshold'])} {'PASS' if g['passed'] else 'FAIL'}")
    print(json.dumps(res["arm_curves"], indent=1))


if __name__ == "__main__":
    main()
