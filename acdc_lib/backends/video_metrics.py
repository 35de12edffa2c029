"""The models behind VBench's video metrics: RAFT (dynamic degree), the LAION aesthetic head, MUSIQ.

    FlowDynamics     dynamic degree: optical flow of consecutive frames -> `metrics.dynamic_degree`
    AestheticScorer  aesthetic quality: LAION's linear head on L2-normalised CLIP ViT-L/14 embeddings
    musiq_status     whether VBench's imaging-quality model (pyiqa's MUSIQ) can run here, and why not

Subject / background consistency need no model of their own: `metrics.temporal_consistency` over the
real evaluator's `embed_subject` (DINO) or `embed_images` (CLIP) features; motion smoothness is
`metrics.motion_smoothness` with an injected frame interpolator.

Nothing is downloaded: weights come from local files, and every model can be injected (tests use tiny
random ones). torchvision (for RAFT) is imported only when `build_raft` is called: its wheels on our
registry are CUDA builds, and torchvision 0.28.0 (the release for torch 2.13) fails to import beside the
CPU torch ("operator torchvision::nms does not exist"), so on CPU machines `FlowDynamics` takes any flow
callable instead. On a GPU node: `pip install torchvision==0.28.0`.
"""
from __future__ import annotations

import importlib
import numbers
import os
import warnings
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from acdc_lib import metrics as M
from acdc_lib.sdedit import ModelNotAvailableError, validate_images

TORCHVISION_PIN = "torchvision==0.28.0"  # the torchvision release built against torch 2.13
# torchvision's Chairs + Things RAFT weights, the training set of the RAFT checkpoint VBench scores with
RAFT_WEIGHT_FILES = {"large": "raft_large_C_T_V2-1bb1363a.pth", "small": "raft_small_C_T_V2-01064c6d.pth"}
RAFT_FLOW_UPDATES = 20  # VBench runs RAFT with iters=20
LAION_AESTHETIC_FILE = "sa_0_4_vit_l_14_linear.pth"  # LAION-AI/aesthetic-predictor: nn.Linear(768, 1)
VBENCH_AESTHETIC_SCALE = 10.0  # VBench reports the LAION score (about 1..10) divided by 10

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_videos(videos: torch.Tensor, min_frames: int = 2) -> None:
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] < min_frames:
        got = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"videos must be a float tensor (B, N, C, H, W) with N >= {min_frames} frames, got {got}")
    validate_images(videos.flatten(0, 1), name="videos' frames")


def _module_device(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Dynamic degree: optical flow
# --------------------------------------------------------------------------------------------
class RaftFlow(nn.Module):
    """torchvision's RAFT as a flow callable: (M, C, H, W), (M, C, H, W) in [0, 1] -> (M, 2, H', W') pixels.

    As VBench's RAFT wrapper: frames are padded to multiples of 8 by edge replication (half on each
    side), and the flow of the padded frames is returned, which VBench scores as it is.

    Args:
        raft: a torchvision RAFT (raft_large / raft_small), weights loaded.
        num_flow_updates: RAFT's refinement iterations (VBench: 20).
    """

    def __init__(self, raft: nn.Module, num_flow_updates: int = RAFT_FLOW_UPDATES):
        super().__init__()
        if isinstance(num_flow_updates, bool) or not isinstance(num_flow_updates, numbers.Integral) \
                or num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be a positive int, got {num_flow_updates!r}")
        self.raft, self.num_flow_updates = raft.eval(), int(num_flow_updates)

    @torch.no_grad()
    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        h, w = f0.shape[-2:]
        ph, pw = -h % 8, -w % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)                     # left, right, top, bottom
        device = _module_device(self.raft)
        # RAFT takes RGB in [-1, 1] (VBench's RAFT maps 0..255 there itself)
        a, b = (F.pad(x.expand(-1, 3, -1, -1).to(device).float(), pad, mode="replicate") * 2 - 1 for x in (f0, f1))
        return self.raft(a, b, num_flow_updates=self.num_flow_updates)[-1]      # (M, 2, H', W') last refinement


def build_raft(size: str = "large", weights: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's RAFT (raft_large or raft_small), from a local state dict; never downloads.

    Args:
        size: "large" (VBench's RAFT is the large one) or "small".
        weights: path of torchvision's state dict (`RAFT_WEIGHT_FILES[size]`, the file behind
            Raft_Large_Weights.C_T_V2 / Raft_Small_Weights.C_T_V2) copied to this machine; None gives
            random weights, for tests only (its flow is meaningless; a warning says so).
    Raises:
        ImportError naming torchvision when it cannot be imported; ModelNotAvailableError naming the
        weights file when it is missing or does not fit the model.
    """
    if size not in RAFT_WEIGHT_FILES:
        raise ValueError(f"size must be one of {sorted(RAFT_WEIGHT_FILES)}, got {size!r}")
    path = None if weights is None else os.path.expanduser(str(weights))
    if path is not None and not os.path.isfile(path):
        raise ModelNotAvailableError(
            f"cannot load RAFT weights from {str(weights)!r}: no such file; pass `weights`: torchvision's "
            f"{RAFT_WEIGHT_FILES[size]} (the file behind Raft_{size.title()}_Weights.C_T_V2 on download.pytorch.org), "
            "copied to this machine")
    try:
        flow_models = importlib.import_module("torchvision.models.optical_flow")
    except Exception as err:  # ImportError, or the CUDA build's RuntimeError beside a CPU torch
        raise ImportError(
            f"RAFT needs torchvision ({type(err).__name__}: {err}); on a GPU node run `pip install "
            f"{TORCHVISION_PIN}`. Its wheels on this project's registry are CUDA builds that do not import beside "
            "the CPU torch; there, pass FlowDynamics any flow callable instead") from None
    model = getattr(flow_models, f"raft_{size}")(weights=None)
    if weights is None:
        warnings.warn(f"raft_{size} with random weights: its flow is meaningless (pass weights=, the file "
                      f"{RAFT_WEIGHT_FILES[size]})", stacklevel=2)
        return model.eval()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # a missing key, a wrong shape, not a pickle at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotAvailableError(f"{path!r} is not a raft_{size} state dict ({first}); expected "
                                     f"torchvision's {RAFT_WEIGHT_FILES[size]}") from None
    return model.eval()


class FlowDynamics:
    """VBench's dynamic degree from optical flow between consecutive frames.

    Each frame pair's motion is the mean of its largest 5% flow magnitudes (`metrics.flow_top_magnitude`);
    a video is dynamic when enough pairs exceed VBench's threshold (`metrics.dynamic_degree`).

    Args:
        flow: (f0, f1), each (M, C, H, W) in [0, 1] -> (M, 2, H', W') flow from f0 to f1 in pixels;
            `FlowDynamics.from_raft` builds torchvision's RAFT (VBench's model), tests inject their own.
        fps: the videos' frame rate (VBench's threshold rises by 8 / fps below 8 fps).
        batch_size: frame pairs per flow call.
    """

    def __init__(self, flow: FlowFn, fps: float = M.VBENCH_FPS, batch_size: int = 16):
        if not callable(flow):
            raise ValueError(f"flow must be a callable (f0, f1) -> (M, 2, H, W) flow, got {type(flow).__name__}")
        M.vbench_flow_threshold(1, 1, fps)  # validates fps
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.flow, self.fps, self.batch_size = flow, float(fps), int(batch_size)

    @classmethod
    def from_raft(cls, size: str = "large", weights: str | os.PathLike | None = None, *,
                  num_flow_updates: int = RAFT_FLOW_UPDATES, device: str | torch.device = "cpu",
                  fps: float = M.VBENCH_FPS, batch_size: int = 16) -> "FlowDynamics":
        """FlowDynamics over torchvision's RAFT (`build_raft`: local weights only) on `device`."""
        return cls(RaftFlow(build_raft(size, weights).to(device), num_flow_updates), fps=fps, batch_size=batch_size)

    @torch.no_grad()
    def magnitudes(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W) videos in [0, 1], N >= 2 -> (B, N-1) float64 motion of each consecutive frame pair."""
        _check_videos(videos)
        B, N = videos.shape[:2]
        f0 = videos[:, :-1].flatten(0, 1)                                        # (B*(N-1), C, H, W)
        f1 = videos[:, 1:].flatten(0, 1)
        out = []
        for i in range(0, f0.shape[0], self.batch_size):
            a, b = f0[i:i + self.batch_size], f1[i:i + self.batch_size]
            flow = self.flow(a, b)
            if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or tuple(flow.shape[:2]) != (a.shape[0], 2):
                got = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
                raise ValueError(f"flow returned {got}; expected ({a.shape[0]}, 2, H, W)")
            out.append(M.flow_top_magnitude(flow.float()).cpu())                # (m,) per pair
        return torch.cat(out).reshape(B, N - 1)

    def dynamic(self, videos: torch.Tensor, threshold: float | None = None,
                min_count: int | None = None) -> torch.Tensor:
        """(B, N, C, H, W) videos -> (B,) bool: VBench's dynamic-or-not per video.

        Args:
            threshold: pixels a pair's motion must exceed; None: VBench's 6 * max(1, 8 / fps) * min(H, W) / 256
                for the frames' size.
            min_count: moving pairs needed; None: VBench's round(4 * N / 16).
        """
        mags = self.magnitudes(videos)
        if threshold is None:
            threshold = M.vbench_flow_threshold(int(videos.shape[-2]), int(videos.shape[-1]), self.fps)
        return M.dynamic_degree(mags, threshold, min_count)


# --------------------------------------------------------------------------------------------
# Aesthetic quality: the LAION aesthetic predictor
# --------------------------------------------------------------------------------------------
def _aesthetic_state(weights: str | os.PathLike | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be a path or a state dict, got {type(weights).__name__}")
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise ModelNotAvailableError(
            f"cannot load the aesthetic head from {str(weights)!r}: no such file; pass `weights`: LAION's "
            f"{LAION_AESTHETIC_FILE} (the linear head of the LAION-AI/aesthetic-predictor repository on GitHub, "
            "which VBench downloads), copied to this machine")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a pickle, a truncated file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotAvailableError(f"{path!r} is not a state dict ({first}); expected LAION's "
                                     f"{LAION_AESTHETIC_FILE}") from None


class AestheticScorer:
    """VBench's aesthetic quality: LAION's linear aesthetic head over L2-normalised CLIP image embeddings.

    LAION's predictor (`sa_0_4_vit_l_14_linear.pth`) is nn.Linear(768, 1) on OpenAI CLIP ViT-L/14 image
    embeddings; VBench divides its score (about 1..10) by 10 and averages over a video's frames. With
    `RealEvaluator(...).embed_images` on ViT-L/14 (its default CLIP) the pipeline is VBench's, up to
    resampling round-off in the preprocessing.

    Args:
        embed_images: (B, C, H, W) in [0, 1] -> (B, D) CLIP image embeddings (normalised again here).
        weights: path of the head's state dict, or the state dict itself ({"weight": (1, D), "bias": (1,)}).
        device: where the head runs (embeddings are moved there).
    """

    def __init__(self, embed_images: Callable[[torch.Tensor], torch.Tensor],
                 weights: str | os.PathLike | Mapping[str, torch.Tensor], device: str | torch.device = "cpu"):
        if not callable(embed_images):
            raise ValueError(f"embed_images must be a callable (B, C, H, W) -> (B, D), got "
                             f"{type(embed_images).__name__}")
        state = _aesthetic_state(weights)
        w = state.get("weight")
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[0] != 1 or set(state) != {"weight", "bias"}:
            got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in state.items()}
            raise ValueError(f"the aesthetic head must be an nn.Linear(D, 1) state dict "
                             f"{{weight: (1, D), bias: (1,)}}, got {got}")
        self.embed_images = embed_images
        self.head = nn.Linear(w.shape[1], 1)
        self.head.load_state_dict(state)
        self.head = self.head.to(device).eval()

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B,) float32 LAION aesthetic scores (about 1..10 for the real head)."""
        validate_images(images)
        emb = self.embed_images(images)
        d = self.head.in_features
        if not isinstance(emb, torch.Tensor) or tuple(emb.shape) != (images.shape[0], d):
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(f"embed_images returned {got}; the aesthetic head needs ({images.shape[0]}, {d})")
        emb = F.normalize(emb.float(), dim=-1).to(self.head.weight.device)      # (B, D) as LAION trained it
        return self.head(emb).squeeze(1).float().cpu()                           # (B,)

    @torch.no_grad()
    def video_scores(self, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(B, N, C, H, W) in [0, 1] -> (B,) float64 VBench aesthetic quality: mean over frames of score / 10."""
        _check_videos(videos, min_frames=1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        B, N = videos.shape[:2]
        flat = videos.flatten(0, 1)                                              # (B*N, C, H, W)
        s = torch.cat([self.scores(flat[i:i + batch_size]) for i in range(0, B * N, batch_size)])
        return (s.double() / VBENCH_AESTHETIC_SCALE).reshape(B, N).mean(1)


# --------------------------------------------------------------------------------------------
# Imaging quality: MUSIQ (pyiqa)
# --------------------------------------------------------------------------------------------
def musiq_status() -> tuple[bool, str]:
    """Whether VBench's imaging-quality model, MUSIQ from pyiqa, can be imported here; never installs it.

    VBench scores imaging quality with `pyiqa.archs.musiq_arch.MUSIQ` (KonIQ weights) on frames in
    [0, 1]. pyiqa 0.1.16 is on PyPI and accepts our pins (torch>=1.13, transformers>=5.0), but requires
    torchvision and timm (which requires torchvision too): on CPU machines torchvision's registry wheels
    are CUDA builds that do not import beside the CPU torch, so pyiqa cannot run there. It also pulls a
    large tree (bitsandbytes, facexlib, openai-clip, datasets, scikit-image, opencv, tensorboard, ...),
    and MUSIQ's weights download on first use. Hence it is no dependency of this package; on a GPU node
    `pip install pyiqa==0.1.16` with the weights cached beforehand. `metrics.sharpness` is an offline proxy.

    Returns:
        (available, reason): True and the pyiqa version, or False and why the import failed.
    """
    try:
        pyiqa = importlib.import_module("pyiqa")
    except Exception as err:  # ImportError, or torchvision's RuntimeError inside pyiqa's imports
        return False, (f"pyiqa cannot be imported ({type(err).__name__}: {err}); MUSIQ needs `pip install pyiqa` "
                       "with torchvision, which works beside a CUDA torch only; use metrics.sharpness as a proxy")
    return True, f"pyiqa {getattr(pyiqa, '__version__', '(unknown version)')} imports; MUSIQ is available"


__all__ = ["AestheticScorer", "FlowDynamics", "LAION_AESTHETIC_FILE", "RAFT_WEIGHT_FILES", "RaftFlow",
           "TORCHVISION_PIN", "build_raft", "musiq_status"]
