"""The real models' parts, by name, for `acdc_lib.components` (registered as the `real` backend).

Every builder takes `model_id` (a Hugging Face id or a local folder written by save_pretrained; never
hard-coded), `device` and `dtype`; imports happen inside, so listing the names loads no model library.
"""
from __future__ import annotations


def _need(model_id, kind: str, example: str):
    if not model_id:
        raise ValueError(f"the {kind} needs model_id: a Hugging Face id or a local folder, e.g. {example!r}")
    return model_id


def emu3_arm(model_id=None, device="cpu", dtype=None, **kwargs):
    """Emu3 (`Emu3ForConditionalGeneration`) behind the ARM protocol."""
    from acdc_lib.backends.arms import Emu3ARM

    return Emu3ARM.from_pretrained(_need(model_id, "Emu3 ARM", "BAAI/Emu3-Gen-hf"), device=device, dtype=dtype,
                                   **kwargs)


def janus_arm(model_id=None, device="cpu", dtype=None, **kwargs):
    """Janus-Pro (`JanusForConditionalGeneration`) behind the ARM protocol."""
    from acdc_lib.backends.arms import JanusARM

    return JanusARM.from_pretrained(_need(model_id, "Janus ARM", "deepseek-community/Janus-Pro-1B"), device=device,
                                    dtype=dtype, **kwargs)


def sd_corrector(model_id=None, device="cpu", dtype=None, resolution=None, **kwargs):
    """SDEdit through a diffusers img2img pipeline (Stable Diffusion v1.5 style); also text-to-image."""
    import torch

    from acdc_lib.sdedit import PipelineCorrector

    return PipelineCorrector.from_pretrained(_need(model_id, "SD corrector", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                                             device=device, dtype=dtype or torch.float32, resolution=resolution,
                                             **kwargs)


def real_evaluator(model_id=None, device="cpu", dtype=None, **kwargs):
    """CLIP (consistency, CLIPScore), Inception (FID) and DINOv2 (subject consistency)."""
    from acdc_lib.backends.evaluator import RealEvaluator

    return RealEvaluator.from_pretrained(device=device, dtype=dtype, **({"clip_id": model_id} if model_id else {}),
                                         **kwargs)


def animatediff_corrector(model_id=None, device="cpu", dtype=None, motion_adapter=None, **kwargs):
    """SDEdit over chunks through diffusers' AnimateDiff video-to-video pipeline (an SD v1.5 base + a MotionAdapter)."""
    import torch

    from acdc_lib.sdedit import VideoPipelineCorrector

    return VideoPipelineCorrector.from_pretrained(
        _need(model_id, "AnimateDiff corrector", "stable-diffusion-v1-5/stable-diffusion-v1-5"), device=device,
        dtype=dtype or torch.float32, motion_adapter=motion_adapter, **kwargs)


def sd_inpainter(model_id=None, device="cpu", dtype=None, resolution=None, **kwargs):
    """Masked repainting through a diffusers inpainting pipeline (a Stable Diffusion v1.5 inpainting checkpoint)."""
    import torch

    from acdc_lib.sdedit import InpaintCorrector

    return InpaintCorrector.from_pretrained(
        _need(model_id, "SD inpainter", "stable-diffusion-v1-5/stable-diffusion-inpainting"), device=device,
        dtype=dtype or torch.float32, resolution=resolution, **kwargs)


COMPONENTS = {"arm": {"emu3": emu3_arm, "janus": janus_arm}, "corrector": {"sd": sd_corrector},
              "inpainter": {"sd": sd_inpainter},
              "evaluator": {"real": real_evaluator}, "video_corrector": {"animatediff": animatediff_corrector}}
