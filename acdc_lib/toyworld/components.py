"""The toy world's parts, by name, for `acdc_lib.components` (registered as the `toy` backend).

Each builder takes `model_id`, the checkpoint root (a folder with arm/ vq/ dm/ evaluator/; None: the
shipped checkpoints), and `device`; `dtype` is accepted for a uniform call and must be float32 (the toy
models are trained and shipped in float32).
"""
from __future__ import annotations

from pathlib import Path

import torch

from acdc_lib.toyworld import models as TM


def _root(model_id) -> Path:
    root = Path(model_id) if model_id is not None else TM.CHECKPOINT_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"toy checkpoint folder {str(root)!r} does not exist; pass a folder with arm/ vq/ "
                                f"dm/ evaluator/ (None: the shipped {TM.CHECKPOINT_DIR})")
    return root


def _check_dtype(dtype) -> None:
    if dtype not in (None, torch.float32, "float32"):
        raise ValueError(f"the toy models run in float32 only, got dtype={dtype!r}")


def arm(model_id=None, device="cpu", dtype=None, subfolder: str = "arm", **kwargs):
    """The toy ARM at <root>/<subfolder> (arm, arm_weak, arm_strong) with the VQ at <root>/vq."""
    _check_dtype(dtype)
    root = _root(model_id)
    return TM.load_arm(root / subfolder, root / "vq", device=device, **kwargs)


def corrector(model_id=None, device="cpu", dtype=None, **kwargs):
    """The toy DM (UNetCorrector: SDEdit `correct` and text-to-image `generate`) at <root>/dm."""
    _check_dtype(dtype)
    return TM.load_dm(_root(model_id) / "dm", device=device, **kwargs)


def video_corrector(model_id=None, device="cpu", dtype=None, **kwargs):
    """The toy video DM: the DM at <root>/dm inflated with the motion module at <root>/motion_adapter
    (a UNetVideoCorrector, AnimateDiff's design)."""
    from acdc_lib.sdedit import UNetVideoCorrector

    _check_dtype(dtype)
    root = _root(model_id)
    return UNetVideoCorrector.from_pretrained(root / "dm", device=device, motion_adapter=root / "motion_adapter",
                                              **kwargs)


def video_truth(n: int = 100, split: str = "test", n_frames: int = 32, start: int = 0, **_):
    """Prompts and exact truth of toy clips (`ToyClipTruth`): the test split's by default."""
    from acdc_lib.toyworld.clips import ToyClipTruth

    return ToyClipTruth.from_split(n, split, n_frames, start)


def evaluator(model_id=None, device="cpu", dtype=None):
    """The independent toy evaluator (CLIP + probe) at <root>/evaluator, behind the Evaluator protocol."""
    from acdc_lib.toyworld.evaluation import ToyStoryEvaluator

    _check_dtype(dtype)
    return ToyStoryEvaluator(TM.load_evaluator(_root(model_id) / "evaluator", device=device))


def ground_truth(**_):
    """Renders and labels of each story's ground-truth states."""
    from acdc_lib.toyworld.evaluation import ToyGroundTruth

    return ToyGroundTruth()


def vocabulary(**_):
    """The toy world's words, for the rule-based memory."""
    from acdc_lib.toyworld.vocabulary import toy_vocabulary

    return toy_vocabulary()


def inpainter(model_id=None, device="cpu", dtype=None, method: str = "blend", jump_length: int = 3,
              jump_n_sample: int = 3, **kwargs):
    """The toy DM at <root>/dm as an inpainter. method "blend": UNetCorrector.inpaint, diffusers' method for
    a UNet without mask channels (the kept region replaced by the original, noised to the level of each
    step); "repaint": RePaint's resampling through diffusers' RePaintScheduler (RePaintInpainter)."""
    from acdc_lib.sdedit import RePaintInpainter

    _check_dtype(dtype)
    if method not in ("blend", "repaint"):
        raise ValueError(f"toy inpainter method {method!r} is not available; allowed: 'blend', 'repaint'")
    dm = TM.load_dm(_root(model_id) / "dm", device=device, **kwargs)
    return dm if method == "blend" else RePaintInpainter(dm, jump_length=jump_length, jump_n_sample=jump_n_sample)


def detector(model_id=None, device="cpu", dtype=None, **kwargs):
    """The physical-error detector at <root>/detector (`detect(images)` -> masks of wrong regions)."""
    from acdc_lib.toyworld.physical import PhysicalErrorDetector

    _check_dtype(dtype)
    path = _root(model_id) / "detector"
    if not path.is_dir():
        raise FileNotFoundError(f"no detector at {str(path)!r}: train it with `python -m acdc_lib.toyworld.train "
                                f"detector --out {_root(model_id)}`")
    return PhysicalErrorDetector.from_pretrained(path, **kwargs).to(device).eval()


def physical_truth(**_):
    """First frames with a physical error (two suns or moons, three ears, no tail) and the user's masks."""
    from acdc_lib.toyworld.physical import ToyPhysicalTruth

    return ToyPhysicalTruth()


def story_generator(model_id=None, device="cpu", dtype=None, variant: str = "storygpt_v", **kwargs):
    """StoryGPT-V-toy (`storygpt.StoryGPTVGenerator`): the aligned LM and the Char-LDM of `variant` (storygpt_v,
    no_reg, text_embedding, caption_only) from <root>/char_ldm*/ and <root>/aligned_lm*/, which `make train-toy`
    trains; kwargs: guidance_scale, num_inference_steps."""
    from acdc_lib.toyworld import storygpt

    _check_dtype(dtype)
    root = _root(model_id)
    if variant not in storygpt.VARIANTS:
        raise ValueError(f"unknown StoryGPT-V-toy variant {variant!r}; allowed: {sorted(storygpt.VARIANTS)}")
    return storygpt.StoryGPTVGenerator.from_pretrained(root, variant, device=device, **kwargs)


COMPONENTS = {"arm": {"toy": arm}, "corrector": {"toy": corrector}, "evaluator": {"toy": evaluator},
              "ground_truth": {"toy": ground_truth}, "vocabulary": {"toy": vocabulary},
              "video_corrector": {"toy": video_corrector}, "video_truth": {"toy": video_truth},
              "inpainter": {"toy": inpainter}, "detector": {"toy": detector}, "physical_truth": {"toy": physical_truth},
              "story_generator": {"storygpt_v": story_generator}}
