"""Builders of tiny, randomly initialised diffusers parts and pipelines for offline tests.

Nothing is downloaded: every part is built from a config under `torch.manual_seed(seed)`, so two
calls with the same seed give identical weights. Sizes are chosen for speed on 2 CPU cores, not for
quality; images are 16x16 (latent 8x8 with the tiny VAE's scale factor 2).

Public builders (reused by other tests and notebooks):
    tiny_tokenizer, tiny_text_encoder, tiny_unet, tiny_vae, tiny_vq, tiny_ddim_scheduler,
    tiny_sd_img2img_pipeline, tiny_sd_inpaint_pipeline, tiny_animatediff_v2v_pipeline,
    tiny_unet_corrector_parts, save_unet_corrector_parts
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AnimateDiffVideoToVideoPipeline,
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
    VQModel,
)
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

TEXT_DIM = 16  # hidden size of the tiny text encoder = the UNet's cross_attention_dim
MAX_TOKENS = 32  # tiny model_max_length: prompts are padded / truncated to this many tokens
BLOCKS = (16, 32)  # UNet channels per resolution level (2 levels: sizes must be even)


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges) over lowercase letters, digits and punctuation.

    transformers 5 ignores `vocab_file=`/`merges_file=` here, so the vocab and merges are passed as
    a dict and a list.
    """
    chars = string.ascii_lowercase + string.digits + ".,!?'-"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIP text encoder with hidden size TEXT_DIM, matching `tiny_tokenizer`'s vocab."""
    vocab_size = len(tiny_tokenizer())
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1)
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def tiny_unet(in_channels: int = 4, out_channels: int = 4, sample_size: int = 8, seed: int = 0,
              **overrides) -> UNet2DConditionModel:
    """A 2-level UNet2DConditionModel with cross-attention on TEXT_DIM-dim text embeddings."""
    config = dict(
        block_out_channels=BLOCKS, layers_per_block=1, sample_size=sample_size,
        in_channels=in_channels, out_channels=out_channels, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8)
    config.update(overrides)
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A 2-level AutoencoderKL (scale factor 2, 4 latent channels) for 3-channel images."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, layers_per_block=1, sample_size=16).eval()


def tiny_vq(seed: int = 0) -> VQModel:
    """A 2-level VQModel (scale factor 2, 4 latent channels) for 3-channel images."""
    torch.manual_seed(seed)
    return VQModel(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, layers_per_block=1, num_vq_embeddings=32, vq_embed_dim=4,
        sample_size=16).eval()


def tiny_ddim_scheduler(**overrides) -> DDIMScheduler:
    """Stable Diffusion's scheduler settings (scaled-linear betas, steps_offset=1, no clipping)."""
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    config.update(overrides)
    return DDIMScheduler(**config)


def _sd_parts(unet_in_channels: int, seed: int) -> dict:
    return dict(
        unet=tiny_unet(in_channels=unet_in_channels, out_channels=4, seed=seed),
        vae=tiny_vae(seed=seed), text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=tiny_tokenizer(), scheduler=tiny_ddim_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sd_img2img_pipeline(seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    """A Stable-Diffusion-v1.5-shaped img2img pipeline from tiny random parts (16x16 images)."""
    pipe = StableDiffusionImg2ImgPipeline(**_sd_parts(4, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_inpaint_pipeline(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """A Stable-Diffusion-inpainting-shaped pipeline (9-channel UNet: latents + mask + masked image)."""
    pipe = StableDiffusionInpaintPipeline(**_sd_parts(9, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_animatediff_v2v_pipeline(seed: int = 0) -> AnimateDiffVideoToVideoPipeline:
    """An AnimateDiff video-to-video pipeline: tiny UNet2DConditionModel + tiny MotionAdapter."""
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=BLOCKS, motion_layers_per_block=1,
                            motion_norm_num_groups=8, motion_num_attention_heads=2,
                            motion_max_seq_length=16)
    parts = _sd_parts(4, seed)
    for key in ("safety_checker", "requires_safety_checker"):
        parts.pop(key)
    pipe = AnimateDiffVideoToVideoPipeline(motion_adapter=adapter, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unet_corrector_parts(latent: str | None = None, channels: int = 3, seed: int = 0,
                              prediction_type: str = "epsilon") -> dict:
    """Parts for `acdc_lib.sdedit.UNetCorrector(**parts)`.

    Args:
        latent: None (pixel space, a `channels`-channel UNet on 16x16 images), "kl" (tiny AutoencoderKL)
            or "vq" (tiny VQModel); latent models work on 8x8x4 latents of 16x16 RGB images.
        channels: image channels in pixel space (1 or 3).
        prediction_type: the scheduler's "epsilon" or "v_prediction".
    """
    scheduler = tiny_ddim_scheduler(prediction_type=prediction_type)
    parts = dict(text_encoder=tiny_text_encoder(seed=seed), tokenizer=tiny_tokenizer(), scheduler=scheduler)
    if latent is None:
        parts.update(unet=tiny_unet(in_channels=channels, out_channels=channels, sample_size=16, seed=seed))
    elif latent in ("kl", "vq"):
        parts.update(unet=tiny_unet(seed=seed), vae=tiny_vae(seed=seed) if latent == "kl" else tiny_vq(seed=seed))
    else:
        raise ValueError(f"latent must be None, 'kl' or 'vq', got {latent!r}")
    return parts


def save_unet_corrector_parts(parts: dict, path: str | Path) -> Path:
    """Save parts with `save_pretrained` into subfolders unet/, text_encoder/, tokenizer/, scheduler/ (+ vae/)."""
    path = Path(path)
    for name in ("unet", "text_encoder", "tokenizer", "scheduler", "vae"):
        if parts.get(name) is not None:
            parts[name].save_pretrained(path / name)
    return path


def tiny_clip_model(image_size: int = 8, patch_size: int = 4, num_channels: int = 3, seed: int = 0) -> CLIPModel:
    """A random 1-layer transformers CLIPModel (hidden 16, projection 8) over the tiny tokenizer's vocabulary."""
    tok = tiny_tokenizer()
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, num_channels=num_channels)
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8)).eval()
