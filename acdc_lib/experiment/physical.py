"""Physical constraints (Sec. 4.2, Fig. 5): does a physical error propagate, and does inpainting stop it?

The continuation task: each story's first frame is given (right, or with a physical error such as two
moons) and the ARM draws frames 2..N from its own context. Four conditions treat every frame alike:

    arm            the ARM alone: no correction
    sdedit         ACDC: every frame corrected by SDEdit from t' (Eq. 2)
    inpaint_user   ACDC, and the user's mask over frame 1's wrong part repainted by an inpainting model
    inpaint_auto   ACDC, and every frame's region that a run-time detector marks repainted

Inpainting follows the SDEdit correction of the same frame (it repaints what SDEdit left), and the
ARM continues from the re-encoded result. Story k draws from `story_generators(story_seed(seed, k))` in
every condition and for every first frame, so the conditions are paired story by story.

The core knows no world: the first frames and masks, the detector and the reader of physical errors
come from the caller (the toy world's `acdc_lib.toyworld.physical` and evaluator provide them).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import stats as scipy_stats

from acdc_lib import metrics as MT
from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH
from acdc_lib.loop import story_generators, story_seed
from acdc_lib.sdedit import grow_masks, steps_for_strength, validate_masks


@dataclass(frozen=True)
class Condition:
    """One way of treating the frames: `label` for tables, SDEdit on or off, and whose mask is inpainted
    ("user": the given first frame's; "auto": the detector's on every frame; None: no inpainting)."""

    label: str
    sdedit: bool
    masks: str | None


CONDITIONS: dict[str, Condition] = {
    "arm": Condition("ARM alone", False, None),
    "sdedit": Condition("ACDC (SDEdit)", True, None),
    "inpaint_user": Condition("ACDC + inpainting, user's mask", True, "user"),
    "inpaint_auto": Condition("ACDC + inpainting, detector's mask", True, "auto"),
}


@dataclass
class PhysicalConfig:
    """Settings of the experiment.

    Args:
        strength: t' of the SDEdit correction; guidance_scale: CFG w; num_inference_steps: N (DDIM).
        inpaint_strength: t' of the inpainting (1.0: the masked region is redrawn from pure noise).
        base_seed: story k draws with `story_seed(base_seed, k)`.
        batch_size: stories generated at once.
    """

    strength: float = PAPER_STRENGTH
    guidance_scale: float = PAPER_GUIDANCE_SCALE
    num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS
    inpaint_strength: float = 1.0
    base_seed: int = 0
    batch_size: int = 50

    def __post_init__(self):
        for name in ("strength", "inpaint_strength"):
            steps_for_strength(self.num_inference_steps, getattr(self, name))  # raises on a bad t' or N
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if isinstance(self.base_seed, bool) or not isinstance(self.base_seed, int) or self.base_seed < 0:
            raise ValueError(f"base_seed must be a non-negative int, got {self.base_seed!r}")


def _any(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).amax(1) > 0


@torch.no_grad()
def continue_stories(texts: Sequence[Sequence[str]], first_images: torch.Tensor, arm, *, corrector=None,
                     inpainter=None, first_masks: torch.Tensor | None = None, detector=None,
                     prompts: Sequence[Sequence[str]] | None = None, config: PhysicalConfig | None = None,
                     first_index: int = 0) -> dict[str, torch.Tensor]:
    """Continue B stories from given first frames, correcting and inpainting as asked.

    Args:
        texts: B stories' sentences (all of one length N).
        first_images: (B, C, H, W) frame 1 of each story, in [0, 1]; the ARM sees its encoding.
        arm: the ARM (generate / decode / encode).
        corrector: SDEdit corrector of every frame (None: no correction).
        inpainter: an object with `inpaint(images, masks, prompts, ...)` (InpaintCorrector's interface);
            needed when masks are given or a detector is.
        first_masks: (B, 1, H, W) 0/1 masks of frame 1 to inpaint (the user's), or None.
        detector: an object with `detect(images) -> (B, 1, H, W)` 0/1 masks, run on every frame after
            its correction; rows with an empty mask are not inpainted.
        prompts: per story, the corrector's prompt of each frame (None: the sentences).
        config: PhysicalConfig; first_index: the global index of the first story (its seed).
    Returns:
        {"frames": (B, N, C, H, W) the frames shown (corrected where corrected), "inpainted": (B, N) bool}.
    """
    config = config or PhysicalConfig()
    B = len(texts)
    if B == 0:
        raise ValueError("continue_stories needs at least one story")
    N = len(texts[0])
    if any(len(t) != N for t in texts):
        raise ValueError(f"all stories need the same number of sentences; got {sorted({len(t) for t in texts})}")
    if first_images.ndim != 4 or first_images.shape[0] != B:
        raise ValueError(f"first_images must be (B={B}, C, H, W), got {tuple(first_images.shape)}")
    if first_masks is not None:
        validate_masks(first_masks, first_images)
    if (first_masks is not None or detector is not None) and inpainter is None:
        raise ValueError("masks or a detector were given but no inpainter; pass one with an inpaint() method")
    prompts = [list(p) for p in (prompts if prompts is not None else texts)]
    if len(prompts) != B or any(len(p) != N for p in prompts):
        raise ValueError(f"prompts must give one prompt per sentence of each of the {B} stories")
    # on the ARM's device, as run_stories makes them: a CUDA ARM refuses CPU generators
    device = getattr(arm, "device", "cpu")
    gens = [story_generators(story_seed(config.base_seed, first_index + b), device) for b in range(B)]
    arm_gens, corr_gens = [g[0] for g in gens], [g[1] for g in gens]
    kw = dict(guidance_scale=config.guidance_scale, num_inference_steps=config.num_inference_steps)
    contexts, shown, inpainted = [], [], []
    for i in range(N):
        if i == 0:
            tokens = arm.encode(first_images)
        else:
            tokens = arm.generate([list(t[: i + 1]) for t in texts], torch.stack(contexts, 1), arm_gens)
        images = arm.decode(tokens)
        changed = corrector is not None
        if corrector is not None:
            images = corrector.correct(images, [p[i] for p in prompts], strength=config.strength,
                                       generators=corr_gens, **kw)
        masks = first_masks if (i == 0 and first_masks is not None) else (
            detector.detect(images) if detector is not None else None)
        rows = torch.zeros(B, dtype=torch.bool)
        if masks is not None:
            masks = masks.to(images.device, images.dtype)
            rows = _any(masks).cpu()
            if rows.any():
                sel = rows.nonzero()[:, 0].tolist()
                images = images.clone()
                images[sel] = inpainter.inpaint(images[sel], masks[sel], [prompts[b][i] for b in sel],
                                                strength=config.inpaint_strength,
                                                generators=[corr_gens[b] for b in sel], **kw).to(images.dtype)
                changed = True
        contexts.append(arm.encode(images) if changed else tokens)
        shown.append(images.float().clamp(0, 1).cpu())
        inpainted.append(rows)
    return {"frames": torch.stack(shown, 1), "inpainted": torch.stack(inpainted, 1)}


def run_condition(condition: str, stories_texts: Sequence[Sequence[str]], first_images: torch.Tensor, arm, *,
                  corrector=None, inpainter=None, user_masks: torch.Tensor | None = None, detector=None,
                  prompts: Sequence[Sequence[str]] | None = None, config: PhysicalConfig | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """`continue_stories` for one of `CONDITIONS` over all stories, in batches of config.batch_size."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; allowed: {list(CONDITIONS)}")
    c, config = CONDITIONS[condition], config or PhysicalConfig()
    if c.sdedit and corrector is None:
        raise ValueError(f"condition {condition!r} corrects by SDEdit: pass a corrector")
    if c.masks == "user" and user_masks is None:
        raise ValueError(f"condition {condition!r} inpaints the user's masks: pass user_masks")
    if c.masks == "auto" and detector is None:
        raise ValueError(f"condition {condition!r} inpaints the detector's masks: pass a detector")
    S, bs, parts = len(stories_texts), config.batch_size, []
    for a in range(0, S, bs):
        z = slice(a, min(a + bs, S))
        parts.append(continue_stories(
            stories_texts[z], first_images[z], arm, corrector=corrector if c.sdedit else None,
            inpainter=inpainter if c.masks else None,
            first_masks=user_masks[z] if c.masks == "user" else None,
            detector=detector if c.masks == "auto" else None,
            prompts=None if prompts is None else prompts[z], config=config, first_index=a))
        if progress is not None:
            progress(f"{condition}: {z.stop}/{S} stories")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def compare_inpainters(inpainters: Mapping[str, Any], images: torch.Tensor, masks: torch.Tensor,
                       prompts: Sequence[str], read_wrong: Callable[[torch.Tensor], torch.Tensor],
                       read_attributes: Callable[[torch.Tensor], torch.Tensor], *, guidance_scale: float,
                       num_inference_steps: int, seed: int = 0, grow: int = 4) -> dict[str, dict[str, float]]:
    """Inpainting methods side by side on the same wrong frames and user's masks, from pure noise (t' = 1).

    Args:
        inpainters: {name: an object with inpaint()}; images (B, C, H, W) wrong frames; masks their user's masks.
        read_wrong: images -> (B,) bool, the frame still breaks the constraint.
        read_attributes: images -> (B,) float, the share of the frame's other attributes read right.
        grow: the change outside the mask is measured this many pixels away from it (the latent cells a
            mask touches are repainted, and a decoder spreads them a little).
    Returns:
        {name: {"wrong_after", "attributes", "change_outside", "change_outside_empty_mask", "seconds"}}; the
        last change is what the same call does with an empty mask (its round trip), the floor.
    """
    import time

    far = (grow_masks(masks, grow) == 0).expand_as(images)
    out = {}
    for name, inp in inpainters.items():
        gens = lambda: [torch.Generator().manual_seed(seed + b) for b in range(len(images))]  # noqa: E731
        t0 = time.perf_counter()
        got = inp.inpaint(images, masks, list(prompts), strength=1.0, guidance_scale=guidance_scale,
                          num_inference_steps=num_inference_steps, generators=gens()).float().cpu()
        seconds = time.perf_counter() - t0
        trip = inp.inpaint(images, torch.zeros_like(masks), list(prompts), strength=1.0, guidance_scale=guidance_scale,
                           num_inference_steps=num_inference_steps, generators=gens()).float().cpu()
        out[name] = {"wrong_after": float(read_wrong(got).float().mean()),
                     "attributes": float(read_attributes(got).float().mean()),
                     "change_outside": float((got - images).abs()[far].mean()),
                     "change_outside_empty_mask": float((trip - images).abs()[far].mean()),
                     "seconds": round(seconds, 2)}
    return out


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """Rare events (a few wrong frames in 200 stories) make near-constant samples, for which scipy's
    bootstrap warns that it cannot compute BCa; the interval it returns is still the one we report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=getattr(scipy_stats, "DegenerateDataWarning", RuntimeWarning))
        yield


def _ci(values: np.ndarray, seed: int, n_resamples: int) -> dict:
    with _quiet():
        return asdict(MT.bootstrap_ci(values, n_resamples=n_resamples, seed=seed))


def mean_interval(values: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> dict:
    """Mean of per-story values with a 95% bootstrap interval, NaN stories left out (all NaN: NaN)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        m = float(v.mean()) if len(v) else float("nan")
        return {"value": m, "low": float("nan"), "high": float("nan")}
    return _ci(v, seed, n_resamples)


def propagation_lift(wrong: np.ndarray, seed: int = 0, n_resamples: int = 200) -> dict:
    """How much more often frame i+1 is wrong after a wrong frame i than after a right one (i >= 2).

    Args:
        wrong: (S, N) bool, frame by frame; frame 1 (given) is left out.
    Returns:
        {"rate": share of frames 3..N wrong, "n_wrong_before": wrong frames 2..N-1, "lift": Interval dict
        with a percentile bootstrap over stories (NaN where one side is empty)}.
    """
    wrong = np.asarray(wrong, dtype=bool)
    prev, nxt = wrong[:, 1:-1], wrong[:, 2:]

    def lift(idx: np.ndarray) -> float:
        p, n = prev[idx].ravel(), nxt[idx].ravel()
        return float(n[p].mean() - n[~p].mean()) if p.any() and (~p).any() else float("nan")

    with _quiet():
        ci = MT.set_statistic_ci(len(wrong), lift, n_resamples=n_resamples, seed=seed)
    return {"rate": float(nxt.mean()), "n_wrong_before": int(prev.sum()), "lift": asdict(ci)}


def persistence_table(wrong: Mapping[str, Mapping[str, np.ndarray]], kinds: Mapping[str, str], seed: int = 0,
                      n_resamples: int = 2000) -> dict:
    """Per condition and error kind: the error rate at every frame with and without the wrong frame 1,
    and what the wrong frame 1 adds (paired by story), with 95% intervals.

    Args:
        wrong: {condition: {first frame ("normal" or a kind): (S, N) bool, the kind's count read wrong}};
            for "normal" the value is {count: (S, N)} keyed by the counts of `kinds`.
        kinds: {kind: the count it breaks}.
    """
    out: dict[str, Any] = {}
    for cond, runs in wrong.items():
        out[cond] = {}
        for kind, count in kinds.items():
            if kind not in runs:
                continue
            a, b = np.asarray(runs[kind], float), np.asarray(runs["normal"][count], float)
            out[cond][kind] = {
                "count": count, "wrong_rate": a.mean(0).tolist(), "normal_rate": b.mean(0).tolist(),
                "added": [_ci(a[:, j] - b[:, j], seed, n_resamples) for j in range(a.shape[1])],
                "added_after_1": _ci((a[:, 1:] - b[:, 1:]).mean(1), seed, n_resamples)}
    return out


def compare_conditions(wrong: Mapping[str, Mapping[str, np.ndarray]], kinds: Mapping[str, str], base: str,
                       other: str, seed: int = 0, n_resamples: int = 2000) -> dict:
    """Per kind: `other` minus `base` in the error rate over frames 2..N after the wrong frame 1, paired by
    story (negative: `other` has fewer errors), with a 95% interval."""
    out = {}
    for kind in kinds:
        if kind in wrong.get(base, {}) and kind in wrong.get(other, {}):
            d = np.asarray(wrong[other][kind], float)[:, 1:].mean(1) - np.asarray(wrong[base][kind], float)[:, 1:].mean(1)
            out[kind] = _ci(d, seed, n_resamples)
    return out


def _holds(iv: Mapping[str, float], sign: int) -> bool:
    return bool(np.isfinite(iv["low"]) and (iv["low"] > 0 if sign > 0 else iv["high"] < 0))


def physical_claims(table: Mapping, comparisons: Mapping[str, Mapping], kinds: Mapping[str, str]) -> list[dict]:
    """The paper's two claims of Fig. 5 with verdicts, from `persistence_table` and `compare_conditions`.

    1. "physical errors propagate to the next frames": for the ARM alone, what the wrong frame 1 adds to the
       errors at frame 2, one part per kind, judged by the report's rule (`claims.judge`): reproduced when every
       kind adds errors with 95% confidence, mixed when the kinds disagree.
    2. "inpainting under a user's mask stops the propagation": only where errors propagate (claim 1 holds
       for that kind): the user-mask inpainting has fewer errors over frames 2..N than ACDC's SDEdit alone
       and than the ARM, both with 95% confidence. Where nothing propagates there is nothing to stop: not
       testable here.
    """
    arm = table.get("arm", {})
    parts1, propagating = [], []
    for kind in kinds:
        if kind not in arm:
            continue
        iv = arm[kind]["added"][1] if len(arm[kind]["added"]) > 1 else None
        if iv is None:
            continue
        parts1.append({"name": kind, **iv})
        if _holds(iv, +1):
            propagating.append(kind)
    from acdc_lib.experiment.claims import judge  # the report's one rule for every claim

    v1 = judge(parts1) if parts1 else "not testable here"
    claims = [{"claim": "physical errors propagate to the next frames", "paper": "Sec. 4.1 (qualitative)",
               "parts": parts1, "verdict": v1,
               "note": ("what a physically wrong frame 1 adds to the ARM's error rate at frame 2, paired with a "
                        "right frame 1")}]
    parts2, stops = [], []
    for kind in propagating:
        vs_sdedit = comparisons.get("inpaint_user_vs_sdedit", {}).get(kind)
        vs_arm = comparisons.get("inpaint_user_vs_arm", {}).get(kind)
        if vs_sdedit is None or vs_arm is None:
            continue
        parts2 += [{"name": f"{kind}, vs SDEdit", **vs_sdedit}, {"name": f"{kind}, vs ARM", **vs_arm}]
        stops.append(_holds(vs_sdedit, -1) and _holds(vs_arm, -1))
    if not propagating:
        v2, note = "not testable here", "no kind of error propagates with the ARM alone, so there is nothing to stop"
    elif not parts2:
        v2, note = "not testable here", "the user-mask inpainting condition was not run"
    else:
        v2 = ("reproduced" if all(stops) else "mixed" if any(stops) else
              "same direction, not significant" if all(p["value"] < 0 for p in parts2) else "opposite, not significant")
        note = "error rate over frames 2..N after the wrong frame 1, inpainting minus the other, paired"
    claims.append({"claim": "inpainting under a user's mask stops the propagation", "paper": "Fig. 5 (qualitative)",
                   "parts": parts2, "verdict": v2, "note": note})
    return claims


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _show(ax, img: torch.Tensor, title: str | None = None) -> None:
    img = img.clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_first_frames(images: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]):
    """One line per kind of first frame: a few stories' frames, then their masks ({kind: (n, C, H, W)} and
    {kind: (n, 1, H, W)}, the same n). Returns the figure."""
    import matplotlib.pyplot as plt

    kinds = list(images)
    n = len(next(iter(images.values())))
    fig, axes = plt.subplots(len(kinds), 2 * n, figsize=(1.25 * 2 * n + 1.6, 1.35 * len(kinds)), squeeze=False)
    for a, k in enumerate(kinds):
        for j in range(n):
            _show(axes[a][j], images[k][j], f"story {j + 1}" if a == 0 else None)
            _show(axes[a][n + j], masks[k][j], f"mask, story {j + 1}" if a == 0 else None)
        axes[a][0].set_ylabel(k, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def _outline(ax, mask: torch.Tensor, color: str = "red", lw: float = 1.0, ls: str = "-") -> None:
    """Draw the edges of a (1, H, W) or (H, W) 0/1 mask along the pixel borders of an image shown by `_show`."""
    m = (mask.reshape(mask.shape[-2:]) > 0.5).numpy()
    H, W = m.shape
    pad = np.pad(m, 1)
    for y in range(H):
        for x in range(W):
            if not m[y, x]:
                continue
            if not pad[y, x + 1]:  # the pixel above is outside the mask
                ax.plot([x - 0.5, x + 0.5], [y - 0.5, y - 0.5], color=color, lw=lw, ls=ls)
            if not pad[y + 2, x + 1]:
                ax.plot([x - 0.5, x + 0.5], [y + 0.5, y + 0.5], color=color, lw=lw, ls=ls)
            if not pad[y + 1, x]:
                ax.plot([x - 0.5, x - 0.5], [y - 0.5, y + 0.5], color=color, lw=lw, ls=ls)
            if not pad[y + 1, x + 2]:
                ax.plot([x + 0.5, x + 0.5], [y - 0.5, y + 0.5], color=color, lw=lw, ls=ls)


def plot_fig5(given: torch.Tensor, mask: torch.Tensor, rows: Mapping[str, torch.Tensor], zoom_margin: int = 3):
    """Fig. 5's layout: the given (wrong) frame 1 with the wrong parts outlined in red, the user's mask, and the wrong
    parts enlarged on the first line; then each condition's frames ({label: (N, C, H, W)}), frame 1 with the same
    outline (dashed), so one sees whether the wrong part is still there. Returns the figure.

    Args:
        given: (C, H, W) the wrong first frame.
        mask: (1, H, W) the user's mask: the renderer's masks of the parts that make the frame wrong.
        rows: each condition's frames.
        zoom_margin: pixels around the mask shown in the enlarged panel.
    """
    import matplotlib.pyplot as plt

    lines = list(rows.items())
    N = len(lines[0][1])
    fig, axes = plt.subplots(len(lines) + 1, N, figsize=(1.3 * N + 1.8, 1.35 * (len(lines) + 1)), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    _show(axes[0][0], given, "given frame 1 (wrong part: red)")
    _outline(axes[0][0], mask)
    _show(axes[0][1], mask, "the user's mask")
    axes[0][0].axis("on")
    axes[0][1].axis("on")
    ys, xs = np.nonzero(mask.reshape(mask.shape[-2:]).numpy() > 0.5)
    if N >= 3 and len(ys):  # the wrong part enlarged: at 32 x 32 an extra ear is two pixels
        H, W = mask.shape[-2:]
        y0, y1 = max(0, ys.min() - zoom_margin), min(H, ys.max() + zoom_margin + 1)
        x0, x1 = max(0, xs.min() - zoom_margin), min(W, xs.max() + zoom_margin + 1)
        _show(axes[0][2], given[:, y0:y1, x0:x1], "wrong part, enlarged")
        _outline(axes[0][2], mask[..., y0:y1, x0:x1], lw=1.5)
        axes[0][2].axis("on")
    for a, (label, fr) in enumerate(lines, start=1):
        for i in range(N):
            _show(axes[a][i], fr[i], f"frame {i + 1}" if a == 1 else None)
        _outline(axes[a][0], mask, lw=0.8, ls="--")
        axes[a][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig
