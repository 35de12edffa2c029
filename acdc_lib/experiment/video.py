"""The video extension's experiment (Eq. 4-6; the paper's Table 3 and Fig. 6): rows of videos, their scores.

Rows (`VIDEO_ROWS`) run `acdc_lib.loop.run_video` with one prompt per video: the ARM alone for N frames,
ACDC on the first chunk of L frames (the paper) at t' = 0.6 and 0.4, and ACDC on every chunk. Two more
rows continue each video from its true first frame, so every later frame has an exact truth: the ARM
on its own context, and the oracle, whose context at every frame is the true earlier frames (what
errors the ARM makes afresh, against what it inherits). Video k of every row draws from the same seed.

Scores (`score_videos`) are VBench's dimensions, read by an Evaluator:
    subject consistency     `embed_subject` features (DINO on GPU nodes), VBench's formula
    background consistency  `embed_images` features (CLIP)
    dynamic degree          per-step motion magnitudes (`read_motion` positions where the evaluator reads
                            them; else absent), VBench's rule on them
    motion smoothness       with a `physics` step function: the share of frames whose read (position,
                            facing) is the physics' next step from the frame before
    imaging quality         sharpness (variance of the Laplacian), against the true frames' where given
    identity kept           `read_identity` heads that agree with the video's own frame 1, per frame
Every number is per video; tables give means with 95% bootstrap intervals over videos, and paired
differences between rows on the same videos.

The module knows no model: the ARM, the video corrector, the evaluator and the truth come in as objects.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from acdc_lib import metrics as M
from acdc_lib.io import atomic_write_bytes
from acdc_lib.experiment.scoring import _per_frame
from acdc_lib.loop import run_video, story_seed
from acdc_lib.types import LoopConfig


@dataclass(frozen=True)
class VideoRow:
    """One row of the video table.

    Args:
        label: the table's label.
        correct_chunks: run_video's policy ("none", "first", "all").
        strength: t' of the correction (None: the experiment's).
        start: "prompt" (free generation) or "true_first" (continued from the true first frame).
        oracle: every frame's context is the true earlier frames (start must be "true_first").
    """

    label: str
    correct_chunks: str = "none"
    strength: float | None = None
    start: str = "prompt"
    oracle: bool = False


VIDEO_ROWS: dict[str, VideoRow] = {
    "arm": VideoRow("ARM"),
    "acdc_first": VideoRow("ACDC, first chunk (t'=0.6)", "first", 0.6),
    "acdc_first_t04": VideoRow("ACDC, first chunk (t'=0.4)", "first", 0.4),
    "acdc_all": VideoRow("ACDC, every chunk (t'=0.6)", "all", 0.6),
    "arm_from_true": VideoRow("ARM from the true frame 1", start="true_first"),
    "oracle": VideoRow("ARM with true earlier frames (oracle)", start="true_first", oracle=True),
}


@dataclass
class VideoExperiment:
    """Settings shared by every row.

    Args:
        num_frames: N (the paper: 32); chunk_length: L (the paper: 16).
        strength: t' of rows that leave it None; guidance_scale, num_inference_steps: the video DM's CFG and N.
        base_seed: video k draws from story_seed(base_seed, k).
        batch_size: videos per batched call (results do not depend on it).
    """

    num_frames: int = 32
    chunk_length: int = 16
    strength: float = 0.6
    guidance_scale: float = 7.5
    num_inference_steps: int = 20
    base_seed: int = 0
    batch_size: int = 25

    def __post_init__(self):
        for k in ("num_frames", "chunk_length", "num_inference_steps", "batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if self.chunk_length > self.num_frames:
            raise ValueError(f"chunk_length {self.chunk_length} exceeds num_frames {self.num_frames}")


def _arm_device(arm) -> torch.device:
    """Where the ARM samples, so its generators live there (the real ARMs refuse generators elsewhere)."""
    return torch.device(getattr(arm, "device", "cpu"))


def _row(name: str) -> VideoRow:
    if name not in VIDEO_ROWS:
        raise ValueError(f"unknown video row {name!r}; rows: {list(VIDEO_ROWS)}")
    return VIDEO_ROWS[name]


@torch.no_grad()
def oracle_videos(arm, prompts: Sequence[str], true_tokens: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """(B, N, C, H, W): frame 1 decoded from the true tokens, frame j >= 2 generated from the true tokens of
    frames 1..j-1 (the ARM windows them as it does its own), with the ARM's generator of each video."""
    from acdc_lib.loop import story_generators

    B, N = true_tokens.shape[:2]
    gens = [story_generators(s, _arm_device(arm))[0] for s in seeds]  # a CUDA ARM refuses CPU generators
    texts = [[p] for p in prompts]
    frames = [arm.decode(true_tokens[:, 0])]
    for j in range(1, N):
        frames.append(arm.decode(arm.generate(texts, true_tokens[:, :j], gens)))
    return torch.stack(frames, 1).cpu()


def generate_row(name: str, prompts: Sequence[str], arm, video_corrector, exp: VideoExperiment, *,
                 first_tokens: torch.Tensor | None = None, true_tokens: torch.Tensor | None = None,
                 arm_chunk: torch.Tensor | None = None, indices: Sequence[int] | None = None) -> dict[str, Any]:
    """One row's videos: {"frames": (B, N, C, H, W) final frames, "tokens": (B, N, n) the ARM's tokens (None
    for the oracle), "arm_frames": (B, N, C, H, W) the ARM's frames before any correction (None for the
    oracle), "seconds": wall time}.

    first_tokens: (B, 1, n) true first-frame tokens (rows that start from it); true_tokens: (B, N, n)
    true tokens of every frame (the oracle). arm_chunk: (B, L, n) the ARM row's first L tokens: rows that
    correct from the prompt start from them instead of drawing the same frames again (with the same
    seed the ARM draws exactly these; only the draws after the first chunk then come from a restarted
    stream). indices: each video's index k (seed story_seed(base_seed, k)).
    """
    row = _row(name)
    B = len(prompts)
    idx = list(range(B)) if indices is None else list(indices)
    seeds = [story_seed(exp.base_seed, k) for k in idx]
    t0 = time.perf_counter()
    if row.oracle:
        if true_tokens is None:
            raise ValueError(f"row {name!r} needs true_tokens (B, N, n), the true frames' tokens")
        frames = torch.cat([oracle_videos(arm, prompts[i:i + exp.batch_size], true_tokens[i:i + exp.batch_size],
                                          seeds[i:i + exp.batch_size]) for i in range(0, B, exp.batch_size)])
        return {"frames": frames, "tokens": None, "arm_frames": None, "seconds": time.perf_counter() - t0}
    if row.start == "true_first" and first_tokens is None:
        raise ValueError(f"row {name!r} starts from the true first frame: pass first_tokens (B, 1, n)")
    prefix = first_tokens if row.start == "true_first" else (
        arm_chunk if row.correct_chunks != "none" else None)
    if prefix is arm_chunk and arm_chunk is not None and tuple(arm_chunk.shape[:2]) != (B, exp.chunk_length):
        raise ValueError(f"arm_chunk must hold the first L={exp.chunk_length} tokens of the {B} videos, "
                         f"got shape {tuple(arm_chunk.shape)}")
    config = LoopConfig(strength=row.strength or exp.strength, guidance_scale=exp.guidance_scale,
                        num_inference_steps=exp.num_inference_steps)
    frames, tokens, arm_frames = [], [], []
    for i in range(0, B, exp.batch_size):
        res = run_video(list(prompts[i:i + exp.batch_size]), arm, video_corrector if row.correct_chunks != "none" else None,
                        num_frames=exp.num_frames, chunk_length=exp.chunk_length, correct_chunks=row.correct_chunks,
                        config=config, seeds=seeds[i:i + exp.batch_size], device=_arm_device(arm),
                        prefix_tokens=prefix[i:i + exp.batch_size] if prefix is not None else None)
        frames.append(torch.stack([v.final_frames for v in res.videos]))
        tokens.append(torch.stack([v.arm_tokens for v in res.videos]))
        arm_frames.append(torch.stack([v.arm_frames for v in res.videos]))
    return {"frames": torch.cat(frames), "tokens": torch.cat(tokens), "arm_frames": torch.cat(arm_frames),
            "seconds": time.perf_counter() - t0}


def first_chunk_from_every_chunk(first: str, every: str, exp: VideoExperiment, out: Mapping[str, Any] | None) -> dict | None:
    """Row `first` (the first chunk corrected) read off row `every` (every chunk corrected), when exact.

    With N <= 2L both rows take the same steps until the second chunk is complete: the same first chunk
    (the ARM row's), its correction from the same stream at the same t', and the ARM's draws after it
    from the same context and the same restarted stream. Only then does `every` correct the second
    chunk, and no frame comes after it. So `first`'s frames are `every`'s first L final frames followed
    by its ARM frames, and its tokens are `every`'s: the row costs nothing to make.

    Returns {"frames", "tokens", "arm_frames", "seconds": 0.0, "from": every}, or None where it is not
    exact (another t', N > 2L, rows of another kind) or `out` (`generate_row`'s of `every`) is None.
    `out` must come from the same `arm_chunk` (or none) that `first` would be generated with: given a
    first chunk, the ARM's stream restarts after it, so the draws after it depend on that choice.
    """
    a, b = _row(first), _row(every)
    same = (a.correct_chunks, b.correct_chunks, a.start, b.start, a.oracle, b.oracle) == \
        ("first", "all", "prompt", "prompt", False, False) and (a.strength or exp.strength) == (b.strength or exp.strength)
    if out is None or not same or exp.num_frames > 2 * exp.chunk_length or out.get("arm_frames") is None:
        return None
    L = exp.chunk_length
    frames = torch.cat([out["frames"][:, :L], out["arm_frames"][:, L:]], 1)
    return {"frames": frames, "tokens": out["tokens"], "arm_frames": out["arm_frames"], "seconds": 0.0, "from": every}


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def score_videos(videos: torch.Tensor, evaluator, *, physics: Callable | None = None,
                 reference: torch.Tensor | None = None, truth: Mapping[str, torch.Tensor] | None = None,
                 dynamic_threshold: float = 0.5, flow=None, aesthetic=None) -> dict[str, np.ndarray]:
    """Per-video (and per-frame) scores of (B, N, C, H, W) videos in [0, 1].

    Args:
        evaluator: embed_images (background); optional embed_subject, read_motion, read_identity.
        physics: (cell, facing) -> next (cell, facing) long tensors: motion smoothness against it.
        reference: (B, N, C, H, W) true frames of the same videos: sharpness relative to theirs.
        truth: {head: (B, N) long} true labels of the same videos (read_identity's and read_motion's
            "cell" / "facing" heads): per-frame accuracy against the truth.
        dynamic_threshold: the motion magnitude (in read_motion's position units) a step must exceed
            to count as moving, for the dynamic degree.
        flow: for an evaluator that reads no motion, an optical-flow reader with `magnitudes(videos)` and
            `fps` (`backends.video_metrics.FlowDynamics`, RAFT): the dynamic degree on VBench's threshold.
        aesthetic: a scorer with `video_scores(videos)` (`backends.video_metrics.AestheticScorer`, LAION's
            head): the aesthetic quality.
    Returns:
        {name: (B,) or (B, N) float array}. Per video: subject, background, dynamic (0/1), displacement
        (mean |step|), smoothness, sharpness, sharpness_rel, identity_kept; per frame ("<name>_pf"):
        subject_to_first, background_to_first, identity_kept, and acc_<head> where a truth is given.
    """
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] < 2:
        raise ValueError(f"videos must be a (B, N >= 2, C, H, W) tensor, got "
                         f"{tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__}")
    out: dict[str, np.ndarray] = {}
    B, N = videos.shape[:2]
    bg = _per_frame(evaluator.embed_images, videos)
    out["background"] = M.temporal_consistency(bg).numpy()
    out["background_to_first_pf"] = _cos_to_first(bg)
    subject = getattr(evaluator, "embed_subject", None)
    if subject is not None:
        f = _per_frame(subject, videos)
        out["subject"] = M.temporal_consistency(f).numpy()
        out["subject_to_first_pf"] = _cos_to_first(f)
    read = getattr(evaluator, "read_motion", None)
    if read is not None:
        mo = _per_frame(read, videos)
        step = (mo["position"][:, 1:] - mo["position"][:, :-1]).abs()                   # (B, N-1)
        out["displacement"] = step.mean(1).numpy()
        out["dynamic"] = M.dynamic_degree(step, dynamic_threshold).double().numpy()
        if physics is not None:
            cell, facing = physics(mo["cell"][:, :-1], mo["facing"][:, :-1])
            ok = (cell == mo["cell"][:, 1:]) & (facing == mo["facing"][:, 1:])
            out["smoothness"] = ok.double().mean(1).numpy()
        if truth is not None:
            for head, key in (("x_cell", "cell"), ("facing", "facing")):
                if head in truth:
                    out[f"acc_{head}_pf"] = (mo[key] == truth[head]).double().numpy()
    elif flow is not None:
        mags = flow.magnitudes(videos)                                                   # (B, N-1) pixels
        out["displacement"] = mags.mean(1).numpy()
        thr = M.vbench_flow_threshold(int(videos.shape[-2]), int(videos.shape[-1]), flow.fps)
        out["dynamic"] = M.dynamic_degree(mags, thr).double().numpy()
    if aesthetic is not None:
        out["aesthetic"] = aesthetic.video_scores(videos).double().numpy()
    sharp = _per_frame(M.sharpness, videos).double()                                    # (B, N)
    out["sharpness"] = sharp.mean(1).numpy()
    out["sharpness_pf"] = sharp.numpy()
    if reference is not None:
        ref = _per_frame(M.sharpness, reference).double()
        out["sharpness_rel"] = (sharp.mean(1) / ref.mean(1).clamp(min=1e-9)).numpy()
    ident = getattr(evaluator, "read_identity", None)
    if ident is not None:
        heads = _per_frame(ident, videos)
        kept = torch.stack([(v == v[:, :1]).double() for v in heads.values()]).mean(0)   # (B, N)
        out["identity_kept_pf"] = kept.numpy()
        out["identity_kept"] = kept[:, 1:].mean(1).numpy()
        if truth is not None:
            for head, v in heads.items():
                if head in truth:
                    out[f"acc_{head}_pf"] = (v == truth[head]).double().numpy()
    return out


def _cos_to_first(features: torch.Tensor) -> np.ndarray:
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    return (f * f[:, :1]).sum(-1).numpy()                                                # (B, N)


# --------------------------------------------------------------------------------------------
# Tables and claims
# --------------------------------------------------------------------------------------------
TABLE3_METRICS: dict[str, str] = {
    "subject": "subject consistency", "background": "background consistency", "dynamic": "dynamic degree",
    "smoothness": "motion smoothness", "sharpness_rel": "imaging quality (sharpness / true frames')",
    "aesthetic": "aesthetic quality (LAION head / 10)",
    "identity_kept": "identity kept (share of heads as in frame 1)",
}


def mean_ci(values: np.ndarray, seed: int = 0) -> dict[str, float]:
    """{"value", "low", "high"}: the mean over videos and its 95% bootstrap interval."""
    v = np.asarray(values, dtype=float)
    iv = M.bootstrap_ci(v, seed=seed)
    return {"value": float(iv.value), "low": float(iv.low), "high": float(iv.high)}


def paired_diff(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """mean(a - b) over the same videos with its 95% bootstrap interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired rows must score the same videos, got shapes {a.shape} and {b.shape}")
    return mean_ci(a - b, seed=seed)


def video_table(scores: Mapping[str, Mapping[str, np.ndarray]], metrics: Mapping[str, str] = TABLE3_METRICS,
                seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{row: {metric: mean with interval}} for the metrics each row has."""
    return {row: {m: mean_ci(s[m], seed) for m in metrics if m in s} for row, s in scores.items()}


def later_frames(per_frame: np.ndarray, chunk_length: int) -> np.ndarray:
    """(B,) mean over frames L+1..N of a (B, N) per-frame score: the frames after the corrected chunk."""
    if per_frame.shape[1] <= chunk_length:
        raise ValueError(f"no frame after the first chunk: N={per_frame.shape[1]}, L={chunk_length}")
    return per_frame[:, chunk_length:].mean(1)


def table3_claims(scores: Mapping[str, Mapping[str, np.ndarray]], chunk_length: int, seed: int = 0) -> list[dict]:
    """The paper's Table 3 and Fig. 6 claims as paired differences on the same videos, with verdicts.

    Each entry: claim, paper, parts [{name, value, low, high}], verdict (acdc_lib.experiment.claims's
    `judge`, the report's rule for every row: a saturated [0, 0] part gives no verdict). Claims whose metric is absent
    say "not testable here" with the reason.
    """
    from acdc_lib.experiment.claims import judge  # the report's one rule for every claim

    arm, acdc = scores.get("arm"), scores.get("acdc_first")
    # imaging quality: sharpness over the true frames' where there are true frames, else the raw sharpness
    imaging = "sharpness_rel" if all("sharpness_rel" in s for s in scores.values()) else "sharpness"
    out = []

    def claim(text, paper, parts_spec, sign=1, note="", kind="increase"):
        parts, missing = [], []
        for label, a_row, b_row, key, fn in parts_spec:
            a, b = scores.get(a_row), scores.get(b_row)
            if a is None or b is None or key not in a or key not in b:
                missing.append(f"{key} of {a_row} / {b_row}")
                continue
            va, vb = (fn(a[key]), fn(b[key])) if fn else (a[key], b[key])
            d = paired_diff(va, vb, seed)
            parts.append({"name": label, **d})
        if missing and not parts:
            verdict = "not testable here"
        else:
            verdict = judge(parts, sign, kind)
        out.append({"claim": text, "paper": paper, "parts": parts, "verdict": verdict,
                    "note": note + (f" (absent: {', '.join(missing)})" if missing else "")})

    if arm is not None and acdc is not None:
        claim("ACDC raises subject and background consistency of ARM video", "Table 3: both rise, by a large margin",
              [("subject consistency, ACDC - ARM", "acdc_first", "arm", "subject", None),
               ("background consistency, ACDC - ARM", "acdc_first", "arm", "background", None)])
        claim("ACDC keeps the dynamic degree", "Table 3: it does not decrease",
              [("dynamic degree, ACDC - ARM", "acdc_first", "arm", "dynamic", None),
               ("mean displacement, ACDC - ARM", "acdc_first", "arm", "displacement", None)],
              note="the paper claims no decrease: judged as such, not as a claim of an increase", kind="no decrease")
        has_aesthetic = "aesthetic" in arm and "aesthetic" in acdc
        claim("ACDC raises imaging and aesthetic quality", "Table 3: both rise, aesthetic most",
              [(f"imaging quality ({imaging}), ACDC - ARM", "acdc_first", "arm", imaging, None)] + ([("aesthetic quality, ACDC - ARM", "acdc_first", "arm", "aesthetic", None)]
                          if has_aesthetic else []),
              note="imaging quality is read as sharpness (MUSIQ is not available)" + (
                  "" if has_aesthetic else "; no aesthetic predictor was given (none exists for the toy world)"))
        L = chunk_length
        claim("frames after the corrected chunk stay aligned", "Fig. 6: later frames keep to the corrected ones",
              [("subject similarity to frame 1 over frames L+1..N, ACDC - ARM", "acdc_first", "arm",
                "subject_to_first_pf", lambda x: later_frames(x, L)),
               ("identity kept over frames L+1..N, ACDC - ARM", "acdc_first", "arm", "identity_kept_pf",
                lambda x: later_frames(x, L))])
    if "acdc_first" in scores and "acdc_first_t04" in scores:
        claim("t' = 0.6 refines motion more than t' = 0.4", "Sec. 3 (video extension): higher t' for temporal motion",
              [("motion smoothness, t'0.6 - t'0.4", "acdc_first", "acdc_first_t04", "smoothness", None)])
        claim("t' = 0.4 fixes local artefacts better than t' = 0.6", "Sec. 3 (video extension): lower t' for local artefacts",
              [(f"imaging quality ({imaging}), t'0.4 - t'0.6", "acdc_first_t04", "acdc_first", imaging, None)])
    return out


def save_row(path: str | Path, frames: torch.Tensor, meta: Mapping[str, Any]) -> None:
    """Write one row's frames (uint8) and metadata atomically: a killed run keeps every finished row."""
    import io

    buf = io.BytesIO()
    torch.save({"frames": (frames.clamp(0, 1) * 255).round().to(torch.uint8), "meta": dict(meta)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_row(path: str | Path) -> tuple[torch.Tensor, dict]:
    """A row written by `save_row`: (frames float in [0, 1], meta)."""
    d = torch.load(Path(path), weights_only=True)
    return d["frames"].float() / 255.0, d["meta"]


def long_video_profile(arm, prompt: str, num_frames: int = 100, seed: int = 0, parts: int = 4) -> dict[str, Any]:
    """Time per frame and resident memory as one video grows to `num_frames` frames (ARM alone).

    Returns {"frame_seconds": per frame, "rss_mb": resident memory after each of `parts` equal
    segments, "first_quarter_s" / "last_quarter_s": median seconds per frame of the first and last
    quarter (medians: on a shared CPU single frames stall for other processes), and their ratio}.
    """
    import psutil

    proc = psutil.Process()
    rss, secs = [], []
    prefix = None
    seg = max(1, num_frames // parts)
    done = 0
    while done < num_frames:
        n = min(seg, num_frames - done)
        res = run_video([prompt], arm, None, num_frames=done + n, chunk_length=1, correct_chunks="none",
                        seeds=[seed], prefix_tokens=prefix, device=_arm_device(arm))
        secs += res.frame_seconds[done:]
        prefix = res.videos[0].context_tokens[None]
        done += n
        rss.append(proc.memory_info().rss / 2 ** 20)
    q = max(1, num_frames // 4)
    first, last = float(np.median(secs[:q])), float(np.median(secs[-q:]))
    return {"frame_seconds": secs, "rss_mb": rss, "first_quarter_s": first, "last_quarter_s": last,
            "ratio_last_first": last / first}


__all__ = ["VideoRow", "VIDEO_ROWS", "VideoExperiment", "oracle_videos", "generate_row", "score_videos",
           "TABLE3_METRICS", "mean_ci", "paired_diff", "video_table", "later_frames", "table3_claims", "save_row",
           "load_row", "long_video_profile", "per_frame_ci", "plot_video_curves", "plot_profile"]


def per_frame_ci(per_frame: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """{"mean", "low", "high"}: (N,) per-frame means over videos of a (B, N) score, with 95% bootstrap intervals."""
    pf = np.asarray(per_frame, dtype=float)
    ivs = [M.bootstrap_ci(pf[:, j], seed=seed, method="percentile") for j in range(pf.shape[1])]  # BCa fails on near-constant frames
    return {"mean": np.array([iv.value for iv in ivs]), "low": np.array([iv.low for iv in ivs]),
            "high": np.array([iv.high for iv in ivs])}


def plot_video_curves(panels: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], chunk_length: int,
                      labels: Mapping[str, str] | None = None):
    """One panel per score ({title: {row: per_frame_ci(...)}}): per-frame means with 95% bands, frames after
    the first chunk of L to the right of the dotted line (the paper's Fig. 6 as curves). Returns the figure."""
    import matplotlib.pyplot as plt

    labels = dict(labels or {})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels.items()):
        for row, c in rows.items():
            x = np.arange(1, len(c["mean"]) + 1)
            ax.plot(x, c["mean"], label=labels.get(row, row))
            ax.fill_between(x, c["low"], c["high"], alpha=0.2)
        ax.axvline(chunk_length + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("frame")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_profile(frame_seconds: Sequence[float], rss_mb: Sequence[float]):
    """Seconds per frame as a video grows, and resident memory after each segment. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(np.arange(1, len(frame_seconds) + 1), frame_seconds, linewidth=0.8)
    a.set_xlabel("frame")
    a.set_ylabel("seconds")
    a.set_title("time per frame")
    b.plot(np.arange(1, len(rss_mb) + 1), rss_mb, marker="o")
    b.set_xlabel("segment")
    b.set_ylabel("MiB")
    b.set_title("resident memory")
    fig.tight_layout()
    return fig
