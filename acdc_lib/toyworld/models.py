"""The toy world's models: configs, the toy ARM and the independent evaluator, and their loaders.

Four models, each a library class saved with `save_pretrained` and loaded with `from_pretrained`
(the shipped weights live in `acdc_lib/toyworld/checkpoints/`, written by `acdc_lib.toyworld.train`):

1. VQ tokenizer (`diffusers.VQModel`): a 32x32 frame <-> 8x8 = 64 codes of a 1024-entry codebook.
   It is the ARM's D (decode) and E (encode).
2. ARM (`transformers.LlamaForCausalLM`) over word tokens and image codes, wrapped by `ToyARM`, which
   implements the ARM protocol of `acdc_lib.types` (Eq. 1: v^i ~ p(v^i | v^{1:i-1}, u^{1:i})).
   A story is laid out frame by frame as [text of u^j, left-padded to TEXT_LEN][BOI][64 codes][EOI],
   so every row of a batch has the same positions and no attention mask is needed.
3. DM: a latent-space `diffusers.UNet2DConditionModel` + a `transformers.CLIPTextModel` trained with it
   from scratch + the word-level tokenizer + a diffusers scheduler + the VQ as its autoencoder
   (vae/, a copy of 1; its continuous latents, as in Latent Diffusion's VQ-regularised variant),
   saved as unet/ text_encoder/ tokenizer/ scheduler/ vae/, which
   `acdc_lib.sdedit.UNetCorrector.from_pretrained` loads unchanged.
4. Evaluator, sharing nothing with 1-3 (own seeds, own initialisation, own training): a tiny
   `transformers.CLIPModel` (contrastive on frames and explicit captions; its image features also
   serve FID) and an `AttributeProbe` CNN with one head per attribute (species, place, time,
   action, and the physical counts n_suns, n_moons, n_ears, n_tails).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from acdc_lib.loop import draw_rows
from acdc_lib.toyworld.world import (ACCESSORIES, ACTIONS, FACINGS, MARKINGS, MAX_COUNT, N_LAYOUTS, PLACES, SPECIES,
                                     TIMES, X_POSITIONS)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
IMAGE_SIZE = 32
TOKENS_PER_FRAME = 64  # 8x8 VQ codes per 32x32 frame
TEXT_LEN = 32  # word tokens per frame segment of the ARM (left-padded); longer sentences are refused

# Probe heads: name -> number of classes. Counts are 0..MAX_COUNT; then what only the frames carry
# (world version 2): identity (marking, collar colour, layout variant) and motion state (x grid cell, facing).
PROBE_HEADS: dict[str, int] = {
    "species": len(SPECIES), "place": len(PLACES), "time": len(TIMES), "action": len(ACTIONS),
    "n_suns": MAX_COUNT + 1, "n_moons": MAX_COUNT + 1, "n_ears": MAX_COUNT + 1, "n_tails": MAX_COUNT + 1,
    "marking": len(MARKINGS), "accessory": len(ACCESSORIES), "layout": N_LAYOUTS, "x_cell": len(X_POSITIONS),
    "facing": len(FACINGS),
}
VISUAL_HEADS: tuple[str, ...] = ("species", "place", "time", "action")


# --------------------------------------------------------------------------------------------
# Configs of the library models (small enough for 2 CPU cores; see train.py for budgets)
# --------------------------------------------------------------------------------------------
def vq_config(codebook_size: int = 1024, channels: tuple[int, ...] = (32, 64, 64), embed_dim: int = 8) -> dict:
    """diffusers VQModel kwargs: 3 blocks (2 downsamplings) take 32x32 frames to 8x8 codes."""
    return dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=tuple(channels),
        layers_per_block=1, latent_channels=embed_dim, vq_embed_dim=embed_dim, sample_size=IMAGE_SIZE,
        num_vq_embeddings=codebook_size, norm_num_groups=16, mid_block_add_attention=False,
    )


def build_vq(**kwargs):
    """A randomly initialised diffusers VQModel with `vq_config(**kwargs)`."""
    from diffusers import VQModel

    return VQModel(**vq_config(**kwargs))


def clip_text_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, max_len: int = 32):
    """A tiny transformers CLIPTextConfig over the word-level tokenizer (<pad>=0, <bos>=2, <eos>=3)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_len,
                          pad_token_id=0, bos_token_id=2, eos_token_id=3, projection_dim=hidden)


def build_dm(vocab_size: int, latent_channels: int = 8, latent_size: int = 8, channels: tuple[int, ...] = (48, 96),
             text_hidden: int = 64, text_layers: int = 2):
    """(unet, text_encoder, train_scheduler) of the toy DM, randomly initialised.

    The UNet works in a tiny latent space: the continuous (pre-quantisation) latents of the VQ
    tokenizer, 8x8 with `latent_channels` channels, scaled to unit variance by the VQ's
    `scaling_factor` (Latent Diffusion's VQ-regularised variant: the decoder quantises). It is about 4x
    cheaper per step than a pixel-space UNet at 32x32 on CPU, for training and for every SDEdit call.
    Cross-attention to the text runs at 8x8 and in the 4x4 middle block. The scheduler is DDPM with a
    cosine schedule for training; sampling uses DDIM built from the same config (UNetCorrector does this).
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(channels), layers_per_block=1, cross_attention_dim=text_hidden,
        # diffusers' legacy naming: `attention_head_dim` of UNet2DConditionModel is the number of HEADS
        attention_head_dim=tuple(max(1, c // 24) for c in channels), norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(clip_text_config(vocab_size, hidden=text_hidden, layers=text_layers))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              prediction_type="epsilon")
    return unet, text_encoder, scheduler


def build_motion_adapter(unet, max_frames: int = 32, heads_per: int = 24):
    """A diffusers MotionAdapter (AnimateDiff's motion modules) shaped for `unet`, randomly initialised.

    One temporal transformer per spatial layer of the UNet (its block widths, layers per block and
    GroupNorm groups), `max_frames` temporal positions. Each temporal transformer's output projection
    is zero-initialised, as AnimateDiff does, so the inflated UNet starts as the image model frame by
    frame (diffusers initialises it randomly).
    """
    from diffusers import MotionAdapter

    channels = tuple(unet.config.block_out_channels)
    adapter = MotionAdapter(block_out_channels=channels, motion_layers_per_block=unet.config.layers_per_block,
                            motion_num_attention_heads=tuple(max(1, c // heads_per) for c in channels),
                            motion_norm_num_groups=unet.config.norm_num_groups, motion_max_seq_length=max_frames,
                            use_motion_mid_block=True)
    with torch.no_grad():
        for name, mod in adapter.named_modules():
            if name.endswith("proj_out") and isinstance(mod, nn.Linear):
                mod.weight.zero_()
                mod.bias.zero_()
    return adapter


def build_eval_clip(vocab_size: int, hidden: int = 64, layers: int = 3, projection_dim: int = 64):
    """A tiny transformers CLIPModel: word-level text tower and a ViT over 4x4 patches of 32x32 frames."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    text = clip_text_config(vocab_size, hidden=hidden, layers=layers)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=4, num_channels=3,
                              projection_dim=projection_dim)
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)
    return CLIPModel(cfg)


def arm_config(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4, max_frames: int = 6):
    """A small transformers LlamaConfig for the ARM (positions for `max_frames` frame segments)."""
    from transformers import LlamaConfig

    seg = TEXT_LEN + TOKENS_PER_FRAME + 2
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=seg * max_frames, tie_word_embeddings=True,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)


# --------------------------------------------------------------------------------------------
# The attribute probe (part of the evaluator)
# --------------------------------------------------------------------------------------------
class AttributeProbe(nn.Module, PyTorchModelHubMixin):
    """A small CNN with one classification head per attribute (PROBE_HEADS); images in [0, 1].

    Written here (not a library class) because no library model has several heads; the
    huggingface_hub mixin gives it save_pretrained / from_pretrained with safetensors.

    Args:
        channels: conv widths of the three stride-2 stages (32 -> 16 -> 8 -> 4 pixels).
        hidden: width of the shared fully connected layer.
        heads: {name: n_classes}; default PROBE_HEADS.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), hidden: int = 256,
                 heads: dict[str, int] | None = None):
        super().__init__()
        self.heads_spec = dict(PROBE_HEADS if heads is None else heads)
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = IMAGE_SIZE // 2 ** len(channels)
        self.trunk = nn.Sequential(nn.Linear(c_in * side * side, hidden), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in self.heads_spec.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) in [0, 1] -> {head: (B, n_classes) logits}."""
        h = self.trunk(self.features(images * 2.0 - 1.0))
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) in [0, 1] -> {head: (B,) long predicted class}."""
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in self.heads_spec}
        for i in range(0, images.shape[0], batch_size):
            logits = self(images[i:i + batch_size])
            for k, v in logits.items():
                outs[k].append(v.argmax(-1))
        return {k: torch.cat(v) for k, v in outs.items()}


def state_labels(states) -> dict[str, torch.Tensor]:
    """{head: (B,) long} ground-truth labels of SceneStates / dicts for every probe head."""
    from acdc_lib.toyworld.render import states_to_arrays

    a = states_to_arrays(states)
    a["facing"] = (a["facing"] > 0).long()  # FACINGS order: left 0, right 1
    grid = torch.tensor(X_POSITIONS, dtype=torch.float64)
    a["x_cell"] = (a["x"][:, None] - grid[None]).abs().argmin(1)
    return {k: a[k] for k in PROBE_HEADS}


# --------------------------------------------------------------------------------------------
# The evaluator: CLIP + probe, loaded together
# --------------------------------------------------------------------------------------------
class ToyEvaluator:
    """The independent evaluator: a tiny CLIPModel + tokenizer and an AttributeProbe.

    Args:
        clip: transformers CLIPModel.
        tokenizer: its word-level tokenizer.
        probe: the AttributeProbe.
        device: where they run.
    """

    def __init__(self, clip, tokenizer, probe: AttributeProbe, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.clip = clip.to(self.device).eval()
        self.tokenizer = tokenizer
        self.probe = probe.to(self.device).eval()
        self.num_features = int(clip.config.projection_dim)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "ToyEvaluator":
        """Load from a folder with clip/ (CLIPModel + tokenizer) and probe/ (AttributeProbe)."""
        from transformers import AutoTokenizer, CLIPModel

        root = Path(path) if path is not None else CHECKPOINT_DIR / "evaluator"
        _require_dirs(root, ("clip", "probe"))
        return cls(CLIPModel.from_pretrained(root / "clip"), AutoTokenizer.from_pretrained(root / "clip"),
                   AttributeProbe.from_pretrained(root / "probe"), device)

    def save_pretrained(self, path: str | Path) -> None:
        """Write clip/ and probe/ under `path`."""
        root = Path(path)
        self.clip.save_pretrained(root / "clip")
        self.tokenizer.save_pretrained(root / "clip")
        self.probe.save_pretrained(root / "probe")

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) in [0, 1] -> {attribute: (B,) long} by the probe."""
        return {k: v.cpu() for k, v in self.probe.predict(images.to(self.device)).items()}

    @torch.no_grad()
    def image_features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(B, 3, 32, 32) in [0, 1] -> (B, F) L2-normalised CLIP image embeddings (also FID's features)."""
        feats = []
        for i in range(0, images.shape[0], batch_size):
            px = images[i:i + batch_size].to(self.device) * 2.0 - 1.0
            out = self.clip.get_image_features(pixel_values=px)
            out = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5 returns an object
            feats.append(F.normalize(out, dim=-1).cpu())
        return torch.cat(feats)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """B strings -> (B, F) L2-normalised CLIP text embeddings."""
        feats = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[i:i + batch_size]), padding="max_length", truncation=True,
                                 return_tensors="pt")
            out = self.clip.get_text_features(input_ids=ids.input_ids.to(self.device),
                                              attention_mask=ids.attention_mask.to(self.device))
            out = out.pooler_output if hasattr(out, "pooler_output") else out
            feats.append(F.normalize(out, dim=-1).cpu())
        return torch.cat(feats)

    def clip_similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """(B,) cosine similarity of each image with its own text."""
        return (self.image_features(images) * self.text_features(texts)).sum(-1)


def _require_dirs(root: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"{str(root)!r} is missing {missing}; train with `python -m acdc_lib.toyworld.train`")


# --------------------------------------------------------------------------------------------
# VQ helpers: frames <-> codes
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def vq_encode(vq, images: torch.Tensor) -> torch.LongTensor:
    """(B, 3, 32, 32) in [0, 1] -> (B, 64) codes (nearest codebook entry of each latent pixel)."""
    h = vq.encode(images * 2.0 - 1.0).latents  # (B, D, 8, 8)
    B, D, H, W = h.shape
    flat = h.permute(0, 2, 3, 1).reshape(-1, D)
    idx = torch.cdist(flat, vq.quantize.embedding.weight).argmin(-1)
    return idx.view(B, H * W)


@torch.no_grad()
def vq_decode(vq, codes: torch.LongTensor) -> torch.Tensor:
    """(B, 64) codes -> (B, 3, 32, 32) images in [0, 1] (decoder output clamped, as diffusers' postprocess)."""
    B, n = codes.shape
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"codes per frame must be a square number, got {n}")
    D = vq.quantize.embedding.weight.shape[1]
    z = vq.quantize.get_codebook_entry(codes.reshape(-1), (B, side, side, D))
    x = vq.decode(z, force_not_quantize=True).sample
    return (x / 2.0 + 0.5).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# The toy ARM
# --------------------------------------------------------------------------------------------
@dataclass
class ARMLayout:
    """Token layout of the toy ARM (saved as arm_layout.json beside the LM).

    Ids: [0, n_text) word tokens of the tokenizer, then BOI, EOI, then codebook_size image codes.
    """

    n_text: int
    codebook_size: int
    text_len: int = TEXT_LEN
    tokens_per_frame: int = TOKENS_PER_FRAME

    @property
    def boi(self) -> int:
        return self.n_text

    @property
    def eoi(self) -> int:
        return self.n_text + 1

    @property
    def code_offset(self) -> int:
        return self.n_text + 2

    @property
    def vocab_size(self) -> int:
        return self.n_text + 2 + self.codebook_size

    @property
    def segment(self) -> int:
        return self.text_len + 1 + self.tokens_per_frame + 1


def text_segment(tokenizer, sentence: str, layout: ARMLayout) -> list[int]:
    """Word ids of one sentence (<bos> ... <eos>), left-padded with <pad> to layout.text_len."""
    ids = tokenizer(sentence).input_ids
    if len(ids) > layout.text_len:
        raise ValueError(f"sentence {sentence!r} has {len(ids)} tokens; the toy ARM takes at most "
                         f"{layout.text_len} per frame")
    return [tokenizer.pad_token_id] * (layout.text_len - len(ids)) + list(ids)


def story_ids(tokenizer, sentences: Sequence[str], codes: torch.LongTensor, layout: ARMLayout) -> torch.LongTensor:
    """The full teacher-forcing sequence of one story: per frame [text][BOI][codes + offset][EOI].

    Args:
        sentences: N sentences.
        codes: (N, tokens_per_frame) VQ codes of the N frames.
    Returns:
        (N * layout.segment,) long ids.
    """
    if codes.shape != (len(sentences), layout.tokens_per_frame):
        raise ValueError(f"codes must be ({len(sentences)}, {layout.tokens_per_frame}), got {tuple(codes.shape)}")
    parts = []
    for s, c in zip(sentences, codes):
        parts += [torch.tensor(text_segment(tokenizer, s, layout) + [layout.boi]), c.cpu() + layout.code_offset,
                  torch.tensor([layout.eoi])]
    return torch.cat(parts).long()


def arm_sequences(stories, vq, tokenizer, layout: ARMLayout, batch: int = 512) -> torch.LongTensor:
    """(S, N * segment) teacher-forcing ids of `stories` (ground-truth frames through the VQ)."""
    from acdc_lib.toyworld.render import render_states

    states = [s for st in stories for s in st.states]
    codes = torch.cat([vq_encode(vq, render_states(states[i:i + batch]).images)
                       for i in range(0, len(states), batch)])
    N = len(stories[0].sentences)
    codes = codes.view(len(stories), N, -1)
    return torch.stack([story_ids(tokenizer, st.sentences, codes[i], layout) for i, st in enumerate(stories)])


class CodeSlots(nn.Module, PyTorchModelHubMixin):
    """Where a token sits in its frame, and what the previous frame holds there; shared by every frame.

    Slots: code j of every frame gets slot j + 2, the BOI slot 1, text and EOI slot 0 (a zero vector).
    Added to the token embeddings, it lets attention find code j of frame i-1 from code j-1 of frame i
    at any distance, as video transformers factor space and time. Initialised with sinusoids of the
    slot index, so that "the next slot" is one fixed rotation from the start.

    Previous codes (`previous_codes` > 0, the codebook size): the input that predicts code j of frame i
    (BOI for j = 0, else code j-1) also gets a learned embedding of code j of frame i-1, the token one
    segment before the target, so what only the frames carry (the coat, the collar, the layout, where
    the character stands and faces) sits in the very input that predicts it: a temporal skip from
    each code to the same code of the frame before, the time half of a factored space-time
    transformer. With slots alone the shipped ARM kept a place's layout at frame 2 about half the
    time; with the skip two thirds of the time, and its own layout errors then carry into later
    frames (what is drawn on the character stays at chance with either). The first frame of a
    context window has no previous frame (index 0, a zero vector), as in training.

    Code vectors (`code_dim` > 0): an image code enters the LM as a small MLP of its frozen VQ codebook
    vector instead of a row of the LM's own embedding table (which then serves only as the tied output
    head), and the temporal skip reads the previous code the same way. Janus-Pro embeds generated image
    tokens in a space of the codebook's width and lifts them with an aligner MLP; here the codebook
    vectors themselves are that space, so from the first step codes that look alike (the same collar
    colour, the same coat) enter alike and attention can find them, instead of the LM first learning
    1,024 embeddings from scratch. `set_codebook` copies the vectors in (standardised per dimension);
    they are a buffer, saved with the module and never trained.

    Written here because transformers' Llama has no second position table nor a per-position extra input.

    Args:
        hidden: the LM's hidden size (even).
        tokens_per_frame: codes per frame.
        scale: the initial norm of each slot vector, about that of an initial token embedding.
        previous_codes: the codebook size for the temporal skip, or 0 for none.
        code_dim: the VQ codebook's vector width for code-vector embeddings, or 0 for none.
        codebook_size: the number of codes (needed with code_dim).
    """

    def __init__(self, hidden: int = 128, tokens_per_frame: int = TOKENS_PER_FRAME, scale: float = 0.25,
                 previous_codes: int = 0, code_dim: int = 0, codebook_size: int = 0):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden must be even, got {hidden!r}")
        if isinstance(previous_codes, bool) or not isinstance(previous_codes, int) or previous_codes < 0:
            raise ValueError(f"previous_codes must be an int >= 0 (0: no temporal skip), got {previous_codes!r}")
        for name, v in (("code_dim", code_dim), ("codebook_size", codebook_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if code_dim and not codebook_size:
            raise ValueError(f"code vectors (code_dim={code_dim}) need codebook_size > 0, got {codebook_size!r}")
        if code_dim and previous_codes and previous_codes != codebook_size:
            raise ValueError(f"previous_codes ({previous_codes}) must equal codebook_size ({codebook_size})")
        self.embed = nn.Embedding(tokens_per_frame + 2, hidden, padding_idx=0)
        pos = torch.arange(tokens_per_frame + 2, dtype=torch.float32)[:, None]
        freq = torch.exp(-torch.arange(0, hidden, 2, dtype=torch.float32) / hidden * math.log(1000.0))
        table = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], 1) * scale / math.sqrt(hidden / 2)
        table[0] = 0.0
        with torch.no_grad():
            self.embed.weight.copy_(table)
        self.previous = self.code_in = self.previous_in = None
        if code_dim:
            self.register_buffer("codebook", torch.zeros(codebook_size, code_dim))
            self.code_in = self._vector_mlp(code_dim, hidden, scale)
            if previous_codes:
                self.previous_in = self._vector_mlp(code_dim, hidden, scale)
        elif previous_codes:
            self.previous = nn.Embedding(previous_codes + 1, hidden, padding_idx=0)
            with torch.no_grad():
                self.previous.weight.normal_(0.0, scale / math.sqrt(hidden))
                self.previous.weight[0] = 0.0

    @staticmethod
    def _vector_mlp(code_dim: int, hidden: int, scale: float) -> nn.Sequential:
        mlp = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        with torch.no_grad():  # outputs start at about an initial token embedding's norm
            mlp[2].weight.mul_(scale)
            mlp[2].bias.zero_()
        return mlp

    @property
    def has_skip(self) -> bool:
        """Whether the module adds the previous frame's code (the temporal skip)."""
        return self.previous is not None or self.previous_in is not None

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Copy the VQ codebook (codebook_size, code_dim) in, standardised per dimension."""
        if self.code_in is None:
            raise ValueError("this CodeSlots was built without code vectors (code_dim=0)")
        if vectors.shape != self.codebook.shape:
            raise ValueError(f"codebook must be {tuple(self.codebook.shape)}, got {tuple(vectors.shape)}")
        v = vectors.detach().float()
        self.codebook.copy_((v - v.mean(0)) / v.std(0).clamp(min=1e-6))

    def code_embeddings(self, codes: torch.LongTensor) -> torch.Tensor:
        """(...,) codes in [0, codebook_size) -> (..., hidden) input embeddings from their code vectors."""
        return self.code_in(self.codebook[codes])

    def forward(self, slots: torch.LongTensor, previous: torch.LongTensor | None = None) -> torch.Tensor:
        """Slot embeddings, plus the previous frame's code embeddings where `previous` (code + 1, or 0
        for none) is given and the module has a temporal skip."""
        out = self.embed(slots)
        if previous is not None and self.previous is not None:
            out = out + self.previous(previous)
        elif previous is not None and self.previous_in is not None:
            vec = self.previous_in(self.codebook[(previous - 1).clamp(min=0)])
            out = out + torch.where((previous > 0)[..., None], vec, torch.zeros_like(vec))
        return out


def segment_slots(layout: "ARMLayout", start: int, length: int, device=None) -> torch.LongTensor:
    """(length,) slot ids of positions start .. start+length-1 of a story laid out in segments."""
    r = (torch.arange(start, start + length, device=device) % layout.segment)
    code = r - layout.text_len - 1  # code index within the frame, where r is a code's position
    out = torch.where((code >= 0) & (code < layout.tokens_per_frame), code + 2, torch.zeros_like(r))
    return torch.where(r == layout.text_len, torch.ones_like(r), out)


def previous_frame_codes(layout: "ARMLayout", history: torch.LongTensor, start: int, length: int) -> torch.LongTensor:
    """(B, length) temporal-skip indices of positions start .. start+length-1: for the input that predicts
    code j of a frame, code j of the frame before plus 1 (read from `history`, the ids of positions
    0 .. start+length-1); 0 where there is no previous frame or the position predicts no code."""
    if history.shape[1] < start + length:
        raise ValueError(f"history must hold the {start + length} ids up to the last position, got {history.shape[1]}")
    q = torch.arange(start, start + length, device=history.device)
    slot = segment_slots(layout, start, length, history.device)
    src = q + 1 - layout.segment  # code j of frame i-1 for the input that predicts code j of frame i
    valid = (slot >= 1) & (slot <= layout.tokens_per_frame) & (src >= 0)
    codes = history[:, src.clamp(min=0)] - layout.code_offset + 1
    return torch.where(valid[None], codes, torch.zeros_like(codes))


def lm_inputs(lm, slots: "CodeSlots | None", layout: "ARMLayout", ids: torch.LongTensor, start: int = 0,
              history: torch.LongTensor | None = None) -> dict:
    """The LM's keyword inputs for ids at positions start.. of a segment layout: input_ids, or with code
    slots the token embeddings plus the slot embeddings (and the temporal skip) as inputs_embeds.

    history: the ids of positions 0 .. start+len-1 (needed by a temporal skip when start > 0; by default
    `ids` itself, which must then start at position 0)."""
    if slots is None:
        return {"input_ids": ids}
    emb = lm.get_input_embeddings()(ids)
    if slots.code_in is not None:  # image codes enter through their codebook vectors
        is_code = ids >= layout.code_offset
        vec = slots.code_embeddings((ids - layout.code_offset).clamp(0, layout.codebook_size - 1))
        emb = torch.where(is_code[..., None], vec.to(emb.dtype), emb)
    prev = None
    if slots.has_skip:
        if history is None:
            if start:
                raise ValueError(f"a temporal skip at start={start} needs the history of ids from position 0")
            history = ids
        prev = previous_frame_codes(layout, history, start, ids.shape[1])
    sl = segment_slots(layout, start, ids.shape[1], ids.device)[None].expand(ids.shape[0], -1)
    return {"inputs_embeds": emb + slots(sl, prev).to(emb.dtype)}


def _check_top_k(top_k, codebook_size: int, name: str) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= codebook_size):
        raise ValueError(f"{name} must be None or an int in [0, {codebook_size}], got {top_k!r}")


def _check_guidance(w, name: str) -> None:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")


class ToyARM:
    """The toy world's ARM (protocol `acdc_lib.types.ARM`): a LlamaForCausalLM over words + VQ codes.

    Sampling is free-running (the model's own errors, no injected noise): the context of frame i is
    the story text u^{1:i} and the tokens of frames 1..i-1 as given by the loop, then 64 codes are
    drawn one at a time with a KV cache, logits restricted to image codes, temperature and top-k,
    and row b drawing from generators[b] only.

    Args:
        lm: transformers causal LM with layout.vocab_size ids.
        vq: diffusers VQModel (D and E).
        tokenizer: the word-level tokenizer.
        layout: the ARMLayout.
        temperature: softmax temperature (> 0).
        top_k: keep the k most likely codes (None or 0: all).
        slots: the CodeSlots embedding the LM was trained with, or None (an LM trained without it).
        context_frames: K, the frames the ARM sees (the new one included): frame i conditions on
            sentences i-K+1..i and frames i-K+1..i-1, as long-sequence ARMs window their context, so
            stories longer than its training length run at a cost flat in their length. None: the
            whole story so far (it then fits the positions of the stories it was trained on).
        guidance_scale: classifier-free guidance on the text, w in logits_u + w (logits_c - logits_u),
            where logits_u condition on empty sentences (an LM trained with text dropout); 1: no
            guidance (one forward per token), the default.
        first_frame_guidance_scale, first_frame_top_k: the first frame's own settings (None: the later
            frames'), as the paper samples a video's first frame more freely than the rest (CFG 5, top-k
            8192 of 32768 codes, then CFG 1, top-k 1000); the real ARMs take the same two arguments.
        device: where the models run.
        compile: decode each code with one `torch.compile`d step (the LM forward over a static cache, with
            CFG, temperature, top-k and the inverse-CDF draw inside it), as gpt-fast and transformers'
            static-cache generation do; the prefill stays eager, keeps only the last position's logits and
            reuses the keys and values of the context the last call shared (the story so far). False (the
            default): the eager loop, what the committed results come from. Both draw from the same uniforms; their float kernels differ in the last bits,
            which flips a draw only where a uniform falls that close to a CDF step (or a logit to the
            top-k threshold).
    """

    def __init__(self, lm, vq, tokenizer, layout: ARMLayout, *, slots: CodeSlots | None = None,
                 temperature: float = 1.0, top_k: int | None = None, context_frames: int | None = None,
                 guidance_scale: float = 1.0, first_frame_guidance_scale: float | None = None,
                 first_frame_top_k: int | None = None, device: str | torch.device = "cpu", compile: bool = False):
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        _check_top_k(top_k, layout.codebook_size, "top_k")
        _check_guidance(guidance_scale, "guidance_scale")
        _check_top_k(first_frame_top_k, layout.codebook_size, "first_frame_top_k")
        if first_frame_guidance_scale is not None:
            _check_guidance(first_frame_guidance_scale, "first_frame_guidance_scale")
        self.guidance_scale = float(guidance_scale)
        self.first_frame_guidance_scale = None if first_frame_guidance_scale is None else float(first_frame_guidance_scale)
        self.first_frame_top_k = first_frame_top_k
        if lm.config.vocab_size != layout.vocab_size:
            raise ValueError(f"the LM has {lm.config.vocab_size} ids but the layout needs {layout.vocab_size}")
        max_frames = lm.config.max_position_embeddings // layout.segment
        if context_frames is not None and (isinstance(context_frames, bool) or not isinstance(context_frames, int)
                                           or not 1 <= context_frames <= max_frames):
            raise ValueError(f"context_frames must be None or an int in [1, {max_frames}] (the frames the LM's "
                             f"positions hold), got {context_frames!r}")
        self.context_frames = context_frames
        self.device = torch.device(device)
        self.lm = lm.to(self.device).eval()
        self.slots = slots.to(self.device).eval() if slots is not None else None
        self.vq = vq.to(self.device).eval()
        self.tokenizer, self.layout = tokenizer, layout
        self.temperature, self.top_k = float(temperature), top_k
        self.tokens_per_frame = layout.tokens_per_frame
        self.compile = compile
        self._step = None  # the compiled decode step, built at first use
        self._held = None  # compiled path: (ids, StaticCache) of the last frame, whose prefix the next reuses

    @classmethod
    def from_pretrained(cls, arm_path: str | Path | None = None, vq_path: str | Path | None = None,
                        device: str | torch.device = "cpu", **kwargs) -> "ToyARM":
        """Load lm/ + tokenizer/ + arm_layout.json (+ slots/ where the LM was trained with CodeSlots) from
        `arm_path` and the VQModel from `vq_path`.

        Defaults: the shipped checkpoints/arm and checkpoints/vq. kwargs: temperature, top_k, context_frames,
        guidance_scale, first_frame_guidance_scale, first_frame_top_k; where the folder holds sampling.json (the video ARM: its context
        window and two-phase sampling), its values are the defaults that kwargs override.
        """
        from diffusers import VQModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        root = Path(arm_path) if arm_path is not None else CHECKPOINT_DIR / "arm"
        vq_root = Path(vq_path) if vq_path is not None else CHECKPOINT_DIR / "vq"
        _require_dirs(root, ("lm", "tokenizer"))
        layout = ARMLayout(**json.loads((root / "arm_layout.json").read_text()))
        slots = CodeSlots.from_pretrained(root / "slots") if (root / "slots").is_dir() else None
        if (root / "sampling.json").is_file():
            kwargs = {**json.loads((root / "sampling.json").read_text()), **kwargs}
        return cls(AutoModelForCausalLM.from_pretrained(root / "lm"), VQModel.from_pretrained(vq_root),
                   AutoTokenizer.from_pretrained(root / "tokenizer"), layout, slots=slots, device=device, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        """Write lm/, tokenizer/, arm_layout.json and slots/ (the VQ is saved on its own)."""
        root = Path(path)
        self.lm.save_pretrained(root / "lm")
        if self.slots is not None:
            self.slots.save_pretrained(root / "slots")
        self.tokenizer.save_pretrained(root / "tokenizer")
        (root / "arm_layout.json").write_text(json.dumps(asdict(self.layout), indent=1) + "\n")

    # ---- D and E ------------------------------------------------------------------------
    def decode(self, tokens: torch.LongTensor) -> torch.Tensor:
        """(B, 64) codes -> (B, 3, 32, 32) images in [0, 1]  (x_0^i = D(v^i))."""
        self._check_codes(tokens, "tokens")
        return vq_decode(self.vq, tokens.to(self.device))

    def encode(self, images: torch.Tensor) -> torch.LongTensor:
        """(B, 3, 32, 32) images in [0, 1] -> (B, 64) codes  (v~^i = E(x~_0^i))."""
        if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(images.shape)}")
        return vq_encode(self.vq, images.to(self.device))

    def _check_codes(self, tokens, name: str) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
            raise ValueError(f"{name} must be a long tensor")
        if tokens.shape[-1] != self.tokens_per_frame:
            raise ValueError(f"{name} must have {self.tokens_per_frame} codes per frame, got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.layout.codebook_size):
            raise ValueError(f"{name} must be codes in [0, {self.layout.codebook_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    # ---- Eq. (1) -------------------------------------------------------------------------
    def context_ids(self, texts: Sequence[Sequence[str]], prev_tokens: torch.LongTensor) -> torch.LongTensor:
        """(B, L) ids of the context of frame i: i-1 full segments, then [text of u^i][BOI].

        texts[b] holds the sentences u^1..u^i, or one prompt (a video's) that stands for every frame's.
        """
        B = len(texts)
        if prev_tokens.ndim != 3 or prev_tokens.shape[0] != B:
            raise ValueError(f"prev_tokens must be (B={B}, i-1, {self.tokens_per_frame}), got {tuple(prev_tokens.shape)}")
        self._check_codes(prev_tokens, "prev_tokens")
        n_prev = prev_tokens.shape[1]
        rows = []
        for b, story in enumerate(texts):
            if not isinstance(story, str) and len(story) == 1:
                story = list(story) * (n_prev + 1)  # a video's one prompt u conditions every frame (Eq. 4)
            if isinstance(story, str) or len(story) != n_prev + 1:
                raise ValueError(f"texts[{b}] must hold the {n_prev + 1} sentences u^1..u^{n_prev + 1}, or one "
                                 f"prompt for every frame, got {story!r}")
            ids = story_ids(self.tokenizer, story[:n_prev], prev_tokens[b], self.layout) if n_prev else \
                torch.empty(0, dtype=torch.long)
            last = torch.tensor(text_segment(self.tokenizer, story[n_prev], self.layout) + [self.layout.boi])
            rows.append(torch.cat([ids, last]))
        return torch.stack(rows)

    @torch.no_grad()
    def generate(self, texts: Sequence[Sequence[str]], prev_tokens: torch.LongTensor,
                 generators: Sequence[torch.Generator]) -> torch.LongTensor:
        """Sample frame i's 64 codes for every story (Eq. 1).

        Args:
            texts: per story, the sentences u^1..u^i.
            prev_tokens: (B, i-1, 64) codes of the frames in context; (B, 0, 64) at the first frame.
            generators: B torch.Generators (on self.device); row b uses generators[b] only.
        Returns:
            (B, 64) long codes in [0, codebook_size).
        """
        if len(generators) != len(texts):
            raise ValueError(f"need one generator per story: {len(texts)} stories, {len(generators)} generators")
        first = prev_tokens.ndim == 3 and prev_tokens.shape[1] == 0
        w = self.first_frame_guidance_scale if first and self.first_frame_guidance_scale is not None \
            else self.guidance_scale
        top_k = self.first_frame_top_k if first and self.first_frame_top_k is not None else self.top_k
        if self.context_frames is not None and prev_tokens.ndim == 3 and prev_tokens.shape[1] >= self.context_frames:
            keep = self.context_frames - 1  # earlier frames in the window
            texts = [list(t)[len(t) - keep - 1:] if not isinstance(t, str) else t for t in texts]
            prev_tokens = prev_tokens[:, prev_tokens.shape[1] - keep:]
        ids = self.context_ids(texts, prev_tokens).to(self.device)
        B = len(texts)
        if w != 1.0:  # CFG as one batched forward: rows B.. condition on empty sentences
            empty = [[""] * (1 if isinstance(t, str) else len(t)) for t in texts]
            ids = torch.cat([ids, self.context_ids(empty, prev_tokens).to(self.device)])
        if ids.shape[1] + self.tokens_per_frame > self.lm.config.max_position_embeddings:
            raise ValueError(f"a context of {prev_tokens.shape[1] + 1} frames exceeds the ARM's "
                             f"{self.lm.config.max_position_embeddings} positions; pass context_frames=K to "
                             f"window it")
        lo, hi = self.layout.code_offset, self.layout.vocab_size
        n = self.tokens_per_frame
        out = torch.empty(B, n, dtype=torch.long, device=self.device)
        # Row b's n uniforms come from generators[b] in one call per frame, not one per code (loop.draw_rows)
        uniforms = torch.stack([torch.rand(n, generator=g, device=g.device) for g in generators]).to(self.device)
        if self.compile:
            return self._generate_compiled(ids, uniforms, w, top_k)
        # transformers' StaticCache: DynamicCache concatenates every layer's keys and values at every
        # code, a fifth of the ARM's time at batch 25; the frame's length is known, so preallocate it.
        from transformers import StaticCache

        past = StaticCache(config=self.lm.config, max_cache_len=ids.shape[1] + n)
        step_in, pos, history = ids, 0, ids
        for j in range(n):
            res = self.lm(**lm_inputs(self.lm, self.slots, self.layout, step_in, pos, history),
                          past_key_values=past, use_cache=True,
                          cache_position=torch.arange(pos, pos + step_in.shape[1], device=self.device))
            pos += step_in.shape[1]
            past = res.past_key_values
            out[:, j] = self._draw(res.logits[:, -1, lo:hi], uniforms[:, j], w, top_k)  # only image codes
            step_in = out[:, j:j + 1] + lo
            if w != 1.0:
                step_in = torch.cat([step_in, step_in])
            history = torch.cat([history, step_in], 1)
        return out

    # ---- the compiled path (compile=True) ------------------------------------------------
    def _draw(self, logits: torch.Tensor, u: torch.Tensor, w: float, top_k: int | None) -> torch.LongTensor:
        """(R, V) code logits (rows B.. unconditional where w != 1) and (B,) uniforms -> (B,) codes; the eager
        loop's CFG, temperature, top-k and inverse-CDF draw."""
        logits = logits.float()
        if w != 1.0:
            B = u.shape[0]
            cond, uncond = logits[:B], logits[B:]
            logits = uncond + w * (cond - uncond)
        logits = logits / self.temperature
        if top_k:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return draw_rows(logits.softmax(-1), u)

    def _decode_step(self, codes: torch.LongTensor, extra: torch.Tensor | None, cache_position: torch.Tensor,
                     past, u: torch.Tensor, w: float, top_k: int | None) -> torch.LongTensor:
        """One code for every row: (R, 1) input codes (+ their (R, 1, H) slot embeddings) at cache_position
        -> (B,) codes drawn with uniforms u (B,). Fixed shapes, so it compiles once per (R, w, top_k)."""
        lo, hi = self.layout.code_offset, self.layout.vocab_size
        if self.slots is None:
            inputs = {"input_ids": codes + lo}
        else:
            if self.slots.code_in is not None:  # every step input is a code: its codebook vector's embedding
                emb = self.slots.code_embeddings(codes)
            else:
                emb = self.lm.get_input_embeddings()(codes + lo)
            inputs = {"inputs_embeds": emb + extra.to(emb.dtype)}
        res = self.lm(**inputs, past_key_values=past, use_cache=True, cache_position=cache_position)
        return self._draw(res.logits[:, -1, lo:hi], u, w, top_k)

    def _frame_cache(self, ids: torch.LongTensor, n: int):
        """A StaticCache for this frame's L + n positions holding the keys and values of the longest prefix
        that the last frame's ids share with `ids` in every row (a causal LM's keys and values at a position
        depend on the ids up to it alone); returns (cache, prefix length)."""
        from transformers import StaticCache

        R, L = ids.shape
        past = StaticCache(config=self.lm.config, max_cache_len=L + n)
        keep = 0
        if self._held is not None and self._held[0].shape[0] == R:
            old_ids, old = self._held
            m = min(old_ids.shape[1], L - 1)  # at least the last id is prefilled, for the first code's logits
            keep = int((old_ids[:, :m] == ids[:, :m]).all(0).long().cumprod(0).sum())
        if keep:
            cfg = self.lm.config
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            past.early_initialization(R, cfg.num_key_value_heads, head_dim, old.layers[0].keys.dtype, self.device)
            for new, prev in zip(past.layers, old.layers):
                new.keys[:, :, :keep] = prev.keys[:, :, :keep]
                new.values[:, :, :keep] = prev.values[:, :, :keep]
                new.cumulative_length.fill_(keep)
        return past, keep

    def _generate_compiled(self, ids: torch.LongTensor, uniforms: torch.Tensor, w: float,
                           top_k: int | None) -> torch.LongTensor:
        """The frame's codes through an eager prefill and the compiled decode step (compile=True)."""
        R, L = ids.shape  # R = B rows, or 2B with CFG
        B, n = uniforms.shape
        lo, hi = self.layout.code_offset, self.layout.vocab_size
        if self._step is None:
            # shapes that change between calls (the cache's length from frame to frame, the rows) become
            # dynamic at their first change, so a story compiles the step about twice, not once per frame
            self._step = torch.compile(self._decode_step)
        # 1. A cache sized to the frame, with what the last frame's cache holds of this context: the story so
        #    far (in the loop, frame i's context is frame i-1's plus the corrected frame i-1 and sentence i)
        past, keep = self._frame_cache(ids, n)
        # 2. Eager prefill of the rest of the context (every row has the same length), last logits only
        res = self.lm(**lm_inputs(self.lm, self.slots, self.layout, ids[:, keep:], keep, ids), past_key_values=past,
                      use_cache=True, cache_position=torch.arange(keep, L, device=self.device), logits_to_keep=1)
        out = torch.empty(B, n, dtype=torch.long, device=self.device)
        out[:, 0] = self._draw(res.logits[:, -1, lo:hi], uniforms[:, 0], w, top_k)
        # 3. The step inputs' slot embeddings for the whole frame at once: the temporal skip reads the
        #    previous frame's codes, all in the context already (one segment back lies before position L)
        extra = None
        if self.slots is not None:
            sl = segment_slots(self.layout, L, n - 1, self.device)[None].expand(R, -1)
            prev = None
            if self.slots.has_skip:
                padded = torch.cat([ids, ids.new_zeros(R, n - 1)], 1)
                prev = previous_frame_codes(self.layout, padded, L, n - 1)
            extra = self.slots(sl, prev)  # (R, n-1, H)
        # 4. One compiled step per code: the LM forward at one position, CFG, top-k and the draw
        positions = torch.arange(L, L + n - 1, device=self.device)
        for j in range(1, n):
            codes = out[:, j - 1:j]
            if w != 1.0:
                codes = torch.cat([codes, codes])
            out[:, j] = self._step(codes, None if extra is None else extra[:, j - 1:j].contiguous(),
                                   positions[j - 1:j].contiguous(), past, uniforms[:, j].contiguous(), w, top_k)
        fed = out[:, :n - 1] + lo
        self._held = (torch.cat([ids, torch.cat([fed, fed]) if w != 1.0 else fed], 1), past)
        return out


def load_arm(arm_path=None, vq_path=None, device="cpu", **kwargs) -> ToyARM:
    """The shipped toy ARM (or one saved at `arm_path` with the VQ at `vq_path`)."""
    return ToyARM.from_pretrained(arm_path, vq_path, device, **kwargs)


def load_dm(path=None, device="cpu", **kwargs):
    """The shipped toy DM as an `acdc_lib.sdedit.UNetCorrector` (DDIM sampler, steps_offset=1)."""
    from acdc_lib.sdedit import UNetCorrector

    return UNetCorrector.from_pretrained(path if path is not None else CHECKPOINT_DIR / "dm", device, **kwargs)


def load_evaluator(path=None, device="cpu") -> ToyEvaluator:
    """The shipped independent evaluator (CLIP + probe)."""
    return ToyEvaluator.from_pretrained(path, device)


def load_vq(path=None, device="cpu"):
    """The shipped VQModel."""
    from diffusers import VQModel

    return VQModel.from_pretrained(path if path is not None else CHECKPOINT_DIR / "vq").to(device).eval()


def count_parameters(module: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in module.parameters())
