"""StoryGPT-V in the toy world: a Char-LDM, an LM aligned to it through [IMG] tokens, and their generator.

StoryGPT-V (Shen and Elhoseiny) visualises co-referential stories in two stages:

1. **Char-LDM** (its Sec. 3.2): the text-to-image LDM fine-tuned with a *character-augmented fused embedding*
   (Eq. 1: c^k = MLP(concat(psi(S[i_c^k]), phi(I_c^k))), the name token's text embedding fused with visual
   features of a reference image of that character; every other token keeps its text embedding), trained 80%
   fused / 10% text-only / 10% unconditional, plus L_reg (Eqs. 2-3), which pulls each character token's
   cross-attention map onto that character's segmentation mask and away from the rest.
2. **Alignment** (its Sec. 3.3): an LM reads the story as interleaved text and earlier frames (each frame's
   visual features mapped to m = 4 token embeddings, Eq. 5), emits R = 8 [IMG] tokens, and a mapper with L
   learned queries turns their last hidden states into the Char-LDM's conditioning (L x d); training pulls it
   towards the fused embedding of the *explicit* caption (Eq. 6) beside the LM loss (Eq. 4).

The toy version, and where it differs:
- The LDM is the toy DM (`models.build_dm`: a UNet2DConditionModel over the VQ's latents, a CLIPTextModel and
  the word tokenizer), fine-tuned, not retrained: the text encoder stays frozen, as theirs.
- phi, the character encoder, is the DM's own VQ encoder (frozen) followed by a small trainable CNN head
  (`CharacterEncoder`), trained with the Char-LDM, where they use CLIP ViT-L with its last two layers trainable.
  Not the evaluator's CLIP or probe: the evaluator must share no weights or features with what it judges, and
  the VQ is already the generator's autoencoder.
- The reference image of a character is the story's first frame cut down to the character by the renderer's
  exact mask (their SAM masks) and centred (`reference_crops`): the name token should carry *who* the character
  is (species, coat marking, collar colour), not where frame 1 put it or the place and time of frame 1, which
  other tokens carry and which change along the story.
- L_reg reads the cross-attention probabilities through a diffusers attention processor (`StoreCrossAttnProcessor`)
  on the masks pooled to each layer's resolution, in every cross-attention layer (the toy UNet's finest is 8 x 8,
  coarser than the SD layers theirs skip), and is weighted 1e-3 against the denoising loss, the authors' released
  code's default (the paper gives no weight; see `train.DEFAULTS`).
- The LM is a small `transformers.LlamaForCausalLM` (the toy ARM's size class) trained from scratch, as no
  pretrained toy LLM exists; the frames it reads are the VQ's latents of whole frames through one linear map
  (W_v2t) to m token embeddings, and the mapper is a `torch.nn.TransformerDecoder` over L learned queries.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from acdc_lib.correctors.inputs import validate_generators, validate_images
from acdc_lib.correctors.loading import ModelNotAvailableError
from acdc_lib.correctors.unet import UNetCorrector, encode_text
from acdc_lib.types import Story
from acdc_lib.toyworld.models import IMAGE_SIZE, TEXT_LEN
from acdc_lib.toyworld.train import DEFAULTS as TRAIN_DEFAULTS
from acdc_lib.toyworld.train import STORYGPT_MODELS, TrainConfig, _log, _optimizer, _progress
from acdc_lib.toyworld.world import SceneState, explicit_caption

N_IMG_TOKENS = 8  # R, StoryGPT-V's number of [IMG] tokens
FRAME_TOKENS = 4  # m, token embeddings per earlier frame in the LM's input
MODES = ("fused", "text", "uncond")  # the Char-LDM's three conditioning modes in training
TARGETS = ("fused", "text")  # what the aligned LM's mapped output is pulled towards (their Table 4)

# Training settings of StoryGPT-V-toy and its ablations (`train_char_ldm`, `train_aligned_lm`): defined with the
# other toy models' in `train.DEFAULTS`, where `make train-toy` reads them.
DEFAULTS: dict[str, TrainConfig] = {k: TRAIN_DEFAULTS[k] for k in STORYGPT_MODELS}


# --------------------------------------------------------------------------------------------
# Inputs and their checks
# --------------------------------------------------------------------------------------------
def check_frames(images: torch.Tensor, name: str = "reference images") -> None:
    """Refuse anything but a (B, 3, 32, 32) float batch with finite values in [0, 1]."""
    validate_images(images, name=name)
    if tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{name} must have shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) (toy frames), "
                         f"got {tuple(images.shape)}")


def check_stories(stories: Sequence[Story]) -> None:
    """Refuse an empty batch or a story without sentences."""
    if len(stories) == 0:
        raise ValueError("no stories given: pass at least one Story")
    for s in stories:
        if len(s.sentences) == 0:
            raise ValueError(f"story {s.story_id!r} has no sentences; a story needs at least one sentence per frame")


def reference_crops(images: torch.Tensor, masks: torch.Tensor, background: float = 0.5) -> torch.Tensor:
    """The character of each frame alone: its masked pixels on a grey background, moved to the frame's centre.

    Args:
        images: (B, 3, 32, 32) in [0, 1].
        masks: (B, 1, 32, 32) bool or {0, 1}, the character's pixels (the renderer's `masks`).
        background: the grey that replaces every other pixel.
    Returns:
        (B, 3, 32, 32) in [0, 1].
    """
    check_frames(images, "reference frames")
    if masks.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(f"masks must have shape {(images.shape[0], 1, *images.shape[-2:])}, got {tuple(masks.shape)}")
    m = masks.float()
    if bool((m.flatten(1).sum(1) == 0).any()):
        empty = (m.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"reference masks of rows {empty} are empty: the character must be visible in the reference")
    crop = images * m + background * (1 - m)  # (B, 3, H, W)
    H, W = images.shape[-2:]
    ys, xs = torch.arange(H, dtype=m.dtype), torch.arange(W, dtype=m.dtype)
    area = m.sum((1, 2, 3))  # (B,)
    cy = (m[:, 0].sum(2) * ys).sum(1) / area  # (B,) mask centroid
    cx = (m[:, 0].sum(1) * xs).sum(1) / area
    out = torch.empty_like(crop)
    for b in range(crop.shape[0]):  # the background is uniform, so rolling moves only the character
        dy, dx = int(round((H - 1) / 2 - float(cy[b]))), int(round((W - 1) / 2 - float(cx[b])))
        out[b] = torch.roll(crop[b], shifts=(dy, dx), dims=(1, 2))
    return out


def vq_latents(vq, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) in [0, 1] -> the VQ's continuous (pre-quantisation) latents (B, C, 8, 8), unscaled."""
    dtype = next(vq.parameters()).dtype
    return vq.encode(images.to(dtype) * 2.0 - 1.0).latents


# --------------------------------------------------------------------------------------------
# Stage 1 parts: phi (character encoder) and the fusion MLP (Eq. 1)
# --------------------------------------------------------------------------------------------
class CharacterEncoder(nn.Module, PyTorchModelHubMixin):
    """phi: a small CNN over the frozen VQ latents of a reference crop -> (B, feature_dim) visual features.

    Args:
        latent_channels: channels of the VQ latents (8 for the toy VQ).
        channels: widths of the two conv stages (8x8 -> 4x4 -> 2x2).
        feature_dim: size of the features fused into the name token.
    """

    def __init__(self, latent_channels: int = 8, channels: Sequence[int] = (32, 64), feature_dim: int = 64):
        super().__init__()
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, c1, 3, padding=1), nn.SiLU(), nn.Conv2d(c1, c1, 3, stride=2, padding=1),
            nn.SiLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c2, feature_dim))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) VQ latents -> (B, feature_dim)."""
        return self.net(latents)


class FusionMLP(nn.Module, PyTorchModelHubMixin):
    """Eq. 1: c^k = psi(S[i_c^k]) + MLP(concat(psi(S[i_c^k]), phi(I_c^k))).

    The skip and the zero-initialised last layer make the fine-tune start exactly at the toy DM (the fused
    token equals the text token until training moves it); the paper does not say how its MLP starts.

    Args:
        text_dim: width of the text encoder's hidden states (the UNet's cross_attention_dim).
        feature_dim: width of phi's features.
        hidden: the MLP's hidden width.
    """

    def __init__(self, text_dim: int = 64, feature_dim: int = 64, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim + feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, text_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, token_emb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) name-token embeddings, (N, feature_dim) features -> (N, text_dim) fused embeddings."""
        return token_emb + self.mlp(torch.cat([token_emb, features], dim=-1))


def name_token_mask(tokenizer, prompts: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    """(B, T) bool: the positions of each prompt's character name among the text encoder's T tokens.

    Raises ValueError when a name is not one word of the vocabulary or a prompt does not contain its name.
    """
    if len(prompts) != len(names):
        raise ValueError(f"one name per prompt: got {len(prompts)} prompts and {len(names)} names")
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # (B, T), as encode_text builds them
    out = torch.zeros(ids.shape, dtype=torch.bool)
    for b, (prompt, name) in enumerate(zip(prompts, names)):
        tid = tokenizer.convert_tokens_to_ids(str(name).lower())
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"character name {name!r} is not a word of the tokenizer's vocabulary; "
                             "the toy world's names (world.NAMES) are")
        out[b] = ids[b] == tid
        if not out[b].any():
            raise ValueError(f"prompt {prompt!r} does not contain its character's name {name!r}")
    return out


# --------------------------------------------------------------------------------------------
# Cross-attention maps through a diffusers attention processor (for L_reg)
# --------------------------------------------------------------------------------------------
class StoreCrossAttnProcessor:
    """diffusers' AttnProcessor (softmax(QK^T / sqrt(d)) V) that also keeps the attention probabilities of
    cross-attention calls in `store[name]` as (B, heads, query_len, key_len), with their gradients."""

    def __init__(self, store: dict[str, torch.Tensor], name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(f"layer {self.name!r}: StoreCrossAttnProcessor handles (B, N, C) transformer attention "
                             f"only, got hidden_states of shape {tuple(hidden_states.shape)}")
        cross = encoder_hidden_states is not None
        batch, key_len = hidden_states.shape[0], (encoder_hidden_states if cross else hidden_states).shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, key_len, batch)
        query = attn.to_q(hidden_states)
        if not cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, N, key_len), batch-major
        if cross:
            self.store[self.name] = probs.view(batch, attn.heads, *probs.shape[1:])
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def cross_attention_layers(unet) -> list[str]:
    """Names (as in `unet.attn_processors`) of the UNet's cross-attention layers (attn2 of each transformer)."""
    return [n for n in unet.attn_processors if ".attn2." in n]


@contextlib.contextmanager
def capture_cross_attention(unet, layers: Sequence[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the chosen cross-attention layers (default: all) store their probabilities in the
    yielded dict ({layer: (B, heads, h*w, T)}, refreshed by each UNet call); the processors are restored after."""
    layers = list(cross_attention_layers(unet) if layers is None else layers)
    original = dict(unet.attn_processors)
    unknown = [n for n in layers if n not in original]
    if unknown:
        raise ValueError(f"unknown attention layers {unknown}; the UNet's cross-attention layers are "
                         f"{cross_attention_layers(unet)}")
    store: dict[str, torch.Tensor] = {}
    unet.set_attn_processor({n: StoreCrossAttnProcessor(store, n) if n in layers else p for n, p in original.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def attention_mask_loss(attention: torch.Tensor, token_mask: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L_reg (Eqs. 2-3) per example: 1 + A^- - A^+ for the character's token(s), in [0, 2].

    A_k is the cross-attention probability of the character's token at each latent pixel (the mean over its
    positions when the name occurs more than once), A^+ its mean over the character's mask M and A^- over the
    rest (1 - M); the paper's L_reg = A^- - A^+ is shifted by the constant 1 (gradients unchanged) so that it is
    0 exactly when the token takes all the attention of every character pixel and none elsewhere (A_k = M), 1
    for attention spread evenly, and 2 when it lies wholly outside the character.

    Args:
        attention: (B, h*w, T) probabilities (softmax over T), heads already averaged.
        token_mask: (B, T) bool, the character's token positions (one at least per row).
        masks: (B, 1, H, W) bool or float character masks at any resolution (area-pooled to h x w).
    Returns:
        (B,) losses.
    """
    B, N, T = attention.shape
    side = int(round(N ** 0.5))
    if side * side != N:
        raise ValueError(f"attention must cover a square latent grid, got {N} query positions")
    if token_mask.shape != (B, T) or not bool(token_mask.any(1).all()):
        raise ValueError(f"token_mask must be (B, T) = {(B, T)} with a character token in every row, "
                         f"got shape {tuple(token_mask.shape)}")
    tm = token_mask.to(attention.dtype)
    a = (attention * tm[:, None, :]).sum(-1) / tm.sum(-1, keepdim=True)  # (B, h*w): A_k
    m = F.adaptive_avg_pool2d(masks.to(attention.dtype), (side, side)).flatten(1)  # (B, h*w), fraction in [0, 1]
    inside, outside = m.sum(1), (1 - m).sum(1)
    if bool((inside == 0).any()) or bool((outside == 0).any()):
        raise ValueError("every mask must hold some character pixels and some other pixels at the attention's "
                         f"{side}x{side} resolution")
    a_plus = (a * m).sum(1) / inside
    a_minus = (a * (1 - m)).sum(1) / outside
    return 1.0 + a_minus - a_plus


def cross_attention_loss(store: dict[str, torch.Tensor], token_mask: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) L_reg averaged over the stored layers (each layer's heads averaged first)."""
    if not store:
        raise ValueError("no cross-attention maps were stored: run the UNet inside capture_cross_attention")
    return torch.stack([attention_mask_loss(p.mean(1), token_mask, masks) for p in store.values()]).mean(0)


# --------------------------------------------------------------------------------------------
# The Char-LDM
# --------------------------------------------------------------------------------------------
BASE_DM_FILE = "base_dm.json"


def frozen_fingerprint(text_encoder: nn.Module, vq: nn.Module) -> str:
    """sha256 of the text encoder's and the VQ's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for prefix, module in (("text_encoder.", text_encoder), ("vq.", vq)):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{prefix}{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class CharLDM(nn.Module):
    """The toy DM with a character encoder and a fusion MLP: text, fused or unconditional conditioning.

    Saved either whole, as the DM's folders (unet/ text_encoder/ tokenizer/ scheduler/ vae/, so
    `UNetCorrector.from_pretrained` loads it as a plain text-to-image DM) plus character_encoder/ and fusion/, or,
    given the folder of the DM it started from (`base_dm`, what `make train-toy` does), only what training changed
    (unet/, character_encoder/, fusion/) and base_dm.json: that folder's path relative to this one and a
    fingerprint of the frozen text encoder and VQ, checked when loading. The frozen parts are then stored once,
    in the DM's folder, which keeps the shipped checkpoints within their size budget.

    Args:
        dm: the toy DM as a UNetCorrector with its VQ as `vae` (the sampler and the VQ encoder phi starts from).
        character_encoder: phi's trainable head.
        fusion: the fusion MLP of Eq. 1.
    """

    def __init__(self, dm: UNetCorrector, character_encoder: CharacterEncoder, fusion: FusionMLP):
        super().__init__()
        if dm.vae is None:
            raise ValueError("the Char-LDM needs a latent DM with its VQ as vae (phi reads the VQ's latents)")
        self.dm = dm
        self.unet, self.text_encoder, self.vq = dm.unet, dm.text_encoder, dm.vae
        self.character_encoder, self.fusion = character_encoder, fusion

    @classmethod
    def from_dm(cls, dm: UNetCorrector, feature_dim: int = 64, hidden: int = 128) -> "CharLDM":
        """A Char-LDM starting at the DM `dm`: new phi head and fusion MLP (initialised from torch's global seed)."""
        text_dim = int(dm.unet.config.cross_attention_dim)
        enc = CharacterEncoder(latent_channels=int(dm.vae.config.latent_channels), feature_dim=feature_dim)
        return cls(dm, enc, FusionMLP(text_dim=text_dim, feature_dim=feature_dim, hidden=hidden))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "CharLDM":
        """Load a Char-LDM saved whole or over its base DM (see the class docstring).

        Raises:
            ModelNotAvailableError: base_dm.json names a DM folder that is missing, or one whose frozen text
                encoder or VQ differ from those the Char-LDM was trained with (the DM was retrained since).
        """
        from diffusers import UNet2DConditionModel

        root = Path(path)
        base_file = root / BASE_DM_FILE
        if not base_file.is_file():
            dm = UNetCorrector.from_pretrained(root, device=device)
        else:
            record = json.loads(base_file.read_text())
            base = (root / record["base_dm"]).resolve()
            if not base.is_dir():
                raise ModelNotAvailableError(
                    f"the Char-LDM at {str(root)!r} was saved over the DM at {str(base)!r} (base_dm.json), which "
                    "does not exist; restore that DM or retrain the Char-LDM from the DM you have")
            parent = UNetCorrector.from_pretrained(base, device=device)
            found = frozen_fingerprint(parent.text_encoder, parent.vae)
            if found != record["frozen_sha256"]:
                raise ModelNotAvailableError(
                    f"the DM at {str(base)!r} is not the one the Char-LDM at {str(root)!r} was trained from: its "
                    f"frozen text encoder and VQ hash to {found[:12]}, the Char-LDM recorded "
                    f"{record['frozen_sha256'][:12]}; retrain the Char-LDM from this DM")
            unet = UNet2DConditionModel.from_pretrained(root / "unet")
            dm = UNetCorrector(unet, parent.text_encoder, parent.tokenizer, parent.scheduler, parent.vae,
                               device=device)
        return cls(dm, CharacterEncoder.from_pretrained(root / "character_encoder").to(dm.device),
                   FusionMLP.from_pretrained(root / "fusion").to(dm.device)).eval()

    def save_pretrained(self, path: str | Path, base_dm: str | Path | None = None) -> None:
        """Save whole (base_dm None) or only the trained parts over the DM folder `base_dm` it started from.

        Raises:
            ValueError: `base_dm` is not a saved DM with this Char-LDM's frozen text encoder and VQ.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(root / "unet")
        self.character_encoder.save_pretrained(root / "character_encoder")
        self.fusion.save_pretrained(root / "fusion")
        if base_dm is None:
            (root / BASE_DM_FILE).unlink(missing_ok=True)  # a whole save is read whole
            self.text_encoder.save_pretrained(root / "text_encoder")
            self.dm.tokenizer.save_pretrained(root / "tokenizer")
            self.dm.scheduler.save_pretrained(root / "scheduler")
            self.vq.save_pretrained(root / "vae")
            return
        mine = frozen_fingerprint(self.text_encoder, self.vq)
        try:
            parent = UNetCorrector.from_pretrained(base_dm)
        except ModelNotAvailableError as e:
            raise ValueError(f"base_dm={str(base_dm)!r} is not a saved DM: {e}") from e
        if frozen_fingerprint(parent.text_encoder, parent.vae) != mine:
            raise ValueError(f"base_dm={str(base_dm)!r} holds another text encoder or VQ than this Char-LDM's; "
                             "pass the folder of the DM it was built from, or base_dm=None to save it whole")
        rel = os.path.relpath(Path(base_dm).resolve(), root.resolve())
        (root / BASE_DM_FILE).write_text(json.dumps({"base_dm": rel, "frozen_sha256": mine}, indent=1))

    @property
    def tokenizer(self):
        return self.dm.tokenizer

    def character_features(self, references: torch.Tensor) -> torch.Tensor:
        """phi: (B, 3, 32, 32) reference crops in [0, 1] -> (B, feature_dim); the VQ stays frozen."""
        check_frames(references, "reference images")
        with torch.no_grad():
            z = vq_latents(self.vq, references.to(self.dm.device))
        return self.character_encoder(z.float())

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """psi(S): (B, T, D), the frozen text encoder's last hidden state (encode_text)."""
        with torch.no_grad():
            return encode_text(self.tokenizer, self.text_encoder, list(prompts), self.dm.device)

    def fused_embeddings(self, prompts: Sequence[str], names: Sequence[str], references: torch.Tensor,
                         text: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 1: (B, T, D) text embeddings whose name tokens are fused with phi of the character's reference.

        Args:
            prompts: B captions, each naming its character.
            names: B character names (one word of the vocabulary each).
            references: (B, 3, 32, 32) in [0, 1], each character's reference crop (`reference_crops`).
            text: the prompts' text embeddings when already computed.
        """
        if references.shape[0] != len(prompts):
            raise ValueError(f"one reference image per prompt: got {references.shape[0]} for {len(prompts)} prompts")
        tokens = name_token_mask(self.tokenizer, prompts, names).to(self.dm.device)  # (B, T)
        text = self.text_embeddings(prompts) if text is None else text  # (B, T, D)
        feats = self.character_features(references)  # (B, F)
        rows = tokens.nonzero()[:, 0]  # the row of each name token
        fused = self.fusion(text[tokens], feats[rows])  # (n_tokens, D)
        out = text.clone()
        out[tokens] = fused
        return out

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generators: Sequence[torch.Generator], *, guidance_scale: float = 3.0,
               num_inference_steps: int = 20) -> torch.Tensor:
        """Text-to-image from conditioning embeddings (B, T, D): DDIM from noise with classifier-free guidance
        against the empty prompt (the 10% unconditional training), row b drawn from generators[b] only.
        Returns (B, 3, 32, 32) in [0, 1]."""
        from diffusers.utils.torch_utils import randn_tensor

        dm = self.dm
        expected = (self.tokenizer.model_max_length, int(self.unet.config.cross_attention_dim))
        if cond.ndim != 3 or tuple(cond.shape[1:]) != expected:
            raise ValueError(f"cond must be (B, {expected[0]}, {expected[1]}) (the text encoder's sequence shape), "
                             f"got {tuple(cond.shape)}")
        if not bool(torch.isfinite(cond).all()):
            raise ValueError("cond holds NaN or Inf values")
        generators = validate_generators(list(generators), cond.shape[0])
        dm.scheduler.set_timesteps(num_inference_steps, device=dm.device)
        if hasattr(dm.scheduler, "set_begin_index"):
            dm.scheduler.set_begin_index(0)
        size = int(self.unet.config.sample_size)
        x = randn_tensor((cond.shape[0], int(self.unet.config.in_channels), size, size), generator=generators,
                         device=dm.device, dtype=dm.dtype) * dm.scheduler.init_noise_sigma
        x = dm._denoise(x, dm.scheduler.timesteps, cond.to(dm.device, dm.dtype), guidance_scale, generators)
        return dm._to_images(x)


# --------------------------------------------------------------------------------------------
# Stage 1 training
# --------------------------------------------------------------------------------------------
def story_frames(stories: Sequence[Story], pairs: Sequence[tuple[int, int]]):
    """For (story, frame) pairs: the frames' states, renders (B, 3, 32, 32), masks (B, 1, 32, 32), explicit
    captions, names, and the reference crops of each story's first frame (B, 3, 32, 32); frame 1's reference is
    itself, as at inference, where the first frame drawn (or given) is the only picture of the character."""
    from acdc_lib.toyworld.render import render_states

    states = [SceneState(**stories[s].states[f]) for s, f in pairs]
    firsts = [SceneState(**stories[s].states[0]) for s, _ in pairs]
    r, r1 = render_states(states), render_states(firsts)
    return dict(states=states, images=r.images, masks=r.masks, captions=[explicit_caption(s) for s in states],
                names=[s.name for s in states], references=reference_crops(r1.images, r1.masks))


def _story_pairs(stories: Sequence[Story], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        s = int(rng.integers(len(stories)))
        out.append((s, int(rng.integers(len(stories[s].states)))))
    return out


def _check_training_stories(stories: Sequence[Story]) -> None:
    check_stories(stories)
    bad = [s.story_id for s in stories if not s.states or len(s.states) != len(s.sentences)]
    if bad:
        raise ValueError(f"stories {bad[:5]} have no ground-truth state per sentence; training needs them")


def char_ldm_step_loss(model: CharLDM, batch: dict, modes: Sequence[str], scheduler, generator: torch.Generator,
                       reg_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's losses: (total, denoising MSE, mean L_reg over the conditioned rows).

    Row b is conditioned by modes[b]: "fused" (Eq. 1), "text" (psi(S) alone) or "uncond" (the empty prompt).
    """
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown conditioning modes {unknown}; allowed: {MODES}")
    device = model.dm.device
    scale = float(model.vq.config.scaling_factor)
    with torch.no_grad():
        z0 = vq_latents(model.vq, batch["images"].to(device)) * scale  # (B, C, 8, 8)
    prompts = ["" if m == "uncond" else c for m, c in zip(modes, batch["captions"])]
    emb = model.text_embeddings(prompts)  # (B, T, D)
    fused_rows = [b for b, m in enumerate(modes) if m == "fused"]
    if fused_rows:
        fused = model.fused_embeddings([prompts[b] for b in fused_rows], [batch["names"][b] for b in fused_rows],
                                       batch["references"][fused_rows], text=emb[fused_rows])
        emb = emb.clone()
        emb[fused_rows] = fused
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator).to(device)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    zt = scheduler.add_noise(z0, noise, t)
    cond_rows = [b for b, m in enumerate(modes) if m != "uncond"]
    with capture_cross_attention(model.unet) as store:
        pred = model.unet(zt, t, encoder_hidden_states=emb).sample
    mse = (pred - noise).pow(2).mean()
    if cond_rows and reg_weight:
        idx = torch.tensor(cond_rows, device=device)
        tokens = name_token_mask(model.tokenizer, [prompts[b] for b in cond_rows],
                                 [batch["names"][b] for b in cond_rows]).to(device)
        reg = cross_attention_loss({k: v[idx] for k, v in store.items()}, tokens, batch["masks"][cond_rows].to(device))
        reg = reg.mean()
    else:
        reg = torch.zeros((), device=device)
    return mse + reg_weight * reg, mse.detach(), reg.detach()


def _step(total: torch.Tensor, params, opt, lr_sched, curves: dict[str, list[float]], **parts: torch.Tensor) -> None:
    """One clipped optimizer step on `total`, appending each named part's value to its curve."""
    opt.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    lr_sched.step()
    for k, v in parts.items():
        curves[k].append(v.item())


def train_char_ldm(stories: Sequence[Story], dm: UNetCorrector, cfg=None, verbose: bool = True,
                   out: Path | None = None, name: str = "char_ldm",
                   base_dm: Path | None = None) -> tuple[CharLDM, dict[str, list[float]]]:
    """Fine-tune the toy DM into a Char-LDM on ground-truth story frames; returns (model, loss curves).

    Each step draws (story, frame) pairs; the frame is denoised under its explicit caption (names, never
    pronouns: their first stage trains on the non-referential text), its reference is the story's first frame
    cut to the character, and its mode is fused / text / unconditional with probabilities
    1 - p_text - p_uncond / p_text / p_uncond (their 80/10/10). Loss: epsilon MSE + reg_weight * L_reg on the
    conditioned rows (reg_weight 0: the ablation without L_reg). Trained: the UNet, phi's head and the fusion MLP;
    frozen: the text encoder and the VQ (as their CLIP text encoder). Seeded by cfg.seed.

    Args:
        stories: train-split stories with states (never the test split).
        dm: the toy DM to start from (`models.load_dm` or a tiny one in tests); it is trained in place.
        cfg: a `TrainConfig` (default DEFAULTS["char_ldm"]); extra: p_text, p_uncond, reg_weight, feature_dim.
        out: when given, the model is saved to out/name and its record to out/train_log.json.
        base_dm: the folder `dm` was loaded from; when given (with out), only the trained parts are saved, over it.
    """
    from diffusers import DDPMScheduler

    cfg = cfg or DEFAULTS["char_ldm"]
    _check_training_stories(stories)
    p_text, p_uncond = float(cfg.extra.get("p_text", 0.1)), float(cfg.extra.get("p_uncond", 0.1))
    if min(p_text, p_uncond) < 0 or p_text + p_uncond > 1:
        raise ValueError(f"p_text={p_text} and p_uncond={p_uncond} must be >= 0 and sum to at most 1")
    reg_weight = float(cfg.extra.get("reg_weight", 1e-3))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = CharLDM.from_dm(dm, feature_dim=int(cfg.extra.get("feature_dim", 64)))
    model.text_encoder.requires_grad_(False)
    model.vq.requires_grad_(False)
    model.unet.train()
    params = [*model.unet.parameters(), *model.character_encoder.parameters(), *model.fusion.parameters()]
    opt, lr_sched = _optimizer(params, cfg)
    scheduler = DDPMScheduler.from_config(dm.scheduler.config)
    curves: dict[str, list[float]] = {"loss": [], "mse": [], "reg": []}
    t0 = time.time()
    for step in range(cfg.steps):
        batch = story_frames(stories, _story_pairs(stories, cfg.batch_size, rng))
        u = rng.random(cfg.batch_size)
        modes = ["uncond" if x < p_uncond else "text" if x < p_uncond + p_text else "fused" for x in u]
        loss, mse, reg = char_ldm_step_loss(model, batch, modes, scheduler, g, reg_weight)
        _step(loss, params, opt, lr_sched, curves, loss=loss, mse=mse, reg=reg)
        if verbose:
            _progress(name, step, cfg, curves["loss"], t0)
    model.eval()
    if out is not None:
        model.save_pretrained(Path(out) / name, base_dm=base_dm)
        _log(Path(out), name, cfg, t0, curves["loss"], mse_curve=curves["mse"][-50:], reg_curve=curves["reg"][-50:])
    return model, curves


# --------------------------------------------------------------------------------------------
# Stage 2: the aligned LM
# --------------------------------------------------------------------------------------------
@dataclass
class AlignedLMConfig:
    """Settings of the aligned LM (saved beside it as storygpt.json).

    Args:
        n_text: the word tokenizer's vocabulary size; ids n_text .. n_text+R-1 are [IMG_1..R], n_text+R the
            placeholder of a frame's m embeddings.
        n_img: R.
        frame_tokens: m (0: caption-only input, no frames in the context; their Table 4's 'Caption-').
        text_len: word tokens per sentence slot (left-padded; longer sentences are refused).
        frame_dim: size of a frame's visual features (the VQ latents, flattened).
        cond_len, cond_dim: the Char-LDM's conditioning shape (T, D), the mapper's output.
        target: "fused" or "text": what the mapper's output was aligned to (their Table 4's Emb fuse / Emb text).
        hidden, layers, heads, mapper_layers, max_frames: sizes.
    """

    n_text: int
    cond_len: int
    cond_dim: int
    frame_dim: int = 512
    n_img: int = N_IMG_TOKENS
    frame_tokens: int = FRAME_TOKENS
    text_len: int = TEXT_LEN
    target: str = "fused"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    mapper_layers: int = 2
    max_frames: int = 96

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.n_img < 1 or self.frame_tokens < 0:
            raise ValueError(f"n_img must be >= 1 and frame_tokens >= 0, got {self.n_img} and {self.frame_tokens}")

    @property
    def interleaved(self) -> bool:
        return self.frame_tokens > 0

    @property
    def segment(self) -> int:
        """Positions per frame: [sentence][IMG_1..R][frame embeddings x m]."""
        return self.text_len + self.n_img + self.frame_tokens


class QueryMapper(nn.Module):
    """Mapper_LDM: L learned queries attend to the R [IMG] hidden states (a Transformer decoder, as BLIP-2's
    Q-Former) -> (B, L, D), the Char-LDM's conditioning."""

    def __init__(self, hidden: int, cond_len: int, cond_dim: int, layers: int = 2, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cond_len, cond_dim) * 0.02)
        self.inp = nn.Linear(hidden, cond_dim)
        layer = nn.TransformerDecoderLayer(cond_dim, heads, dim_feedforward=2 * cond_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Linear(cond_dim, cond_dim)

    def forward(self, img_hidden: torch.Tensor) -> torch.Tensor:
        """(B, R, hidden) -> (B, L, D)."""
        memory = self.inp(img_hidden)  # (B, R, D)
        q = self.queries.unsqueeze(0).expand(img_hidden.shape[0], -1, -1)  # (B, L, D)
        return self.out(self.decoder(q, memory))


class AlignedLM(nn.Module):
    """The LM of StoryGPT-V's second stage: a LlamaForCausalLM over words, [IMG] tokens and frame embeddings
    (W_v2t), and the mapper from the [IMG] hidden states to the Char-LDM's conditioning."""

    def __init__(self, config: AlignedLMConfig, lm=None):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = config
        c = config
        self.lm = lm if lm is not None else LlamaForCausalLM(LlamaConfig(
            vocab_size=c.n_text + c.n_img + 1, hidden_size=c.hidden, intermediate_size=2 * c.hidden,
            num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
            max_position_embeddings=c.segment * c.max_frames, tie_word_embeddings=True,
            pad_token_id=0, bos_token_id=2, eos_token_id=3))
        self.v2t = nn.Linear(c.frame_dim, max(c.frame_tokens, 1) * c.hidden)  # W_v2t: features -> m embeddings
        self.mapper = QueryMapper(c.hidden, c.cond_len, c.cond_dim, layers=c.mapper_layers, heads=c.heads)

    @property
    def img_ids(self) -> torch.Tensor:
        return torch.arange(self.config.n_text, self.config.n_text + self.config.n_img)

    @property
    def frame_id(self) -> int:
        return self.config.n_text + self.config.n_img

    def save_pretrained(self, path: str | Path) -> None:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(root / "lm")
        (root / "storygpt.json").write_text(json.dumps(asdict(self.config), indent=1))
        torch.save({"v2t": self.v2t.state_dict(), "mapper": self.mapper.state_dict()}, root / "heads.pt")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "AlignedLM":
        from transformers import LlamaForCausalLM

        root = Path(path)
        model = cls(AlignedLMConfig(**json.loads((root / "storygpt.json").read_text())),
                    lm=LlamaForCausalLM.from_pretrained(root / "lm"))
        heads = torch.load(root / "heads.pt", map_location="cpu", weights_only=True)
        model.v2t.load_state_dict(heads["v2t"])
        model.mapper.load_state_dict(heads["mapper"])
        return model.to(device).eval()

    def sentence_ids(self, tokenizer, sentences: Sequence[str]) -> torch.LongTensor:
        """(N, text_len) word ids of each sentence with <bos>/<eos>, left-padded."""
        L = self.config.text_len
        out = torch.zeros(len(sentences), L, dtype=torch.long)
        for i, s in enumerate(sentences):
            ids = tokenizer(s).input_ids
            if len(ids) > L:
                raise ValueError(f"sentence {s!r} has {len(ids)} tokens; the LM's sentence slot holds {L}")
            out[i, L - len(ids):] = torch.tensor(ids)
        return out

    def layout(self, sentence_ids: torch.LongTensor) -> torch.LongTensor:
        """(B, n, text_len) sentences -> (B, n * segment) ids: per frame [sentence][IMG_1..R][frame x m]."""
        B, n, _ = sentence_ids.shape
        c = self.config
        img = self.img_ids.to(sentence_ids.device).view(1, 1, -1).expand(B, n, -1)
        frame = torch.full((B, n, c.frame_tokens), self.frame_id, dtype=torch.long, device=sentence_ids.device)
        return torch.cat([sentence_ids, img, frame], dim=2).flatten(1)

    def forward(self, sentence_ids: torch.LongTensor, frame_features: torch.Tensor | None = None,
                with_lm_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mapped [IMG] outputs for every frame of a batch of stories (teacher forcing: one causal pass).

        Args:
            sentence_ids: (B, n, text_len) from `sentence_ids`.
            frame_features: (B, n, frame_dim) visual features of the frames (frame j enters the context after
                frame j's [IMG] tokens, so frame i's output sees frames < i); None for caption-only models.
            with_lm_loss: also return the LM loss on the words and [IMG] tokens (Eq. 4 and the text LM loss).
        Returns:
            ((B, n, L, D) conditioning per frame, the LM loss or None).
        """
        c = self.config
        B, n, _ = sentence_ids.shape
        if n > c.max_frames:
            raise ValueError(f"{n} frames exceed the LM's {c.max_frames} frame positions")
        ids = self.layout(sentence_ids)  # (B, n * seg)
        emb = self.lm.get_input_embeddings()(ids)  # (B, S, hidden)
        if c.interleaved:
            if frame_features is None or tuple(frame_features.shape) != (B, n, c.frame_dim):
                got = None if frame_features is None else tuple(frame_features.shape)
                raise ValueError(f"an interleaved LM needs frame_features of shape {(B, n, c.frame_dim)}, got {got}")
            fr = self.v2t(frame_features).view(B, n, c.frame_tokens, c.hidden)  # (B, n, m, hidden)
            emb = emb.view(B, n, c.segment, c.hidden)
            emb = torch.cat([emb[:, :, :c.text_len + c.n_img], fr], dim=2).flatten(1, 2)
        labels = None
        if with_lm_loss:
            keep = ((ids != 0) & (ids != self.frame_id))  # words and [IMG] tokens; not pads or frame slots
            labels = torch.where(keep, ids, torch.full_like(ids, -100))
        out = self.lm(inputs_embeds=emb, labels=labels, output_hidden_states=True)
        h = out.hidden_states[-1].view(B, n, c.segment, c.hidden)[:, :, c.text_len:c.text_len + c.n_img]  # (B,n,R,h)
        cond = self.mapper(h.flatten(0, 1)).view(B, n, c.cond_len, c.cond_dim)
        return cond, (out.loss if with_lm_loss else None)


def frame_features(vq, images: torch.Tensor) -> torch.Tensor:
    """The LM's visual features of whole frames: (B, 3, 32, 32) in [0, 1] -> (B, C * 8 * 8) flattened VQ latents.

    The frozen VQ latents rather than phi: phi is trained on character crops, while the LM must read whole frames
    (place, time, where the character stands), and the VQ is the generator's own encoder, never the evaluator's.
    """
    check_frames(images, "frames")
    with torch.no_grad():
        return vq_latents(vq, images).flatten(1).float()


def alignment_targets(char_ldm: CharLDM, stories: Sequence[Story], target: str = "fused",
                      batch: int = 256) -> torch.Tensor:
    """(N, n, T, D) Eq. 6's c_i: the Char-LDM's fused (or text) embedding of each frame's explicit caption, the
    reference being the story's first frame cut to its character; precomputed, as their second stage does."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    n = len(stories[0].states)
    pairs = [(s, f) for s in range(len(stories)) for f in range(n)]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            fr = story_frames(stories, pairs[i:i + batch])
            chunks.append(char_ldm.fused_embeddings(fr["captions"], fr["names"], fr["references"])
                          if target == "fused" else char_ldm.text_embeddings(fr["captions"]))
    emb = torch.cat(chunks)
    return emb.view(len(stories), n, *emb.shape[1:])


def story_tensors(lm: AlignedLM, tokenizer, vq, stories: Sequence[Story]) -> tuple[torch.LongTensor, torch.Tensor]:
    """(N, n, text_len) sentence ids and (N, n, frame_dim) features of the ground-truth frames of `stories`."""
    from acdc_lib.toyworld.render import render_states

    n = len(stories[0].sentences)
    ids = torch.stack([lm.sentence_ids(tokenizer, s.sentences) for s in stories])
    images = render_states([st for s in stories for st in s.states]).images
    feats = torch.cat([frame_features(vq, images[i:i + 512]) for i in range(0, images.shape[0], 512)])
    return ids, feats.view(len(stories), n, -1)


def train_aligned_lm(stories: Sequence[Story], char_ldm: CharLDM, cfg=None, verbose: bool = True,
                     out: Path | None = None, name: str = "aligned_lm") -> tuple[AlignedLM, dict[str, list[float]]]:
    """Train the aligned LM on referential stories against the frozen Char-LDM; returns (model, loss curves).

    Teacher forcing on ground-truth frames: one causal pass gives every frame's mapped [IMG] output, pulled
    towards Eq. 6's target (the fused embedding of the frame's explicit caption, or its text embedding with
    extra["target"] = "text") by a mean squared error, plus lm_weight times the LM loss on words and [IMG]
    tokens. extra["frame_tokens"] = 0 trains the caption-only variant. Seeded by cfg.seed.

    Args:
        stories: train-split stories with states, all of one length.
        char_ldm: the trained Char-LDM (frozen here; its VQ gives the frame features).
        cfg: a `TrainConfig` (default DEFAULTS["aligned_lm"]); extra: target, frame_tokens, n_img, hidden, layers, lm_weight.
        out: when given, the model is saved to out/name and its record to out/train_log.json.
    """
    cfg = cfg or DEFAULTS["aligned_lm"]
    _check_training_stories(stories)
    lengths = sorted({len(s.sentences) for s in stories})
    if len(lengths) != 1:
        raise ValueError(f"the aligned LM trains on stories of one length; got lengths {lengths}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    tok = char_ldm.tokenizer
    x = cfg.extra
    config = AlignedLMConfig(
        n_text=len(tok), cond_len=int(tok.model_max_length), cond_dim=int(char_ldm.unet.config.cross_attention_dim),
        frame_dim=int(char_ldm.vq.config.latent_channels) * int(char_ldm.unet.config.sample_size) ** 2,
        n_img=int(x.get("n_img", N_IMG_TOKENS)), frame_tokens=int(x.get("frame_tokens", FRAME_TOKENS)),
        target=x.get("target", "fused"), hidden=int(x.get("hidden", 128)), layers=int(x.get("layers", 4)),
        max_frames=int(x.get("max_frames", 96)))
    model = AlignedLM(config)
    t0 = time.time()
    ids, feats = story_tensors(model, tok, char_ldm.vq, stories)
    targets = alignment_targets(char_ldm, stories, config.target)  # (N, n, T, D)
    params = list(model.parameters())
    opt, lr_sched = _optimizer(params, cfg)
    lm_weight = float(x.get("lm_weight", 1.0))
    curves: dict[str, list[float]] = {"loss": [], "align": [], "lm": []}
    model.train()
    for step in range(cfg.steps):
        rows = torch.randint(0, len(stories), (cfg.batch_size,), generator=g)
        cond, lm_loss = model(ids[rows], feats[rows] if config.interleaved else None, with_lm_loss=True)
        align = F.mse_loss(cond, targets[rows])
        loss = align + lm_weight * lm_loss
        _step(loss, params, opt, lr_sched, curves, loss=loss, align=align, lm=lm_loss)
        if verbose:
            _progress(name, step, cfg, curves["loss"], t0)
    model.eval()
    if out is not None:
        model.save_pretrained(Path(out) / name)
        _log(Path(out), name, cfg, t0, curves["loss"], align_curve=curves["align"][-50:], lm_curve=curves["lm"][-50:])
    return model, curves


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------
# Variant -> (Char-LDM folder, aligned LM folder) under a checkpoint root: StoryGPT-V-toy and its ablations.
VARIANTS: dict[str, tuple[str, str]] = {
    "storygpt_v": ("char_ldm", "aligned_lm"),
    "no_reg": ("char_ldm_noreg", "aligned_lm_noreg"),  # Char-LDM fine-tuned without L_reg, an LM aligned to it
    "text_embedding": ("char_ldm", "aligned_lm_text"),  # the LM aligned to the text embedding, not the fused one
    "caption_only": ("char_ldm", "aligned_lm_caption"),  # the LM reads captions only, no earlier frames
}


class StoryGPTVGenerator:
    """StoryGPT-V's inference: per frame, the aligned LM reads the story so far (sentences 1..i and the frames
    drawn before, or captions only) and its mapped [IMG] output conditions the Char-LDM, which draws frame i.

    Args:
        char_ldm: the Char-LDM (or the one fine-tuned without L_reg, for that ablation).
        lm: the aligned LM (its config says whether it reads frames and what it was aligned to).
        guidance_scale, num_inference_steps: the Char-LDM's sampler settings.
    """

    def __init__(self, char_ldm: CharLDM, lm: AlignedLM, *, guidance_scale: float = 3.0,
                 num_inference_steps: int = 20):
        expected = (int(char_ldm.tokenizer.model_max_length), int(char_ldm.unet.config.cross_attention_dim))
        if (lm.config.cond_len, lm.config.cond_dim) != expected:
            raise ValueError(f"the LM maps to {(lm.config.cond_len, lm.config.cond_dim)} but the Char-LDM takes "
                             f"{expected}")
        self.char_ldm, self.lm = char_ldm, lm.to(char_ldm.dm.device).eval()
        self.guidance_scale, self.num_inference_steps = guidance_scale, num_inference_steps

    @classmethod
    def from_pretrained(cls, root: str | Path, variant: str = "storygpt_v", device: str | torch.device = "cpu",
                        **kwargs) -> "StoryGPTVGenerator":
        """The generator of one of VARIANTS from a checkpoint root holding its two folders."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown StoryGPT-V variant {variant!r}; allowed: {sorted(VARIANTS)}")
        ldm_dir, lm_dir = (Path(root) / d for d in VARIANTS[variant])
        missing = [d for d in (ldm_dir, lm_dir) if not d.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"StoryGPT-V-toy variant {variant!r} needs {[str(d) for d in missing]}, which are not there: "
                f"`make train-toy` trains them with the other toy models, or, with dm/ and vq/ in {root}, "
                f"`python -m acdc_lib.toyworld.train {' '.join(d.name for d in missing)} --out {root}` "
                f"(an aligned LM needs its Char-LDM, {ldm_dir.name}, first)")
        return cls(CharLDM.from_pretrained(ldm_dir, device), AlignedLM.from_pretrained(lm_dir, device), **kwargs)

    @torch.no_grad()
    def generate(self, stories: Sequence[Story], generators: Sequence[torch.Generator],
                 first_frames: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Frames of each story; story b draws from generators[b] only, so its frames do not depend on the batch.

        Args:
            stories: B stories (sentences only are read; lengths may differ).
            generators: B torch.Generators.
            first_frames: (B, 3, 32, 32) in [0, 1] given frames 1 (the continuation task) or None (free generation).
        Returns:
            B tensors (n_b, 3, 32, 32) in [0, 1].
        """
        check_stories(stories)
        generators = list(generators)
        if len(generators) != len(stories):
            raise ValueError(f"one generator per story: got {len(generators)} for {len(stories)} stories")
        if first_frames is not None:
            check_frames(first_frames, "first_frames")
            if first_frames.shape[0] != len(stories):
                raise ValueError(f"one first frame per story: got {first_frames.shape[0]} for {len(stories)} stories")
        tok, vq, c = self.char_ldm.tokenizer, self.char_ldm.vq, self.lm.config
        device = self.char_ldm.dm.device
        ids = [self.lm.sentence_ids(tok, s.sentences).to(device) for s in stories]  # (n_b, text_len) each
        frames: list[list[torch.Tensor]] = [[] for _ in stories]
        feats: list[list[torch.Tensor]] = [[] for _ in stories]
        for i in range(max(len(s.sentences) for s in stories)):
            active = [b for b, s in enumerate(stories) if len(s.sentences) > i]
            if i == 0 and first_frames is not None:
                new = first_frames.to(device)[active]
            else:
                sent = torch.stack([ids[b][:i + 1] for b in active])  # (B', i+1, text_len)
                fr = None
                if c.interleaved:  # the features of frame i are a placeholder: frame i's output never sees them
                    fr = torch.stack([torch.stack(feats[b] + [torch.zeros(c.frame_dim, device=device)])
                                      for b in active])
                cond = self.lm(sent, fr)[0][:, -1]  # (B', T, D): frame i's mapped [IMG] output
                new = self.char_ldm.sample(cond, [generators[b] for b in active], guidance_scale=self.guidance_scale,
                                           num_inference_steps=self.num_inference_steps)
            f = frame_features(vq, new)
            for k, b in enumerate(active):
                frames[b].append(new[k].cpu())
                feats[b].append(f[k])
        return [torch.stack(f) for f in frames]


# --------------------------------------------------------------------------------------------
# CLI: train the Char-LDMs and the aligned LMs of VARIANTS
# --------------------------------------------------------------------------------------------
MODELS: tuple[str, ...] = STORYGPT_MODELS  # what `train_models` trains, each saved under its name


def train_models(which: Sequence[str], out: Path, configs: dict[str, TrainConfig] | None = None,
                 dm: Path | None = None, verbose: bool = True) -> None:
    """Train the named models of DEFAULTS into `out` on the train split: the Char-LDMs first (from the DM at
    `dm`, default <out>/dm), then the aligned LMs (each from the Char-LDM its config names, in <out>).

    `make train-toy` runs each as its own task (`acdc_lib.toyworld.train`, which calls this); this CLI
    trains them one after another.

    Args:
        which: names among MODELS.
        out: the checkpoint folder (holding dm/ and, for an aligned LM, its Char-LDM).
        configs: {name: TrainConfig} (default: DEFAULTS).
    """
    from acdc_lib.toyworld import models as M
    from acdc_lib.toyworld.train import load_split

    unknown = [n for n in which if n not in DEFAULTS]
    if unknown:
        raise ValueError(f"unknown StoryGPT-V-toy models {unknown}; allowed: {list(MODELS)}")
    configs = {**DEFAULTS, **(configs or {})}
    out = Path(out)
    lms = [n for n in MODELS if n in which and n.startswith("aligned_lm")]
    for name in lms:  # before any training: a Char-LDM this call does not train must be there already
        ldm = configs[name].extra.get("char_ldm", "char_ldm")
        if ldm not in which and not (out / ldm).is_dir():
            raise FileNotFoundError(f"{name} is aligned to the Char-LDM at {out / ldm}, which does not exist: train "
                                    f"it first (`python -m acdc_lib.toyworld.storygpt {ldm} --out {out}`)")
    stories = load_split("train")
    for name in [n for n in MODELS if n in which and n.startswith("char_ldm")]:
        cfg = configs[name]
        dm_dir = Path(dm) if dm is not None else out / "dm"
        train_char_ldm(stories[:cfg.extra.get("n_stories")], M.load_dm(dm_dir), cfg, verbose=verbose,
                       out=out, name=name, base_dm=dm_dir)
    for name in lms:
        cfg = configs[name]
        ldm_dir = out / cfg.extra.get("char_ldm", "char_ldm")
        train_aligned_lm(stories[:cfg.extra.get("n_stories")], CharLDM.from_pretrained(ldm_dir), cfg,
                         verbose=verbose, out=out, name=name)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m acdc_lib.toyworld.storygpt [char_ldm|char_ldm_noreg|aligned_lm|...] --out DIR`."""
    from acdc_lib.toyworld import models as M

    names = sorted(DEFAULTS)
    p = argparse.ArgumentParser(description="Train StoryGPT-V-toy's models (Char-LDM, aligned LMs).")
    p.add_argument("which", nargs="*", default=names, choices=names)
    p.add_argument("--out", type=Path, default=M.CHECKPOINT_DIR, help="checkpoint folder (default: shipped)")
    p.add_argument("--dm", type=Path, default=None, help="the DM the Char-LDMs start from (default: <out>/dm)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every model's steps (smoke runs)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)

    def scaled(name: str) -> TrainConfig:
        c = DEFAULTS[name]
        return TrainConfig(**{**asdict(c), "steps": max(1, int(round(c.steps * a.steps_scale))),
                              "warmup": min(c.warmup, max(1, int(c.steps * a.steps_scale) // 5))})

    train_models(a.which, a.out, {n: scaled(n) for n in a.which}, dm=a.dm)


if __name__ == "__main__":
    main()
