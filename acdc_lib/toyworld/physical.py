"""Physical errors of toy frames: wrong first frames, the user's masks, and an automatic detector.

The paper's physical constraints (Sec. 4.2, Fig. 5): a frame with two moons, three ears or no tail is
wrong, and a user can mark the wrong part for an inpainting model to repaint. Here

- `wrong_first_frames(stories, kind)` renders each story's first state with one physical error and
  gives the mask a user would draw over it: the pixels of the broken part in the wrong render and
  where it belongs in the right one (a missing tail is masked where the tail should be), grown by
  one pixel so the repaint blends in;
- `PhysicalErrorDetector` marks such regions in a frame by itself. It is trained by `train_detector`
  (`make train-toy`) on renders with a physical error drawn at random, with the user's masks as
  targets; it shares no weights, data stream or training with the evaluator's probe, which judges it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from acdc_lib.sdedit import grow_masks
from acdc_lib.toyworld.render import physically_wrong_variants, render_states
from acdc_lib.toyworld.world import SceneState

PHYSICAL_KINDS: dict[str, str] = {"two suns or moons": "sky", "three ears": "ears", "no tail": "tail"}
"""The first-frame errors of the controlled intervention -> the count each one breaks."""
_PARTS = {"sky": ("sun", "moon"), "ears": ("ear",), "tail": ("tail",)}
# every variant of `physically_wrong_variants` -> the count it breaks (the detector trains on all of them)
VARIANT_COUNT = {"two suns": "sky", "two moons": "sky", "sun and moon": "sky", "three ears": "ears",
                 "one ear": "ears", "no tail": "tail", "two tails": "tail"}


def physical_errors(counts) -> dict[str, torch.Tensor]:
    """Per count, whether it breaks physics: not one sun or moon ("sky"), not two ears, not one tail.

    Args:
        counts: {"n_suns", "n_moons", "n_ears", "n_tails"}: long tensors of one shape (e.g. the probe's reading).
    """
    return {"sky": counts["n_suns"] + counts["n_moons"] != 1, "ears": counts["n_ears"] != 2, "tail": counts["n_tails"] != 1}


def _check_kind(kind: str) -> None:
    if kind not in PHYSICAL_KINDS:
        raise ValueError(f"unknown physical error {kind!r}; allowed: {list(PHYSICAL_KINDS)}")


def wrong_state(state: SceneState, kind: str) -> SceneState:
    """`state` with the physical error `kind` (two suns by day, two moons at night)."""
    _check_kind(kind)
    v = physically_wrong_variants(state)
    if kind == "two suns or moons":
        return v["two moons" if state.time == "night" else "two suns"]
    return v[kind]


def part_masks(wrong: Sequence[SceneState], right: Sequence[SceneState], counts: Sequence[str],
               grow: int = 1) -> torch.Tensor:
    """(B, 1, H, W) float 0/1: the user's mask of each wrong frame.

    Row b covers the parts that `counts[b]` ("sky", "ears" or "tail"; None: an empty mask) names, in the
    render of `wrong[b]` and in the render of `right[b]` (so a missing part is masked where it belongs),
    grown by `grow` pixels.
    """
    if not (len(wrong) == len(right) == len(counts)):
        raise ValueError(f"wrong, right and counts must have one entry per frame, got {len(wrong)}, {len(right)}, "
                         f"{len(counts)}")
    bad = sorted({c for c in counts if c is not None and c not in _PARTS})
    if bad:
        raise ValueError(f"unknown counts {bad}; allowed: {list(_PARTS)} or None")
    pw = render_states(list(wrong), return_parts=True).parts
    pr = render_states(list(right), return_parts=True).parts
    out = torch.zeros_like(pw["sun"], dtype=torch.float32)
    for b, c in enumerate(counts):
        for p in _PARTS.get(c, ()):
            out[b] = torch.maximum(out[b], (pw[p][b] | pr[p][b]).float())
    return grow_masks(out, grow)


def wrong_first_frames(stories, kind: str, grow: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each story's first frame with the physical error `kind`, and the user's mask of it.

    Args:
        stories: B stories with ground-truth states.
        kind: one of `PHYSICAL_KINDS`, or "normal" for the right first frame (and empty masks).
        grow: pixels the mask is grown by.
    Returns:
        images (B, 3, 32, 32) in [0, 1], masks (B, 1, 32, 32) float 0/1.
    """
    if kind != "normal":
        _check_kind(kind)
    missing = [s.story_id for s in stories if not s.states]
    if missing:
        raise ValueError(f"stories {missing[:5]} have no states: wrong first frames need the toy world's states")
    right = [physically_wrong_variants(SceneState.from_dict(s.states[0]))["normal"] for s in stories]
    if kind == "normal":
        images = render_states(right).images
        return images, torch.zeros_like(images[:, :1])
    wrong = [wrong_state(r, kind) for r in right]
    return render_states(wrong).images, part_masks(wrong, right, [PHYSICAL_KINDS[kind]] * len(wrong), grow)


class ToyPhysicalTruth:
    """The toy world's physically wrong first frames, for the experiment of `acdc_lib.experiment.physical`."""

    kinds = PHYSICAL_KINDS

    def first_frames(self, stories, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, user masks) of each story's first frame with error `kind` ("normal": none); see
        `wrong_first_frames`."""
        return wrong_first_frames(stories, kind)


class PhysicalErrorDetector(nn.Module, PyTorchModelHubMixin):
    """Per-pixel logits of "this region is physically wrong", and one logit of "this frame is", for
    (B, 3, 32, 32) frames in [0, 1].

    A small encoder-decoder written here rather than a library UNet: diffusers' UNets take a timestep
    and a text condition this model has no use for. The 8x8 stage sees the whole frame (a second moon
    is wrong only beside the first), and skip connections put the mask back on the pixels.

    Args:
        channels: widths of the 32x32, 16x16 and 8x8 stages.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        c1, c2, c3 = channels
        self.channels = list(channels)
        self.enc1 = nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.SiLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.SiLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.SiLU())
        self.enc3 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c3, c3, 3, padding=1), nn.SiLU())
        self.glob = nn.Linear(c3, c3)  # the whole frame, added to every 8x8 cell
        self.mid = nn.Sequential(nn.Conv2d(c3, c3, 3, padding=1), nn.SiLU())
        self.dec2 = nn.Sequential(nn.Conv2d(c3 + c2, c2, 3, padding=1), nn.SiLU())
        self.dec1 = nn.Sequential(nn.Conv2d(c2 + c1, c1, 3, padding=1), nn.SiLU(), nn.Conv2d(c1, 1, 1))
        self.frame = nn.Linear(c3, 1)  # is anything in the frame wrong at all

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1], H and W divisible by 4 -> ((B, 1, H, W) pixel logits, (B,) frame logits)."""
        h1 = self.enc1(images * 2.0 - 1.0)
        h2 = self.enc2(h1)
        h3 = self.enc3(h2)
        h3 = self.mid(h3 + self.glob(h3.mean((2, 3)))[:, :, None, None])
        d2 = self.dec2(torch.cat([F.interpolate(h3, scale_factor=2.0), h2], 1))
        return self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), h1], 1)), self.frame(h3.mean((2, 3)))[:, 0]

    @torch.no_grad()
    def detect(self, images: torch.Tensor, threshold: float = 0.5, min_pixels: int = 2, grow: int = 1,
               batch_size: int = 512) -> torch.Tensor:
        """(B, 1, H, W) float 0/1 masks of the regions read as wrong (all 0 where none is).

        A frame gets a mask when its frame-level probability passes `threshold`: the pixels whose own
        probability passes it, if at least `min_pixels` do, grown by `grow` pixels as the user's masks are.
        The pixel head is trained with wrong pixels weighted up, so it finds a part readily; the frame head
        decides whether anything is wrong.
        """
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 4 or images.shape[-2] % 4:
            raise ValueError(f"images must be (B, 3, H, W) with H and W divisible by 4, got {tuple(images.shape)}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        device = next(self.parameters()).device
        out = []
        for i in range(0, images.shape[0], batch_size):
            pixels, frame = self(images[i:i + batch_size].to(device, torch.float32))
            p = torch.sigmoid(pixels) > threshold
            keep = (p.flatten(1).sum(1) >= min_pixels) & (torch.sigmoid(frame) > threshold)
            out.append(grow_masks(p & keep[:, None, None, None], grow).cpu())
        return torch.cat(out) if out else torch.zeros(0, 1, *images.shape[-2:])
