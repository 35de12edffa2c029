"""Builders of tiny, randomly initialised transformers ARMs (Emu3, Janus) for offline tests.

Nothing is downloaded: every model is built from a config under `torch.manual_seed(seed)`, so two
calls with the same seed give identical weights. Both work on 16x16 RGB frames of 4x4 = 16 image
tokens (the VQ downsamples by 4), so a frame takes 16 sampling steps on 2 CPU cores.

The tokenizers are character-level (a `tokenizers` BPE without merges) over lowercase letters,
digits, space and a little punctuation, plus each model's special tokens under their real names
(Emu3: "<|image start|>", "<|visual token 000000|>", ...; Janus: "<begin_of_image>", ...), so the
adapters in `acdc_lib.backends.arms` find them exactly as in the published checkpoints.

Public builders (reused by other tests and notebooks):
    tiny_emu3, tiny_janus  -> (model, tokenizer)
    save_tiny_emu3, save_tiny_janus  -> a folder that `Emu3ARM` / `JanusARM.from_pretrained` load
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import (Emu3Config, Emu3ForConditionalGeneration, JanusConfig, JanusForConditionalGeneration,
                          PreTrainedTokenizerFast)

IMAGE_SIZE = 16  # pixels per side of a frame of the tiny models
TOKENS_PER_FRAME = 16  # 4x4 VQ codes
CODEBOOK_SIZE = 32
HIDDEN = 32  # text hidden size of both tiny LMs
SHARPEN = 30.0  # output heads are scaled by this (logit std about 3 instead of 0.1)
_CHARS = list(string.ascii_lowercase + string.digits + " .,!?'-*:|<>\n")


def _char_tokenizer(specials: list[str], **named) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one id per char of _CHARS, then `specials` as added tokens."""
    vocab = {c: i for i, c in enumerate(["<unk>"] + _CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **named)
    tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    return tok


def _sharpen(head: torch.nn.Linear, factor: float = SHARPEN) -> None:
    """Scale an output head so a random model's next-token distributions are far from uniform.

    At the default init (std 0.02) the logits are almost flat, so two different contexts draw the
    same tokens from the same generator and a test could not see the context at work.
    """
    with torch.no_grad():
        head.weight.mul_(factor)


# --------------------------------------------------------------------------------------------
# Emu3
# --------------------------------------------------------------------------------------------
EMU3_SPECIALS = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<image>", "<|image start|>", "<|image end|>",
                 "<|image token|>", "<|extra_200|>", "<|extra_201|>"]


def tiny_emu3_tokenizer() -> PreTrainedTokenizerFast:
    """Emu3's special tokens (bos <|extra_203|>, eol <|extra_200|>, eof <|extra_201|>, ...) and visual tokens."""
    visual = [f"<|visual token {i:06d}|>" for i in range(CODEBOOK_SIZE)]
    return _char_tokenizer(EMU3_SPECIALS + visual, bos_token="<|extra_203|>", eos_token="<|extra_204|>",
                           pad_token="<|endoftext|>")


def tiny_emu3(seed: int = 0) -> tuple[Emu3ForConditionalGeneration, PreTrainedTokenizerFast]:
    """A 2-layer Emu3ForConditionalGeneration (hidden 32) with a 3-level VQ (16x16 frames -> 4x4 codes).

    The config's `vocabulary_map` is the tokenizer's vocabulary, as in the published checkpoints.
    """
    tok = tiny_emu3_tokenizer()
    vocab = tok.get_vocab()
    text = dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|extra_203|>"],
                eos_token_id=vocab["<|extra_204|>"], attention_dropout=0.0)
    # GroupNorm(32) inside the VQ needs channel counts divisible by 32; 3 levels downsample by 4.
    vq = dict(codebook_size=CODEBOOK_SIZE, embed_dim=4, latent_channels=4, base_channels=32,
              channel_multiplier=[1, 1, 2], num_res_blocks=1, attn_resolutions=[], hidden_size=64,
              num_attention_heads=1, temporal_downsample_factor=4)
    # image_area: the frame area Emu3ARM uses when no image_size is given (the original Emu3 config's key).
    config = Emu3Config(text_config=text, vq_config=vq, vocabulary_map=vocab, image_area=IMAGE_SIZE * IMAGE_SIZE)
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(config).eval()
    _sharpen(model.lm_head)
    return model, tok


def save_tiny_emu3(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Emu3 model and its tokenizer to `path` (for `Emu3ARM.from_pretrained(path)`)."""
    path = Path(path)
    model, tok = tiny_emu3(seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------
# Janus
# --------------------------------------------------------------------------------------------
JANUS_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image_placeholder>",
                  "<begin_of_image>", "<end_of_image>"]


def tiny_janus_tokenizer() -> PreTrainedTokenizerFast:
    """Janus' special tokens (bos, eos, pad, <begin_of_image>, <end_of_image>, <image_placeholder>)."""
    return _char_tokenizer(JANUS_SPECIALS, bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>",
                           pad_token="<｜▁pad▁｜>")


def tiny_janus(seed: int = 0) -> tuple[JanusForConditionalGeneration, PreTrainedTokenizerFast]:
    """A 2-layer JanusForConditionalGeneration (Llama, hidden 32) with a 3-level VQ (16x16 frames -> 4x4 codes).

    The VQ's patch grid (4x4) comes from the vision config (image_size 16 / patch_size 4), so
    `vision_config.num_image_tokens` is 16; projection dims equal the text hidden size.
    """
    tok = tiny_janus_tokenizer()
    vocab = tok.get_vocab()
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                pad_token_id=vocab["<｜▁pad▁｜>"], bos_token_id=vocab["<｜begin▁of▁sentence｜>"],
                eos_token_id=vocab["<｜end▁of▁sentence｜>"])
    vision = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE_SIZE,
                  patch_size=4, projection_dim=HIDDEN, num_image_tokens=TOKENS_PER_FRAME)
    vq = dict(embed_dim=8, num_embeddings=CODEBOOK_SIZE, latent_channels=8, base_channels=32,
              channel_multiplier=[1, 1, 2], num_res_blocks=1, projection_dim=HIDDEN, image_token_embed_dim=HIDDEN)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=vocab["<image_placeholder>"])
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    _sharpen(model.model.generation_head.vision_head)
    # At the default init a code's embedding passes three std-0.02 layers (embedding, fc1, fc2) and
    # comes out near 1e-4, so earlier frames would barely reach the LM. Rescale the last layer so
    # codes come out at the size of text embeddings, as Emu3's image tokens (ordinary ids) do.
    with torch.no_grad():
        codes = model.prepare_embeddings_for_image_generation(torch.arange(CODEBOOK_SIZE))  # (V, HIDDEN)
        last = model.model.generation_aligner.hidden_layers[-1]
        scale = model.get_input_embeddings().weight.std() / codes.std()
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model, tok


def save_tiny_janus(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Janus model and its tokenizer to `path` (for `JanusARM.from_pretrained(path)`)."""
    path = Path(path)
    model, tok = tiny_janus(seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
