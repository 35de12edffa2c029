"""Tiny deterministic stand-ins for the ARM / Corrector / VideoCorrector / Memory protocols.

A frame is 4 tokens [frame index, random draw, context checksum, correction marker], each below
SCALE = 2**20. decode() writes token k / SCALE into pixel k of a (1, 2, 2) image (exact in float32)
and encode() inverts it, so whatever a corrector writes into the marker pixel comes back as a token
and shows up in the checksum of every later frame the ARM generates.
"""
from __future__ import annotations

import torch

from acdc_lib.types import MemoryOutput

SCALE = 2 ** 20
PRIME = 1_000_003  # checksum modulus, < SCALE so every token stays a valid pixel


def checksum(prev: torch.Tensor) -> int:
    """Position-weighted sum of one row's context tokens (i, n), so order and values both count."""
    flat = prev.reshape(-1).long()
    return int((flat * torch.arange(1, flat.numel() + 1)).sum()) % PRIME


class DummyARM:
    """tokens = [frame index, draw from generators[b], checksum of the context (or 0), 0]."""

    tokens_per_frame = 4

    def __init__(self, context_dependent: bool = True, out_tokens: int = 4, decode_offset: float = 0.0):
        self.context_dependent = context_dependent
        self.out_tokens = out_tokens  # != 4 to simulate a broken backend
        self.decode_offset = decode_offset  # != 0 to push decoded images out of [0, 1]
        self.calls: list[dict] = []

    def generate(self, texts, prev_tokens, generators):
        self.calls.append({"texts": [list(t) for t in texts], "prev": prev_tokens.clone()})
        rows = []
        for b, g in enumerate(generators):
            draw = int(torch.randint(0, SCALE, (1,), generator=g))
            check = checksum(prev_tokens[b]) if self.context_dependent else 0
            rows.append([prev_tokens.shape[1], draw, check, 0] + [0] * (self.out_tokens - 4))
        return torch.tensor(rows, dtype=torch.long)[:, : self.out_tokens]  # (B, out_tokens)

    def decode(self, tokens):
        return tokens.double().div(SCALE).float().view(-1, 1, 2, 2) + self.decode_offset  # (B, 1, 2, 2)

    def encode(self, images):
        return (images.double() * SCALE).round().long().reshape(images.shape[0], 4)  # (B, 4)


class DummyCorrector:
    """Sets the marker pixel of row b to (1 + a draw from generators[b]) / SCALE; records each call."""

    def __init__(self):
        self.calls: list[dict] = []

    def correct(self, images, prompts, *, strength=0.5, guidance_scale=7.5, num_inference_steps=50,
                generators=None):
        self.calls.append({"prompts": list(prompts), "strength": strength, "guidance_scale": guidance_scale,
                           "num_inference_steps": num_inference_steps, "shape": tuple(images.shape)})
        out = images.clone()
        for b, g in enumerate(generators):
            out[b, 0, 1, 1] = (1 + int(torch.randint(0, 1000, (1,), generator=g))) / SCALE
        return out


class DummyVideoCorrector:
    """Like DummyCorrector, on every frame of a (B, L, 1, 2, 2) chunk."""

    def __init__(self):
        self.calls: list[dict] = []

    def correct_video(self, videos, prompts, *, strength=0.5, guidance_scale=7.5, num_inference_steps=50,
                      generators=None):
        self.calls.append({"prompts": list(prompts), "strength": strength, "shape": tuple(videos.shape)})
        out = videos.clone()
        for b, g in enumerate(generators):
            out[b, :, 0, 1, 1] = (1 + int(torch.randint(0, 1000, (1,), generator=g))) / SCALE
        return out


class DummyMemory:
    """Prefixes every sentence with "MEM: "; `drop` removes that many prompts to simulate a broken LLM."""

    def __init__(self, drop: int = 0):
        self.drop = drop
        self.calls: list[list[str]] = []

    def refine(self, sentences):
        self.calls.append(list(sentences))
        prompts = ["MEM: " + s for s in sentences]
        return MemoryOutput(prompts=prompts[: len(prompts) - self.drop], source="dummy")
