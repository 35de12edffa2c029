"""Story metrics: frame consistency, CLIPScore, FID, StoryGPT-V's attribute scores, physical validity.

Pure functions over tensors; every model is passed in (never loaded here), so the toy evaluator
(a tiny CLIPModel + attribute probe) and the real CLIP / Inception models on a GPU node plug into
the same code. Frames of S stories of N frames are (S, N, C, H, W) float tensors in [0, 1].

Uncertainty: every number comes with a 95% bootstrap interval over stories (`bootstrap_ci`, scipy).
Per-story means (consistency, CLIPScore, accuracy, validity) are resampled directly; set-level
statistics (FID, macro-F1) are recomputed on each resample of story indices (`set_statistic_ci`).

VBench's video metrics (the paper's Table 3) are here as per-video functions of features, flow
magnitudes or pixels: `temporal_consistency` (subject consistency on DINO features, background
consistency on CLIP features), `dynamic_degree`, `motion_smoothness`, and `sharpness` (an
imaging-quality proxy). Their (B,) per-video values feed `bootstrap_ci` like any per-story value; the
models behind them (RAFT, the LAION aesthetic head, MUSIQ) are in `acdc_lib.backends.video_metrics`.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.stats
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_f1_score
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's published pixel normalisation
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def _check_frames(frames: Any, name: str = "frames") -> None:
    if not isinstance(frames, torch.Tensor) or not frames.dtype.is_floating_point or frames.ndim != 5:
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{name} must be a float tensor (S, N, C, H, W) in [0, 1], got {got}")
    if frames.numel() and not (0.0 <= frames.min().item() and frames.max().item() <= 1.0):
        raise ValueError(f"{name} has values in [{frames.min().item():.4g}, {frames.max().item():.4g}]; need [0, 1]")


def _check_labels(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool or x.ndim != 2:
        got = (x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an integer tensor (S, N) of class indices, got {got}")
    return x.long()


# --------------------------------------------------------------------------------------------
# Bootstrap intervals (scipy)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap confidence interval: value (on all data), [low, high]."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"

    def signed(self) -> str:
        """A change with its interval, 3 decimals and signs: "+0.044 [+0.025, +0.071]"."""
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def bootstrap_ci(values: Any, stat: Callable = np.mean, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int | np.random.Generator = 0, method: str = "BCa") -> Interval:
    """Bootstrap confidence interval of `stat` over per-story values (scipy.stats.bootstrap).

    Args:
        values: (S,) one value per story, S >= 2 (set-level statistics: `set_statistic_ci`).
        stat: statistic of a 1-D sample; vectorised if it takes `axis` (np.mean does).
        confidence: confidence level in (0, 1).
        n_resamples: bootstrap resamples.
        seed: int or numpy Generator (the resampling's only randomness).
        method: scipy's "BCa" (default), "percentile" or "basic".
    Returns:
        Interval(stat(values), low, high). A constant sample has the degenerate interval (v, v, v)
        (scipy's BCa is undefined there and would return NaN).
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"values must be a 1-D array of >= 2 finite numbers (one per story), got shape {x.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    value = float(stat(x))
    if np.ptp(x) == 0.0:
        return Interval(value, value, value)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    res = scipy.stats.bootstrap((x,), stat, n_resamples=int(n_resamples), confidence_level=confidence,
                                method=method, rng=rng)
    return Interval(value, float(res.confidence_interval.low), float(res.confidence_interval.high))


def set_statistic_ci(n_stories: int, fn: Callable[[np.ndarray], float], confidence: float = 0.95,
                     n_resamples: int = 200, seed: int | np.random.Generator = 0) -> Interval:
    """Percentile bootstrap of a set-level statistic (FID, macro-F1): resample stories, recompute.

    Cost: `n_resamples` calls of fn, each on a full-size resample (FID: one F x F eigenproblem per call,
    measured 1 ms for F = 64 and 4 s for Inception's F = 2048 on one CPU thread; hence B = 200 by
    default, ~15 min per row at F = 2048 on a CPU, less on a GPU).
    Percentile rather than BCa, whose jackknife would add n_stories more calls.

    Args:
        n_stories: S >= 2.
        fn: (k,) int story indices (with repeats) -> the statistic on those stories.
    """
    if isinstance(n_stories, bool) or not isinstance(n_stories, numbers.Integral) or n_stories < 2:
        raise ValueError(f"n_stories must be an int >= 2, got {n_stories!r}")
    idx = np.arange(int(n_stories))
    value = float(fn(idx))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    res = scipy.stats.bootstrap((idx,), lambda i: fn(np.asarray(i, dtype=int)), n_resamples=int(n_resamples),
                                confidence_level=confidence, method="percentile", vectorized=False, rng=rng)
    return Interval(value, float(res.confidence_interval.low), float(res.confidence_interval.high))


# --------------------------------------------------------------------------------------------
# Frame consistency
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_frames(frames: torch.Tensor, image_embedder: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
    """(S, N, C, H, W) frames in [0, 1] -> (S, N, D) CPU embeddings, through `image_embedder` in batches.

    Args:
        image_embedder: (B, C, H, W) in [0, 1] -> (B, D); e.g. the toy evaluator's CLIP or a real CLIP.
        device: where each batch is sent before the call (None: as given).
    """
    _check_frames(frames)
    S, N = frames.shape[:2]
    flat = frames.reshape(S * N, *frames.shape[2:])                              # (S*N, C, H, W)
    out = torch.cat([image_embedder(flat[i:i + batch_size].to(device or flat.device)).float().cpu()
                     for i in range(0, S * N, batch_size)])
    if out.ndim != 2 or out.shape[0] != S * N:
        raise ValueError(f"image_embedder returned {tuple(out.shape)}; expected ({S * N}, D)")
    return out.reshape(S, N, -1)                                                 # (S, N, D)


@dataclass
class Consistency:
    """Frame consistency: per_story (S,) mean over consecutive pairs; per_pair (S, N-1) for curves."""

    per_story: torch.Tensor
    per_pair: torch.Tensor


def frame_consistency(embeddings: torch.Tensor) -> Consistency:
    """Cosine similarity of consecutive frames' image embeddings, averaged per story.

    The ACDC paper (Sec. 4.1, after Esser et al., 2023) calls it the sum of cosine similarities of
    consecutive frames; its Table 1 values lie in [0, 1], so the sum is normalised by the N-1 pairs
    (Esser et al. average over consecutive pairs). We report that mean.

    Args:
        embeddings: (S, N, D) image embeddings of S stories of N >= 2 frames.
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 3 or embeddings.shape[1] < 2:
        got = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must be a tensor (S, N, D) with N >= 2 frames, got {got}")
    e = F.normalize(embeddings.double(), dim=-1)                                 # (S, N, D)
    pairs = (e[:, 1:] * e[:, :-1]).sum(-1)                                       # (S, N-1) cos(x^i, x^{i+1})
    return Consistency(per_story=pairs.mean(1), per_pair=pairs)


# --------------------------------------------------------------------------------------------
# CLIPScore (torchmetrics) with any transformers CLIPModel
# --------------------------------------------------------------------------------------------
class _FeaturesOnly(nn.Module):
    """What torchmetrics' CLIPScore calls, with transformers 5's output objects reduced to tensors."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.config = clip.config  # CLIPScore reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(out):
        return out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5: an output object

    def get_image_features(self, pixel_values):
        return self._tensor(self.clip.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return self._tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class _TensorProcessor:
    """A processor for [0, 1] tensors: resize to image_size x image_size + normalise in torch, tokenize text.

    Story frames are square, so CLIP's resize-shortest-side + centre crop reduces to this resize.

    Written here because transformers' image processors expect 0-255 images (they would rescale
    [0, 1] floats a second time) and the toy CLIP has no image processor at all.
    """

    def __init__(self, tokenizer, image_size: int, mean, std, text_kwargs: Mapping[str, Any]):
        self.tokenizer, self.image_size, self.text_kwargs = tokenizer, image_size, dict(text_kwargs)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True, **_):
        if images is not None:
            x = torch.stack([im.float() for im in images])                       # (B, C, H, W) in [0, 1]
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                                  align_corners=False).clamp(0, 1)  # bicubic overshoot only; inputs were checked
            return {"pixel_values": (x - self.mean) / self.std}
        return self.tokenizer(list(text), return_tensors="pt", **self.text_kwargs)


def clipscore_from_clip_model(clip_model: nn.Module, processor_or_tokenizer, image_size: int | None = None,
                              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                              text_kwargs: Mapping[str, Any] | None = None) -> Callable[[], tuple]:
    """A `model_name_or_path` callable for torchmetrics' CLIPScore from any transformers CLIPModel.

    Args:
        clip_model: a transformers CLIPModel (real or tiny random; weights already loaded).
        processor_or_tokenizer: a CLIPProcessor (its tokenizer, size, mean and std are used) or a tokenizer.
        image_size: side the vision tower takes (default: the processor's crop size, else the model's config).
        mean, std: per-channel pixel normalisation (default: the processor's, else OpenAI CLIP's).
        text_kwargs: tokenizer keyword arguments (default {"padding": True}).
    Returns:
        fn() -> (model with tensor-valued get_image_features / get_text_features, processor).
    """
    ip = getattr(processor_or_tokenizer, "image_processor", None)
    tok = getattr(processor_or_tokenizer, "tokenizer", None) or processor_or_tokenizer
    if image_size is None:
        crop = getattr(ip, "crop_size", None)
        image_size = crop["height"] if isinstance(crop, Mapping) else clip_model.config.vision_config.image_size
    mean = tuple(mean if mean is not None else getattr(ip, "image_mean", None) or OPENAI_CLIP_MEAN)
    std = tuple(std if std is not None else getattr(ip, "image_std", None) or OPENAI_CLIP_STD)
    processor = _TensorProcessor(tok, int(image_size), mean, std, text_kwargs or {"padding": True})
    model = _FeaturesOnly(clip_model).eval()
    return lambda: (model, processor)


@torch.no_grad()
def clip_score(frames: torch.Tensor, texts: Sequence[Sequence[str]], model_fn: Callable[[], tuple]) -> torch.Tensor:
    """Per-story CLIPScore (torchmetrics): max(100 * mean_i cos(E_image(x^i), E_text(u^i)), 0).

    torchmetrics' CLIPScore returns only the running mean of what it was given, so it is computed
    once per story (its N frames in one batch); the row's value is the mean over stories, and the
    per-story values feed the bootstrap. The clamp at 0 is torchmetrics', applied per story.

    Args:
        frames: (S, N, C, H, W) in [0, 1].
        texts: S lists of N strings (the text each frame is scored against).
        model_fn: `model_name_or_path` callable, e.g. from `clipscore_from_clip_model`.
    Returns:
        (S,) float64 scores in [0, 100].
    """
    _check_frames(frames)
    S, N = frames.shape[:2]
    if len(texts) != S or any(len(t) != N or isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be {S} lists of {N} strings (one per frame), got {len(texts)} entries")
    metric = CLIPScore(model_name_or_path=model_fn)
    # CLIPScore moves the model to the images' device: send the images to the model instead.
    device = next(metric.model.parameters()).device
    out = []
    for s in range(S):
        metric.reset()
        metric.update(list(frames[s].to(device)), [str(t) for t in texts[s]])
        out.append(float(metric.compute()))
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# FID (torchmetrics) on the evaluator's features
# --------------------------------------------------------------------------------------------
class FeatureModule(nn.Module):
    """Wraps an image embedder as FID's feature module: (B, C, H, W) -> (B, num_features)."""

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], num_features: int):
        super().__init__()
        self.embed, self.num_features = embed, int(num_features)  # num_features skips FID's dummy forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def _fid_metric(feature: nn.Module) -> FrechetInceptionDistance:
    if not isinstance(getattr(feature, "num_features", None), int):
        raise ValueError("feature_module needs an int attribute num_features (wrap it in FeatureModule)")
    return FrechetInceptionDistance(feature=feature, reset_real_features=True)


@torch.no_grad()
def fid(real_images: torch.Tensor, fake_images: torch.Tensor, feature_module: nn.Module,
        batch_size: int = 256) -> float:
    """Frechet distance between the feature distributions of two image sets (torchmetrics FID).

    Args:
        real_images, fake_images: (M, C, H, W) in [0, 1], M >= 2 each (as the module expects them).
        feature_module: nn.Module (B, C, H, W) -> (B, F) with an int `num_features` (see FeatureModule);
            the metric and the images go to the device of its parameters (CPU if it has none).
    """
    for name, x in (("real_images", real_images), ("fake_images", fake_images)):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] < 2:
            raise ValueError(f"{name} must be a tensor (M, C, H, W) with M >= 2, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    device = next(iter(feature_module.parameters()), torch.empty(0)).device
    metric = _fid_metric(feature_module).to(device)
    for x, real in ((real_images, True), (fake_images, False)):
        for i in range(0, x.shape[0], batch_size):
            metric.update(x[i:i + batch_size].to(device), real=real)
    return fid_value(float(metric.compute()))


# FID is a squared distance: a value this far below 0 is the matrix square root's rounding, not a distance
FID_ROUNDING = 1e-6


def fid_value(value: float, tolerance: float = FID_ROUNDING) -> float:
    """A computed FID with the matrix square root's rounding below 0 read as 0 (identical sets give 0, not -0.000).

    A value below -tolerance is not rounding: it is returned unchanged, for the caller to see.
    """
    return 0.0 if -tolerance <= value <= 0.0 else float(value)


def fid_rank_deficient(n_frames: int, n_features: int) -> bool:
    """Whether `n_frames` images give a rank-deficient covariance of `n_features`-dim features.

    A sample covariance of n points has rank at most n - 1, so it is full rank only when n > F. FID on a
    rank-deficient covariance depends on the matrix square root of a singular matrix: its value is not a
    distance between the two distributions, and a comparison of such values says nothing.
    """
    for name, v in (("n_frames", n_frames), ("n_features", n_features)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return n_frames <= n_features


def fid_with_ci(real_features: torch.Tensor, fake_features: torch.Tensor, n_resamples: int = 200,
                confidence: float = 0.95, seed: int | np.random.Generator = 0) -> Interval:
    """FID from precomputed per-story features, with a paired bootstrap over stories.

    FID is a set-level statistic: each resample draws S story indices with replacement, takes those
    stories' real AND fake frames (paired: the same stories), and recomputes FID through torchmetrics
    (features passed through an identity module, so the feature network runs once). Resampling
    repeats stories, which lowers the effective sample size: FID's small-sample bias makes the
    bootstrap distribution sit somewhat above the full-data value.

    Args:
        real_features, fake_features: (S, N, F) features of the reference and generated frames.
    """
    if real_features.ndim != 3 or real_features.shape != fake_features.shape:
        raise ValueError(f"real_features and fake_features must both be (S, N, F), got "
                         f"{tuple(real_features.shape)} and {tuple(fake_features.shape)}")
    S, N, Fdim = real_features.shape
    if fid_rank_deficient(S * N, Fdim):
        warnings.warn(f"FID on {S * N} frames with {Fdim}-dim features: the covariances are rank-deficient",
                      stacklevel=2)
    metric = _fid_metric(FeatureModule(nn.Identity(), Fdim))

    def fn(idx: np.ndarray) -> float:
        metric.reset()
        metric.update(real_features[idx].reshape(-1, Fdim), real=True)
        metric.update(fake_features[idx].reshape(-1, Fdim), real=False)
        return fid_value(float(metric.compute()))

    return set_statistic_ci(S, fn, confidence=confidence, n_resamples=n_resamples, seed=seed)


# --------------------------------------------------------------------------------------------
# StoryGPT-V's attribute scores and physical validity
# --------------------------------------------------------------------------------------------
@dataclass
class AttributeScores:
    """Accuracy and F1 of one attribute. correct: (S, N) bool per frame; per_story: (S,) accuracy."""

    correct: torch.Tensor
    per_story: torch.Tensor
    accuracy: float
    f1: float


def macro_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 (mean over classes of per-class F1) of flattened predictions (torchmetrics).

    Classes absent from both target and prediction are left out of the mean (torchmetrics' rule).
    """
    return float(multiclass_f1_score(pred.reshape(-1), target.reshape(-1), num_classes=num_classes, average="macro"))


def attribute_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> AttributeScores:
    """Char-Acc / Char-F1 (BG-Acc / BG-F1 ...) in StoryGPT-V's sense, for one single-label attribute.

    StoryGPT-V (Sec. 4.1) reports a fine-tuned classifier's accuracy and F1 on generated frames,
    following earlier story-visualisation work, where accuracy is exact match per frame and F1 is
    averaged over classes. Our frames have one character and one background each (single-label),
    where micro-F1 equals accuracy, so F1 here is macro-F1: a class the model collapses onto or
    never draws lowers it even when accuracy looks fine.

    Args:
        pred, target: (S, N) class indices of S stories of N frames.
        num_classes: number of classes of the attribute.
    """
    pred, target = _check_labels(pred, "pred"), _check_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    for name, x in (("pred", pred), ("target", target)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} has classes outside [0, {num_classes - 1}]: {sorted(set(x.view(-1).tolist()))}")
    correct = pred == target                                                     # (S, N) exact match per frame
    return AttributeScores(correct=correct, per_story=correct.double().mean(1),
                           accuracy=float(correct.double().mean()), f1=macro_f1(pred, target, num_classes))


# --------------------------------------------------------------------------------------------
# VBench video metrics (Huang et al., 2024), as the paper's Table 3 reports them
# --------------------------------------------------------------------------------------------
VBENCH_FPS = 8.0  # VBench samples videos at about 8 fps; its flow threshold is set for that rate
VBENCH_FLOW_TOP_FRACTION = 0.05  # a frame pair's motion: the mean of its largest 5% flow magnitudes
# cv2.Laplacian's 3 x 3 kernel (ksize=1): the usual "variance of the Laplacian" focus measure
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey, as cv2.cvtColor and PIL's "L" convert RGB


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_images(images: Any, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point or images.ndim != 4 \
            or images.shape[1] not in (1, 3):
        got = (images.dtype, tuple(images.shape)) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a float tensor (B, C, H, W) with C in (1, 3), values in [0, 1], got {got}")
    if images.numel() and not (0.0 <= images.min().item() and images.max().item() <= 1.0):
        raise ValueError(f"{name} has values in [{images.min().item():.4g}, {images.max().item():.4g}]; need [0, 1]")


def _check_features(features: Any) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or not features.dtype.is_floating_point or features.ndim != 3 \
            or features.shape[1] < 2 or features.shape[2] < 1:
        got = (features.dtype, tuple(features.shape)) if isinstance(features, torch.Tensor) \
            else type(features).__name__
        raise ValueError(f"features must be a float tensor (B, N, D) with N >= 2 frames and D >= 1, got {got}")
    if not torch.isfinite(features).all():
        raise ValueError("features has non-finite values (NaN or inf)")
    zero = (features.norm(dim=-1) == 0).nonzero()
    if len(zero):
        raise ValueError(f"features has all-zero vectors (no direction, cosine undefined) at (video, frame) "
                         f"{[tuple(z) for z in zero[:5].tolist()]}")
    return features


def temporal_consistency_per_frame(features: torch.Tensor) -> torch.Tensor:
    """VBench's per-frame consistency term: (cos(f_1, f_i) + cos(f_{i-1}, f_i)) / 2 for frames i = 2..N.

    VBench's subject consistency (DINO features) and background consistency (CLIP features) share this
    formula. Each cosine is clamped at 0 as VBench does (`max(0.0, cos)`), so a frame opposite to its
    neighbour counts as unrelated rather than as negative consistency.

    Args:
        features: (B, N, D) per-frame embeddings of B videos of N >= 2 frames, any scale (normalised here).
    Returns:
        (B, N) float64: column 0 is 1.0 (the first frame has no term), column i the term of frame i + 1;
        the mean of columns 1.. is `temporal_consistency`.
    """
    e = F.normalize(_check_features(features).double(), dim=-1)                 # (B, N, D) unit vectors
    to_first = (e[:, :1] * e[:, 1:]).sum(-1).clamp(min=0.0)                      # (B, N-1) cos(f_1, f_i)
    to_prev = (e[:, :-1] * e[:, 1:]).sum(-1).clamp(min=0.0)                      # (B, N-1) cos(f_{i-1}, f_i)
    ones = torch.ones(e.shape[0], 1, dtype=torch.float64, device=e.device)
    return torch.cat([ones, (to_first + to_prev) / 2], dim=1)                    # (B, N)


def temporal_consistency(features: torch.Tensor) -> torch.Tensor:
    """VBench's subject / background consistency of each video: the mean of its frames' terms.

    Per video, the mean over frames i = 2..N of (max(0, cos(f_1, f_i)) + max(0, cos(f_{i-1}, f_i))) / 2
    (see `temporal_consistency_per_frame`). VBench uses DINO ViT-B/16 CLS features for subject
    consistency and CLIP ViT-B/32 image features for background consistency; any embedder can be used.

    Args:
        features: (B, N, D) per-frame embeddings, N >= 2, any scale.
    Returns:
        (B,) float64 in [0, 1]; 1.0 for a video whose frames all point the same way.
    """
    return temporal_consistency_per_frame(features)[:, 1:].mean(1)


def flow_top_magnitude(flow: torch.Tensor, fraction: float = VBENCH_FLOW_TOP_FRACTION) -> torch.Tensor:
    """VBench's motion statistic of one frame pair: the mean of its largest `fraction` of flow magnitudes.

    Only the fastest 5% of pixels count, so a small moving subject on a still background registers.

    Args:
        flow: (M, 2, H, W) optical flow (x, y displacement in pixels) of M frame pairs.
        fraction: share of pixels kept, in (0, 1]; int(H * W * fraction) must be >= 1.
    Returns:
        (M,) float64 magnitudes in pixels.
    """
    if not isinstance(flow, torch.Tensor) or not flow.dtype.is_floating_point or flow.ndim != 4 or flow.shape[1] != 2:
        got = (flow.dtype, tuple(flow.shape)) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"flow must be a float tensor (M, 2, H, W) of pixel displacements, got {got}")
    if not torch.isfinite(flow).all():
        raise ValueError("flow has non-finite values (NaN or inf)")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    h, w = flow.shape[-2:]
    k = int(h * w * fraction)  # VBench's cut_index = int(h * w * 0.05)
    if k < 1:
        raise ValueError(f"a {h} x {w} flow field has int({h} * {w} * {fraction}) = 0 pixels in its top fraction; "
                         f"need H * W * fraction >= 1")
    rad = flow.double().square().sum(1).sqrt().flatten(1)                       # (M, H*W) |flow| per pixel
    return rad.topk(k, dim=1).values.mean(1)                                     # (M,)


def vbench_flow_threshold(height: int, width: int, fps: float = VBENCH_FPS) -> float:
    """VBench's flow threshold for a moving frame pair: 6 * max(1, 8 / fps) * min(H, W) / 256 pixels.

    Args:
        height, width: frame size the flow was computed at (the threshold scales with the shorter side).
        fps: the video's frame rate; below VBench's 8 fps, frames are further apart and the bar rises.
    """
    if not (_is_int(height) and _is_int(width)) or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive ints, got {height!r} and {width!r}")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0 or not np.isfinite(fps):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return max(1.0, VBENCH_FPS / float(fps)) * 6.0 * min(int(height), int(width)) / 256.0


def vbench_min_moving_pairs(n_frames: int) -> int:
    """How many frame pairs must move for VBench to call a video dynamic: round(4 * N / 16).

    Python's round (half to even), as VBench computes it: 16 frames -> 4, 8 -> 2, 10 -> 2, 2 -> 0.
    With 0 (N <= 2) every video counts as dynamic, a quirk of VBench's rule that is kept here.

    Args:
        n_frames: N >= 2 frames of the video.
    """
    if not _is_int(n_frames) or n_frames < 2:
        raise ValueError(f"n_frames must be an int >= 2, got {n_frames!r}")
    return round(4 * (int(n_frames) / 16.0))


def dynamic_degree(magnitudes: torch.Tensor, threshold: float, min_count: int | None = None) -> torch.Tensor:
    """VBench's dynamic degree per video: True when at least `min_count` frame pairs move faster than `threshold`.

    VBench (`DynamicDegree.check_move`) counts the consecutive frame pairs whose motion statistic
    (`flow_top_magnitude` of RAFT's flow) exceeds thres = 6 * max(1, 8 / fps) * min(H, W) / 256
    (`vbench_flow_threshold`) and calls the video dynamic once that count reaches
    count_num = round(4 * N / 16) (`vbench_min_moving_pairs`). The benchmark's number is the share of
    dynamic videos: `dynamic_degree(...).double()` feeds `bootstrap_ci`.

    Args:
        magnitudes: (B, N-1) non-negative motion magnitudes of each video's consecutive frame pairs
            (optical flow or any displacement), N >= 2.
        threshold: strict lower bound for a moving pair, >= 0, in the magnitudes' units.
        min_count: moving pairs needed, an int in [0, N-1]; None: VBench's round(4 * N / 16).
    Returns:
        (B,) bool.
    """
    if not isinstance(magnitudes, torch.Tensor) or not magnitudes.dtype.is_floating_point or magnitudes.ndim != 2 \
            or magnitudes.shape[1] < 1:
        got = (magnitudes.dtype, tuple(magnitudes.shape)) if isinstance(magnitudes, torch.Tensor) \
            else type(magnitudes).__name__
        raise ValueError(f"magnitudes must be a float tensor (B, N-1) with N-1 >= 1 frame pairs, got {got}")
    if not torch.isfinite(magnitudes).all() or (magnitudes.numel() and magnitudes.min().item() < 0):
        raise ValueError(f"magnitudes must be finite and >= 0, got values in "
                         f"[{magnitudes.min().item():.4g}, {magnitudes.max().item():.4g}]")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold < np.inf:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    pairs = magnitudes.shape[1]
    if min_count is None:
        min_count = vbench_min_moving_pairs(pairs + 1)
    elif not _is_int(min_count) or not 0 <= min_count <= pairs:
        raise ValueError(f"min_count must be an int in [0, {pairs}] (the number of frame pairs) or None, "
                         f"got {min_count!r}")
    return (magnitudes > threshold).sum(1) >= int(min_count)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of each grey image: a cheap imaging-quality proxy, NOT VBench's MUSIQ.

    VBench's imaging quality is MUSIQ (a learned no-reference quality model, see
    `acdc_lib.backends.video_metrics.musiq_status`). Blur and over-smoothing lower this proxy too,
    but it also rises with noise and with busy content, so compare it only between methods drawing
    the same content. Computed as OpenCV users do: BT.601 grey in 0..255 units, cv2's 3 x 3 Laplacian
    kernel, population variance; over the valid (unpadded) interior, so borders do not count.

    Args:
        images: (B, C, H, W) float in [0, 1], C in {1, 3}, H and W >= 3.
    Returns:
        (B,) float64 (0..255 units squared; 0 for a flat image).
    """
    _check_images(images)
    if min(images.shape[-2:]) < 3:
        raise ValueError(f"images must be at least 3 x 3 pixels for a 3 x 3 Laplacian, got {tuple(images.shape)}")
    x = images.double()
    if x.shape[1] == 3:
        luma = torch.tensor(_LUMA, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
        x = (x * luma).sum(1, keepdim=True)                                      # (B, 1, H, W)
    lap = F.conv2d(x * 255.0, _LAPLACIAN.to(x.device).view(1, 1, 3, 3))         # (B, 1, H-2, W-2)
    return lap.flatten(1).var(dim=1, unbiased=False)                             # (B,)


def linear_interpolate(f0: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """The middle frame as the mean of its two neighbours: a baseline interpolator for `motion_smoothness`.

    VBench interpolates with AMT-S (a learned video frame interpolation network), whose weights are not
    available offline; this baseline is exact only where pixels change linearly in time (fades, still
    frames), so under it any motion lowers the score, smooth or not.

    Args:
        f0, f2: (M, C, H, W) frames i and i + 2.
    Returns:
        (M, C, H, W) (f0 + f2) / 2.
    """
    if not isinstance(f0, torch.Tensor) or not isinstance(f2, torch.Tensor) or f0.shape != f2.shape or f0.ndim != 4:
        got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (f0, f2)]
        raise ValueError(f"f0 and f2 must be tensors (M, C, H, W) of the same shape, got {got[0]} and {got[1]}")
    return (f0 + f2) / 2


@torch.no_grad()
def motion_smoothness(videos: torch.Tensor,
                      interpolate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """VBench's motion smoothness: how well odd frames are re-created from their even neighbours.

    VBench's rule: keep frames 0, 2, 4, ..., interpolate a middle frame between each consecutive pair,
    and compare the K = (N - 1) // 2 middles with the original frames 1, 3, ..., 2K - 1 (with N even,
    the last frame has no right neighbour and is not scored). Per video, the mean absolute error over
    those frames in 0..255 units gives (255 - MAE) / 255. The prediction is clipped to [0, 1] as
    VBench's conversion to uint8 does; unlike VBench, frames are not rounded to 8 bits.

    Args:
        videos: (B, N, C, H, W) float in [0, 1], N >= 3.
        interpolate: (f0, f2), each (M, C, H, W) frames i and i + 2 -> (M, C, H, W) frame i + 1; VBench
            uses AMT-S, `linear_interpolate` is the model-free baseline. Called once with M = B * K.
    Returns:
        (B,) float64 in [0, 1]; 1.0 when every middle frame is re-created exactly.
    """
    _check_frames(videos, "videos")
    B, N, C, H, W = videos.shape
    if N < 3:
        raise ValueError(f"videos need N >= 3 frames (an odd frame between two even ones), got N = {N}")
    if not callable(interpolate):
        raise ValueError(f"interpolate must be a callable (f0, f2) -> middle frame, got {type(interpolate).__name__}")
    K = (N - 1) // 2                                                             # middle frames scored
    f0 = videos[:, 0:2 * K:2].reshape(B * K, C, H, W)                            # frames 0, 2, ..., 2K-2
    f2 = videos[:, 2:2 * K + 1:2].reshape(B * K, C, H, W)                        # frames 2, 4, ..., 2K
    truth = videos[:, 1:2 * K:2]                                                 # (B, K, C, H, W) 1, 3, ..., 2K-1
    pred = interpolate(f0, f2)
    if not isinstance(pred, torch.Tensor) or tuple(pred.shape) != (B * K, C, H, W):
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"interpolate returned {got}; expected ({B * K}, {C}, {H}, {W})")
    if not torch.isfinite(pred).all():
        raise ValueError("interpolate returned non-finite values (NaN or inf)")
    pred = pred.reshape(B, K, C, H, W).to(truth.device).double().clamp(0.0, 1.0)
    mae = (pred - truth.double()).abs().mul(255.0).flatten(1).mean(1)            # (B,) 0..255 units
    return (255.0 - mae) / 255.0
