"""Checks of what correctors take (images, videos, prompts, generators, CFG scale, masks) and resizing.

Every check raises a ValueError naming the bad value and what is allowed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["validate_images", "validate_videos", "validate_prompts", "validate_generators",
           "validate_guidance_scale", "validate_masks", "grow_masks"]


def _check_pixels(x: torch.Tensor, name: str, shape_text: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    lo, hi = x.min().item(), x.max().item()
    if not (math.isfinite(lo) and math.isfinite(hi)) or torch.isnan(x).any():
        raise ValueError(f"{name} must be finite, found min={lo} max={hi} (NaN or inf present)")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1] (no clamping is done here), "
                         f"found min={lo:.6g} max={hi:.6g} in shape {tuple(x.shape)} {shape_text}")


def validate_images(images: torch.Tensor, *, name: str = "images") -> None:
    """Check a (B, C, H, W) float image batch with C in {1, 3} and values in [0, 1].

    Args:
        images: the tensor to check.
        name: how the error message calls it.
    Raises:
        ValueError naming the shape, dtype, min or max found.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got {images.ndim}-D shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have C in {{1, 3}} channels (B, C, H, W), "
                         f"got C={images.shape[1]} in shape {tuple(images.shape)}")
    _check_pixels(images, name, "(B, C, H, W)")


def validate_videos(videos: torch.Tensor, *, name: str = "videos") -> None:
    """Check a (B, L, C, H, W) float video batch with C in {1, 3} and values in [0, 1]."""
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, L, C, H, W), got {type(videos).__name__}")
    if videos.ndim != 5:
        raise ValueError(f"{name} must be 5-D (B, L, C, H, W), got {videos.ndim}-D shape {tuple(videos.shape)}")
    if videos.shape[2] not in (1, 3):
        raise ValueError(f"{name} must have C in {{1, 3}} channels (B, L, C, H, W), "
                         f"got C={videos.shape[2]} in shape {tuple(videos.shape)}")
    _check_pixels(videos, name, "(B, L, C, H, W)")


def validate_prompts(prompts: Sequence[str], batch_size: int) -> list[str]:
    """Check there is one prompt string per batch row; return them as a list."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of {batch_size} strings (one per image), "
                         f"got {type(prompts).__name__} {prompts!r:.60}")
    prompts = list(prompts)
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} images; pass exactly one prompt per image")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings; rows {bad} are {[type(prompts[i]).__name__ for i in bad]}")
    return prompts


def validate_generators(generators: Sequence[torch.Generator] | None,
                        batch_size: int) -> list[torch.Generator] | None:
    """Check there is one torch.Generator per batch row (None: torch's global RNG, not reproducible)."""
    if generators is None:
        return None
    if isinstance(generators, torch.Generator):
        raise ValueError(f"generators must be a list of {batch_size} torch.Generator (one per row), "
                         "got a single torch.Generator")
    generators = list(generators)
    if len(generators) != batch_size:
        raise ValueError(f"got {len(generators)} generators for batch size {batch_size}; pass one per row")
    bad = [i for i, g in enumerate(generators) if not isinstance(g, torch.Generator)]
    if bad:
        raise ValueError(f"generators must be torch.Generator; rows {bad} are not")
    return generators


def validate_guidance_scale(guidance_scale: float) -> float:
    """Check the CFG scale w is a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    return float(guidance_scale)


def validate_masks(masks: torch.Tensor, images: torch.Tensor) -> None:
    """Check inpainting masks: (B, 1, H, W) like `images`, values exactly 0 (keep) or 1 (repaint)."""
    b, _, h, w = images.shape
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be a torch.Tensor of shape ({b}, 1, {h}, {w}), got {type(masks).__name__}")
    if tuple(masks.shape) != (b, 1, h, w):
        raise ValueError(f"masks must have shape (B, 1, H, W) = ({b}, 1, {h}, {w}) to match the images, "
                         f"got {tuple(masks.shape)}")
    values = torch.unique(masks.float())
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"masks must hold only 0 (keep) and 1 (repaint), found values "
                         f"{[round(v, 6) for v in values[:8].tolist()]}{' ...' if len(values) > 8 else ''}")


def grow_masks(masks: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """(B, 1, H, W) 0/1 masks grown by `pixels` in every direction (8-neighbourhood), as float."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"pixels must be an int >= 0, got {pixels!r}")
    m = masks.float()
    return F.max_pool2d(m, 2 * pixels + 1, stride=1, padding=pixels) if pixels else m


def _resize(x: torch.Tensor, size: tuple[int, int], *, nearest: bool = False) -> torch.Tensor:
    """Resize (N, C, H, W) to `size`; bilinear (antialiased) for images, nearest for 0/1 masks."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if nearest:
        return F.interpolate(x, size=size, mode="nearest-exact")
    # Bilinear weights are a convex combination, so [0, 1] stays [0, 1] up to float rounding,
    # which the clamp removes (it never changes a value by more than ~1e-7).
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)
