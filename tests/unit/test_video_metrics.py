"""VBench's video metrics (the paper's Table 3): formulas on hand-computed cases, models on tiny random ones.

What a user relies on: consistency is VBench's first-and-previous-frame cosine rule (clamped at 0);
dynamic degree counts pairs above VBench's size- and fps-dependent threshold; motion smoothness is 1.0
exactly when the interpolator re-creates the odd frames; sharpness falls with blur; the aesthetic
score is LAION's linear head on normalised CLIP embeddings divided by 10; nothing is downloaded, and
a missing model or a bad input fails with one clear error.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from acdc_lib import metrics as M
from acdc_lib.backends.evaluator import RealEvaluator
from acdc_lib.backends.video_metrics import (
    LAION_AESTHETIC_FILE,
    RAFT_WEIGHT_FILES,
    AestheticScorer,
    FlowDynamics,
    RaftFlow,
    build_raft,
    musiq_status,
)
from acdc_lib.sdedit import ModelNotAvailableError

import tiny_diffusers as td  # tests/unit is on sys.path under pytest's default import mode

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchvision_imports() -> bool:
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except Exception:  # the CUDA wheel beside a CPU torch raises RuntimeError, not ImportError
        return False
    return True


HAS_TORCHVISION = _torchvision_imports()


def rotating(n: int, theta: float) -> torch.Tensor:
    """(1, n, 2) unit features turning by `theta` radians a frame: cos(f_i, f_j) = cos((j - i) theta)."""
    t = torch.arange(n, dtype=torch.float64) * theta
    return torch.stack([t.cos(), t.sin()], -1)[None]


def square_video(n: int, step: int, size: int = 16, side: int = 4, channels: int = 1, x0: int = 2,
                 offsets: list[int] | None = None) -> torch.Tensor:
    """(1, n, C, size, size): a bright side x side square moving `step` px right per frame (or to `offsets`)."""
    v = torch.zeros(1, n, channels, size, size)
    for t in range(n):
        x = x0 + (offsets[t] if offsets is not None else step * t)
        v[0, t, :, 6:6 + side, x:x + side] = 1.0
    return v


def global_shift_flow(max_shift: int = 6):
    """A flow callable for tests: the best global integer translation (exhaustive search), as a constant field."""
    shifts = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]

    def flow(f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        err = torch.stack([(torch.roll(f0, s, dims=(-2, -1)) - f1).square().flatten(1).mean(1) for s in shifts], 1)
        best = torch.tensor(shifts, dtype=torch.float32)[err.argmin(1)]           # (M, 2) (dy, dx)
        return best.flip(1)[:, :, None, None].expand(-1, -1, *f0.shape[-2:]).clone()  # (M, 2, H, W) (x, y)

    return flow


# --------------------------------------------------------------------------------------------
# Subject / background consistency
# --------------------------------------------------------------------------------------------
def test_identical_frames_have_consistency_one_whatever_their_scale():
    f = torch.randn(3, 1, 5, generator=torch.Generator().manual_seed(0))
    feats = f.repeat(1, 4, 1) * torch.tensor([1.0, 3.0, 0.5, 7.0]).view(1, 4, 1)  # same direction, other norms
    out = M.temporal_consistency(feats)
    assert out.dtype == torch.float64 and out.shape == (3,)
    torch.testing.assert_close(out, torch.ones(3, dtype=torch.float64))


def test_rotating_features_give_the_hand_computed_value():
    # 30 degrees a frame, 3 frames: frame 2 -> (cos 30 + cos 30) / 2, frame 3 -> (cos 60 + cos 30) / 2
    c30, c60 = math.cos(math.pi / 6), 0.5
    per_frame = M.temporal_consistency_per_frame(rotating(3, math.pi / 6))
    torch.testing.assert_close(per_frame, torch.tensor([[1.0, c30, (c60 + c30) / 2]], dtype=torch.float64))
    torch.testing.assert_close(M.temporal_consistency(rotating(3, math.pi / 6)),
                               torch.tensor([(c30 + (c60 + c30) / 2) / 2], dtype=torch.float64))


def test_negative_cosines_count_as_zero_as_in_vbench():
    # 60 degrees a frame, 4 frames: cos to the first is 0.5, -0.5, -1 -> clamped to 0.5, 0, 0;
    # cos to the previous is 0.5 each time
    # terms 0.5, 0.25, 0.25 -> 1/3 (without the clamp it would be 1/12)
    torch.testing.assert_close(M.temporal_consistency(rotating(4, math.pi / 3)),
                               torch.tensor([1 / 3], dtype=torch.float64))


def test_per_frame_terms_average_to_the_video_value_and_feed_the_bootstrap():
    feats = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(1))
    per_frame, per_video = M.temporal_consistency_per_frame(feats), M.temporal_consistency(feats)
    assert per_frame.shape == (6, 5) and torch.all(per_frame[:, 0] == 1.0)
    torch.testing.assert_close(per_frame[:, 1:].mean(1), per_video)
    # only frame i's own features and the first / previous frame's enter its term
    changed = feats.clone()
    changed[:, 4] = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(M.temporal_consistency_per_frame(changed)[:, :4], per_frame[:, :4])
    ci = M.bootstrap_ci(per_video.numpy(), n_resamples=200)
    assert ci.low <= ci.value <= ci.high and ci.value == pytest.approx(float(per_video.mean()))


@pytest.mark.parametrize("bad, match", [
    (torch.randn(4, 8), r"\(B, N, D\)"),
    (torch.randn(2, 1, 8), "N >= 2"),
    (torch.randint(0, 3, (2, 3, 4)), "float"),
    (torch.tensor([[[1.0, 0.0], [float("nan"), 1.0]]]), "non-finite"),
    (torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), r"all-zero vectors .* \[\(0, 1\)\]"),
])
def test_consistency_refuses_bad_features(bad, match):
    for fn in (M.temporal_consistency, M.temporal_consistency_per_frame):
        with pytest.raises(ValueError, match=match):
            fn(bad)


# --------------------------------------------------------------------------------------------
# Dynamic degree
# --------------------------------------------------------------------------------------------
def test_flow_statistic_is_the_mean_of_the_top_five_percent():
    flow = torch.zeros(3, 2, 20, 20)                     # 400 pixels: the top 5% are 20 pixels
    flow[0, 0].view(-1)[:20], flow[0, 1].view(-1)[:20] = 6.0, 8.0       # 20 pixels of |(6, 8)| = 10
    flow[1, 0] = 1.0                                                     # everything 1 ...
    flow[1, 0].view(-1)[:10] = 10.0                                      # ... but 10 pixels of 10
    mags = M.flow_top_magnitude(flow)
    assert mags.dtype == torch.float64
    torch.testing.assert_close(mags, torch.tensor([10.0, (10 * 10 + 10 * 1) / 20, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"int\(4 \* 4 \* 0.05\) = 0"):
        M.flow_top_magnitude(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(M, 2, H, W\)"):
        M.flow_top_magnitude(torch.zeros(1, 3, 20, 20))


def test_vbench_threshold_and_count_rules():
    assert M.vbench_flow_threshold(256, 512) == pytest.approx(6.0)
    assert M.vbench_flow_threshold(64, 128, fps=4) == pytest.approx(2 * 6 * 64 / 256)  # half VBench's rate
    assert M.vbench_flow_threshold(64, 64, fps=24) == pytest.approx(1.5)                # faster: no discount
    assert [M.vbench_min_moving_pairs(n) for n in (16, 8, 10, 2, 32)] == [4, 2, 2, 0, 8]
    with pytest.raises(ValueError, match="fps must be a positive"):
        M.vbench_flow_threshold(64, 64, fps=0)
    with pytest.raises(ValueError, match="n_frames must be an int >= 2, got 1"):
        M.vbench_min_moving_pairs(1)


def test_dynamic_degree_counts_pairs_strictly_above_the_threshold():
    mags = torch.zeros(4, 7)                             # 8 frames: VBench needs round(4 * 8 / 16) = 2 moving pairs
    mags[1, [0, 5]] = 3.0                                # two moving pairs -> dynamic
    mags[2, 3], mags[2, 4] = 3.0, 2.0                    # one above, one exactly at the threshold -> not dynamic
    mags[3, :] = 2.5                                     # all moving
    assert M.dynamic_degree(mags, 2.0).tolist() == [False, True, False, True]
    assert M.dynamic_degree(mags, 2.0, min_count=3).tolist() == [False, False, False, True]
    assert M.dynamic_degree(mags, 2.0, min_count=0).tolist() == [True] * 4
    assert M.dynamic_degree(mags, 2.6).tolist() == [False, True, False, False]


@pytest.mark.parametrize("mags, threshold, min_count, match", [
    (torch.tensor([[1.0, -0.5]]), 1.0, None, r">= 0, got values in \[-0.5"),
    (torch.tensor([1.0, 2.0]), 1.0, None, r"\(B, N-1\)"),
    (torch.tensor([[1.0, 2.0]]), float("nan"), None, "threshold must be a finite number >= 0, got nan"),
    (torch.tensor([[1.0, 2.0]]), 1.0, 3, r"min_count must be an int in \[0, 2\] .* got 3"),
])
def test_dynamic_degree_refuses_bad_inputs(mags, threshold, min_count, match):
    with pytest.raises(ValueError, match=match):
        M.dynamic_degree(mags, threshold, min_count)


def test_flow_dynamics_tells_a_static_video_from_a_moving_one():
    static = square_video(8, step=0, size=32)
    moving = square_video(8, step=3, size=32)            # 3 px a frame > VBench's 6 * 32 / 256 = 0.75 px
    videos = torch.cat([static, moving])
    dyn = FlowDynamics(global_shift_flow())
    mags = dyn.magnitudes(videos)
    assert mags.shape == (2, 7) and mags.dtype == torch.float64
    torch.testing.assert_close(mags, torch.tensor([[0.0] * 7, [3.0] * 7], dtype=torch.float64))
    assert dyn.dynamic(videos).tolist() == [False, True]
    # at 1 fps VBench's bar is 8x higher (6 px here): the same 3 px a frame is not dynamic
    assert FlowDynamics(global_shift_flow(), fps=1).dynamic(videos).tolist() == [False, False]
    # a batch of one pair per call gives the same numbers
    torch.testing.assert_close(FlowDynamics(global_shift_flow(), batch_size=1).magnitudes(videos), mags)


def test_flow_dynamics_refuses_bad_flow_and_videos():
    with pytest.raises(ValueError, match=r"flow returned \(14, 2, 3\); expected \(14, 2, H, W\)"):
        FlowDynamics(lambda a, b: torch.zeros(a.shape[0], 2, 3)).magnitudes(square_video(8, 1).repeat(2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="N >= 2 frames"):
        FlowDynamics(global_shift_flow()).magnitudes(torch.rand(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="flow must be a callable"):
        FlowDynamics("raft")


def test_build_raft_names_a_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ModelNotAvailableError, match=rf"nope.pth.*no such file.*{RAFT_WEIGHT_FILES['large']}"):
        build_raft("large", missing)
    with pytest.raises(ValueError, match=r"size must be one of \['large', 'small'\], got 'medium'"):
        build_raft("medium")


class _RaftLike(nn.Module):
    """torchvision RAFT's call signature: (a, b, num_flow_updates) -> list of (M, 2, H, W), last the finest.

    Its 'flow' is the difference of the inputs' first two channels, so the wrapper's padding and scaling show."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))       # gives the wrapper a device to read
        self.calls: list[tuple] = []

    def forward(self, a, b, num_flow_updates=12):
        self.calls.append((a.min().item(), a.max().item(), num_flow_updates))
        return [torch.zeros_like(a[:, :2]), (b - a)[:, :2]]


def test_raft_wrapper_pads_to_multiples_of_8_and_feeds_minus_one_to_one():
    raft = _RaftLike()
    f0 = torch.zeros(2, 1, 36, 44)
    f1 = torch.full((2, 1, 36, 44), 0.5)
    flow = RaftFlow(raft, num_flow_updates=3)(f0, f1)
    assert flow.shape == (2, 2, 40, 48)                  # padded by edge replication, scored padded as in VBench
    assert raft.calls == [(-1.0, -1.0, 3)]               # 0 -> -1 in RAFT's input range, grey repeated to RGB
    torch.testing.assert_close(flow, torch.ones(2, 2, 40, 48))  # 0.5 -> 0 after scaling: b - a = 1 everywhere
    with pytest.raises(ValueError, match="num_flow_updates must be a positive int, got 0"):
        RaftFlow(raft, num_flow_updates=0)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision imports here")
def test_build_raft_without_torchvision_says_what_to_do():
    with pytest.raises(ImportError, match=r"RAFT needs torchvision.*pip install torchvision==0.28.0"):
        build_raft("small")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision does not import beside this torch")
def test_tiny_random_raft_runs_through_flow_dynamics():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        raft = build_raft("small")
    videos = torch.rand(2, 3, 3, 36, 44, generator=torch.Generator().manual_seed(0))
    flow = RaftFlow(raft, num_flow_updates=2)(videos[:, 0], videos[:, 1])
    assert flow.shape == (2, 2, 40, 48)                  # padded to multiples of 8, as VBench scores it
    mags = FlowDynamics(RaftFlow(raft, num_flow_updates=2)).magnitudes(videos)
    assert mags.shape == (2, 2) and torch.isfinite(mags).all() and (mags >= 0).all()


# --------------------------------------------------------------------------------------------
# Motion smoothness
# --------------------------------------------------------------------------------------------
def test_smoothness_is_one_where_linear_interpolation_is_exact():
    still = square_video(5, step=0).repeat(1, 1, 3, 1, 1)
    fade = torch.linspace(0.1, 0.9, 6).view(1, 6, 1, 1, 1).expand(1, 6, 3, 8, 8)  # pixels linear in time
    for v in (still, fade):
        torch.testing.assert_close(M.motion_smoothness(v, M.linear_interpolate),
                                   torch.ones(1, dtype=torch.float64))


def test_moving_square_scores_the_hand_computed_value():
    # side s = 4, d = 1 px a frame, 16 x 16: the mean of frames t and t+2 errs by 1/2 on 4 d columns of s rows
    # -> MAE = 2 d s / (H W) = 8 / 256 per middle frame, score 1 - 8 / 256 (channels do not change it)
    for channels in (1, 3):
        v = square_video(5, step=1, channels=channels)
        torch.testing.assert_close(M.motion_smoothness(v, M.linear_interpolate),
                                   torch.tensor([1 - 8 / 256], dtype=torch.float64))
        # an interpolator that moves the square by d re-creates the middles exactly
        shift = lambda f0, f2: torch.roll(f0, 1, dims=-1)  # noqa: E731
        torch.testing.assert_close(M.motion_smoothness(v, shift), torch.ones(1, dtype=torch.float64))


def test_jittered_motion_scores_lower_and_only_odd_frames_count():
    smooth = square_video(7, step=1)
    jitter = square_video(7, step=1, offsets=[0, 4, 2, 0, 4, 1, 6])
    s = M.motion_smoothness(torch.cat([smooth, jitter]), M.linear_interpolate)
    assert s.shape == (2,) and s[1] < s[0] - 0.02
    # with N even the last frame has no right neighbour: VBench never scores it
    v = square_video(6, step=1)
    changed = v.clone()
    changed[0, 5] = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(M.motion_smoothness(changed, M.linear_interpolate),
                               M.motion_smoothness(v, M.linear_interpolate))


def test_motion_smoothness_refuses_bad_inputs():
    with pytest.raises(ValueError, match="N >= 3 frames .* got N = 2"):
        M.motion_smoothness(torch.rand(1, 2, 1, 8, 8), M.linear_interpolate)
    with pytest.raises(ValueError, match=r"interpolate returned \(2, 1, 4, 4\); expected \(2, 1, 8, 8\)"):
        M.motion_smoothness(torch.rand(1, 5, 1, 8, 8), lambda a, b: a[..., :4, :4])
    with pytest.raises(ValueError, match=r"values in \[.*\]; need \[0, 1\]"):
        M.motion_smoothness(torch.rand(1, 5, 1, 8, 8) * 2, M.linear_interpolate)
    with pytest.raises(ValueError, match=r"same shape, got \(1, 1, 8, 8\) and \(1, 1, 4, 4\)"):
        M.linear_interpolate(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 4, 4))


# --------------------------------------------------------------------------------------------
# Imaging quality: the sharpness proxy and MUSIQ's availability
# --------------------------------------------------------------------------------------------
def test_sharpness_of_a_single_bright_pixel_is_the_hand_computed_value():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    # valid 3 x 3 Laplacian: -4 * 255 at the centre, +255 at its 4 neighbours, 0 at the corners (mean 0)
    expected = ((4 * 255) ** 2 + 4 * 255 ** 2) / 9
    torch.testing.assert_close(M.sharpness(x), torch.tensor([expected], dtype=torch.float64))
    # an RGB image with equal channels is its grey image (BT.601 weights sum to 1)
    torch.testing.assert_close(M.sharpness(x.expand(-1, 3, -1, -1)), M.sharpness(x))
    assert M.sharpness(torch.full((2, 3, 8, 8), 0.4)).tolist() == [0.0, 0.0]


def test_blur_lowers_sharpness():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    s, b = M.sharpness(x), M.sharpness(blurred)
    assert s.shape == (3,) and torch.all(b < 0.2 * s)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 8, 8), r"\(B, C, H, W\)"),
    (torch.rand(1, 2, 8, 8), r"C in \(1, 3\)"),
    (torch.rand(1, 1, 8, 8) + 1, r"need \[0, 1\]"),
    (torch.rand(1, 1, 2, 8), "at least 3 x 3"),
])
def test_sharpness_refuses_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        M.sharpness(bad)


def test_musiq_status_reports_without_installing():
    available, reason = musiq_status()
    assert isinstance(available, bool) and "pyiqa" in reason
    if importlib.util.find_spec("pyiqa") is None:
        assert not available and "cannot be imported" in reason


# --------------------------------------------------------------------------------------------
# Aesthetic quality
# --------------------------------------------------------------------------------------------
class _NoFID(nn.Module):
    num_features = 4

    def forward(self, x):
        return torch.zeros(x.shape[0], 4)


@pytest.fixture(scope="module")
def clip_ev() -> RealEvaluator:
    """The real evaluator on a tiny random CLIP (8-d embeddings): the embedder the aesthetic head reads."""
    return RealEvaluator(td.tiny_clip_model(), td.tiny_tokenizer(), _NoFID())


def head_state(dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(dim, 1)
    return {k: v.detach().clone() for k, v in lin.state_dict().items()}


def test_aesthetic_score_is_the_linear_head_on_normalised_clip_embeddings(clip_ev, tmp_path):
    state = head_state()
    torch.save(state, tmp_path / LAION_AESTHETIC_FILE)
    scorer = AestheticScorer(clip_ev.embed_images, tmp_path / LAION_AESTHETIC_FILE)
    imgs = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    e = F.normalize(clip_ev.embed_images(imgs), dim=-1)
    expected = e @ state["weight"][0] + state["bias"][0]
    torch.testing.assert_close(scorer.scores(imgs), expected)
    assert (expected - expected.mean()).abs().max() > 1e-4          # the images are scored apart
    # the embeddings' scale does not matter: LAION's head reads unit vectors
    loud = AestheticScorer(lambda x: 5.0 * clip_ev.embed_images(x), state)
    torch.testing.assert_close(loud.scores(imgs), expected)
    # VBench's per-video value: mean over frames of score / 10
    videos = imgs.reshape(2, 2, 3, 16, 16)
    torch.testing.assert_close(scorer.video_scores(videos, batch_size=3),
                               (expected.double() / 10).reshape(2, 2).mean(1), rtol=0, atol=1e-6)


def test_aesthetic_scorer_names_a_missing_file_and_a_wrong_head(clip_ev, tmp_path):
    missing = rf"gone.pth.*no such file.*{LAION_AESTHETIC_FILE}.*aesthetic-predictor"
    with pytest.raises(ModelNotAvailableError, match=missing):
        AestheticScorer(clip_ev.embed_images, tmp_path / "gone.pth")
    with pytest.raises(ValueError, match=r"nn.Linear\(D, 1\).*'weight': \(2, 8\)"):
        AestheticScorer(clip_ev.embed_images, {"weight": torch.zeros(2, 8), "bias": torch.zeros(2)})
    scorer = AestheticScorer(clip_ev.embed_images, head_state(dim=768))   # LAION's width on an 8-d CLIP
    with pytest.raises(ValueError, match=r"embed_images returned \(2, 8\); the aesthetic head needs \(2, 768\)"):
        scorer.scores(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AestheticScorer(clip_ev.embed_images, head_state()).scores(torch.rand(2, 3, 16, 16) * 3)


def test_video_metrics_return_per_video_values_for_the_bootstrap():
    videos = torch.cat([square_video(5, step=s) for s in (0, 1, 2)])
    smooth = M.motion_smoothness(videos, M.linear_interpolate).numpy()
    assert smooth[0] == pytest.approx(1.0) and smooth[0] > smooth[1] > smooth[2]
    ci = M.bootstrap_ci(smooth, n_resamples=200)
    assert isinstance(ci, M.Interval) and ci.low <= ci.value <= ci.high
    assert np.isclose(ci.value, smooth.mean())
