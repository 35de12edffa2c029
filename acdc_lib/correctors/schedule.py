"""The SDEdit schedule shared by every corrector: t' -> int(N * t') denoising steps, the paper's defaults.

t' follows diffusers' img2img `strength`: with N scheduler steps, the noise is added at the timestep
where int(N * t') steps remain, and exactly that many denoising steps run (`steps_for_strength`).
The samplers themselves are diffusers' schedulers; DDIM with steps_offset=1 and eta = 0 is the paper's.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from acdc_lib.correctors.inputs import validate_generators, validate_guidance_scale, validate_prompts
from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH

__all__ = ["DEFAULT_STRENGTH", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NUM_INFERENCE_STEPS", "steps_for_strength",
           "sdedit_timesteps", "count_unet_calls"]

# The paper's correction settings (DDIM, CFG 7.5, t' = 0.5, N = 50), under this module's older names.
DEFAULT_STRENGTH = PAPER_STRENGTH
DEFAULT_GUIDANCE_SCALE = PAPER_GUIDANCE_SCALE
DEFAULT_NUM_INFERENCE_STEPS = PAPER_NUM_INFERENCE_STEPS


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


def sdedit_timesteps(scheduler, num_inference_steps: int, steps: int, device: str | torch.device | None = None
                     ) -> torch.Tensor:
    """The last `steps` of `scheduler`'s `num_inference_steps` timesteps, as diffusers' img2img get_timesteps keeps them.

    Sets the scheduler's timesteps and, where it has one, its begin index (so multistep schedulers
    start counting at t'); the first timestep returned is the one x_0 is noised to.
    """
    scheduler.set_timesteps(num_inference_steps, device=device)
    start = (num_inference_steps - steps) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]

def _check_call(batch_size: int, prompts, strength, guidance_scale, num_inference_steps, generators):
    """Shared argument checks; returns (prompts, steps, guidance_scale, generators)."""
    prompts = validate_prompts(prompts, batch_size)
    steps = steps_for_strength(num_inference_steps, strength)
    guidance_scale = validate_guidance_scale(guidance_scale)
    generators = validate_generators(generators, batch_size)
    return prompts, steps, guidance_scale, generators


def _step_kwargs(scheduler, eta: float, generators) -> dict:
    """Keyword args scheduler.step accepts: eta (DDIM) and per-row generators (stochastic samplers)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def _ddim_from(scheduler):
    """A DDIMScheduler built from another scheduler's config with steps_offset=1 (SD v1.5 setting)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config, steps_offset=1)


def count_unet_calls(module: torch.nn.Module) -> tuple[list[tuple[int, ...]], Any]:
    """Attach a forward hook that records the input shape of every call; returns (shapes, handle).

    Call `handle.remove()` when done. len(shapes) is the number of denoiser calls; shapes[i][0]
    shows the batch each call saw (2B under classifier-free guidance).
    """
    shapes: list[tuple[int, ...]] = []

    def hook(mod, args, kwargs, out):
        sample = args[0] if args else kwargs["sample"]
        shapes.append(tuple(sample.shape))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    return shapes, handle
