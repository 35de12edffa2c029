"""Physical validity of toy frames: one sun or moon, two ears, one tail (the paper's physical constraints).

The toy probe counts suns, moons, ears and tails exactly; a frame is valid when the counts are the
normal ones. Used by the toy evaluator's optional `physically_valid` reader.
"""
from __future__ import annotations

from typing import Mapping

import torch

from acdc_lib.metrics import _check_labels

COUNT_HEADS = ("n_suns", "n_moons", "n_ears", "n_tails")


def physically_valid(counts: Mapping[str, torch.Tensor], normal_ears: int = 2, normal_tails: int = 1) -> torch.Tensor:
    """(S, N) bool: the frame's predicted counts are the normal ones (ACDC Sec. 4.1, physical constraints).

    Normal: exactly one sun or moon in the sky (n_suns + n_moons == 1; which one belongs to the time
    of day is the time attribute's business), `normal_ears` ears and `normal_tails` tails.

    Args:
        counts: {"n_suns", "n_moons", "n_ears", "n_tails"}: (S, N) predicted counts.
    """
    missing = [k for k in COUNT_HEADS if k not in counts]
    if missing:
        raise ValueError(f"counts is missing {missing}; need {list(COUNT_HEADS)}")
    c = {k: _check_labels(counts[k], k) for k in COUNT_HEADS}
    shapes = {tuple(v.shape) for v in c.values()}
    if len(shapes) != 1:
        raise ValueError(f"count arrays must share one (S, N) shape, got {sorted(shapes)}")
    return (c["n_suns"] + c["n_moons"] == 1) & (c["n_ears"] == normal_ears) & (c["n_tails"] == normal_tails)


def physical_validity_rate(counts: Mapping[str, torch.Tensor], **normal) -> torch.Tensor:
    """(S,) share of each story's frames that `physically_valid` accepts."""
    return physically_valid(counts, **normal).double().mean(1)
