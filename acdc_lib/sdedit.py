"""SDEdit correction (Eq. 2) over diffusers: t' -> int(N * t') DDIM steps, CFG, inpainting.

t' follows diffusers' img2img `strength`: with N scheduler steps, the noise is added at the
timestep where int(N * t') steps remain, and exactly that many denoising steps run.
"""
from __future__ import annotations


def steps_for_strength(num_inference_steps: int, strength: float) -> int:
    """Denoising steps SDEdit runs for t' = `strength` out of N = `num_inference_steps`.

    Mirrors diffusers' img2img: init_timestep = min(int(N * strength), N). Raises ValueError for
    t' outside (0, 1], N < 1, or a combination where no step would run (diffusers itself then fails
    with an obscure reshape error).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if not (0.0 < float(strength) <= 1.0):
        raise ValueError(f"strength t' must be in (0, 1], got {strength!r}")
    steps = min(int(num_inference_steps * strength), num_inference_steps)
    if steps == 0:
        raise ValueError(
            f"strength t'={strength} with num_inference_steps={num_inference_steps} runs int(N*t')=0 "
            f"denoising steps; raise t' to at least {1.0 / num_inference_steps:.4g} or use more steps")
    return steps
