"""The paper's correction settings, named once and imported wherever they are used.

ACDC corrects with DDIM (eta = 0), classifier-free guidance 7.5 and SDEdit from t' = 0.5 (Eq. 2; the
paper uses t' in [0.4, 0.5] for stories and [0.4, 0.6] for video). N = 50 is diffusers' default
number of scheduler steps and the paper's.
"""
from __future__ import annotations

PAPER_STRENGTH = 0.5
PAPER_GUIDANCE_SCALE = 7.5
PAPER_NUM_INFERENCE_STEPS = 50

__all__ = ["PAPER_STRENGTH", "PAPER_GUIDANCE_SCALE", "PAPER_NUM_INFERENCE_STEPS"]
