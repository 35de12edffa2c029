"""Tiny random StoryGPT-V-toy checkpoints (two Char-LDMs, four aligned LMs) saved as `make train-toy` lays them out."""
from __future__ import annotations

from pathlib import Path

import torch

from acdc_lib.toyworld import models as M
from acdc_lib.toyworld import storygpt as S
from acdc_lib.toyworld.text import build_tokenizer


def tiny_char_ldm(seed: int = 0) -> S.CharLDM:
    """A Char-LDM over a tiny random DM and VQ (32 x 32 frames, 4 latent channels at 8 x 8, 32-wide text)."""
    from diffusers import DDIMScheduler

    from acdc_lib.sdedit import UNetCorrector

    tok = build_tokenizer()
    torch.manual_seed(seed)
    vq = M.build_vq(codebook_size=32, channels=(16, 16, 16), embed_dim=4).eval()
    unet, te, sched = M.build_dm(len(tok), latent_channels=4, channels=(16, 32), text_hidden=32, text_layers=1)
    dm = UNetCorrector(unet, te, tok, DDIMScheduler.from_config(sched.config, steps_offset=1), vq)
    model = S.CharLDM.from_dm(dm, feature_dim=16, hidden=32)
    with torch.no_grad():  # a fusion that is not the identity (zero-initialised it is)
        torch.nn.init.normal_(model.fusion.mlp[-1].weight, std=0.5)
    return model.eval()


def tiny_aligned_lm(char_ldm: S.CharLDM, frame_tokens: int = S.FRAME_TOKENS, target: str = "fused",
                    seed: int = 0) -> S.AlignedLM:
    tok = char_ldm.tokenizer
    torch.manual_seed(seed)
    cfg = S.AlignedLMConfig(n_text=len(tok), cond_len=tok.model_max_length,
                            cond_dim=int(char_ldm.unet.config.cross_attention_dim), frame_dim=4 * 8 * 8,
                            frame_tokens=frame_tokens, target=target, hidden=32, layers=1, heads=2, mapper_layers=1,
                            max_frames=96)
    return S.AlignedLM(cfg).eval()


def save_tiny_storygpt(root: str | Path) -> Path:
    """Every folder of `storygpt.VARIANTS` under `root`, with tiny random weights; returns root."""
    root = Path(root)
    ldm, noreg = tiny_char_ldm(0), tiny_char_ldm(1)
    ldm.dm.unet.save_pretrained(root / "dm" / "unet")  # the DM folder the Char-LDM is saved over, as shipped
    for part in ("text_encoder", "tokenizer", "scheduler"):
        getattr(ldm.dm, part).save_pretrained(root / "dm" / part)
    ldm.vq.save_pretrained(root / "dm" / "vae")
    ldm.save_pretrained(root / "char_ldm", base_dm=root / "dm")
    noreg.save_pretrained(root / "char_ldm_noreg")  # saved whole: both layouts load
    tiny_aligned_lm(ldm, seed=2).save_pretrained(root / "aligned_lm")
    tiny_aligned_lm(noreg, seed=3).save_pretrained(root / "aligned_lm_noreg")
    tiny_aligned_lm(ldm, target="text", seed=4).save_pretrained(root / "aligned_lm_text")
    tiny_aligned_lm(ldm, frame_tokens=0, seed=5).save_pretrained(root / "aligned_lm_caption")
    return root
