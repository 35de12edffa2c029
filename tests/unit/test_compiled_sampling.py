"""Fast sampling paths give the eager paths' results: the ARMs' compiled decode step (compile=True) draws the
eager loop's codes, and the corrector's batched VAE encode (batched_encode=True) its per-row latents.

Both paths draw row b's codes from generators[b]'s uniforms by the inverse CDF; the compiled one runs the
LM over a static cache, with CFG, temperature, top-k and the draw inside one
torch.compile'd step. Tiny random LMs, so that compiling on the CPU stays cheap.
"""
from __future__ import annotations

import pytest
import torch

from acdc_lib.toyworld import models as M
from acdc_lib.toyworld.text import build_tokenizer

pytestmark = pytest.mark.slow  # torch.compile's first build of each step takes some seconds on a CPU

STORIES = [["Luna the owl stood on the beach at night.", "She jumped.", "The owl sat.", "Then she ran."],
           ["Max the pig sat in the garden.", "The pig ran.", "He stood.", "The pig jumped."],
           ["Coco the cat ran in the forest.", "Then she sat.", "The cat stood.", "She ran."]]


@pytest.fixture(scope="module")
def parts():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    tok = build_tokenizer()
    vq = M.build_vq(codebook_size=32, channels=(16, 16, 16), embed_dim=4).eval()
    layout = M.ARMLayout(n_text=len(tok), codebook_size=32)
    lm = LlamaForCausalLM(M.arm_config(layout.vocab_size, hidden=32, layers=1, heads=2, max_frames=4))
    # the shipped ARM's kind of slots: code vectors in, temporal skip from the previous frame
    slots = M.CodeSlots(32, layout.tokens_per_frame, previous_codes=32, code_dim=4, codebook_size=32)
    slots.set_codebook(vq.quantize.embedding.weight)
    with torch.no_grad():  # random slot weights large enough to move the logits
        for p in slots.parameters():
            p.normal_(0.0, 0.5)
    return tok, vq, layout, lm, slots


def story_codes(arm, seeds) -> torch.LongTensor:
    """Every frame of STORIES, each frame conditioned on the ARM's own earlier frames: (B, frames, 64)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    prev = torch.empty(len(STORIES), 0, arm.tokens_per_frame, dtype=torch.long)
    for i in range(len(STORIES[0])):
        tok = arm.generate([s[:i + 1] for s in STORIES], prev, gens)
        prev = torch.cat([prev, tok[:, None]], 1)
    return prev


@pytest.mark.parametrize("settings", [
    {"slots": True},  # the shipped ARM's setting: no CFG, all codes
    {"slots": True, "guidance_scale": 3.0, "top_k": 8, "first_frame_guidance_scale": 5.0, "first_frame_top_k": 16},
    {"slots": False, "temperature": 0.7, "guidance_scale": 2.0, "context_frames": 2},
], ids=["plain", "cfg-topk-first-frame", "no-slots-window"])
def test_compiled_and_eager_sampling_draw_the_same_codes(parts, settings):
    tok, vq, layout, lm, slots = parts
    kw = dict(settings)
    slots = slots if kw.pop("slots") else None
    eager = M.ToyARM(lm, vq, tok, layout, slots=slots, **kw)
    compiled = M.ToyARM(lm, vq, tok, layout, slots=slots, compile=True, **kw)
    seeds = [3, 4, 5]
    want = story_codes(eager, seeds)
    got = story_codes(compiled, seeds)
    assert got.shape == (3, 4, 64)
    assert torch.equal(got, want), f"{int((got != want).sum())} of {want.numel()} codes differ"
    # the codes depend on the seeds (a path that ignored the uniforms would still match itself)
    assert not torch.equal(story_codes(compiled, [6, 7, 8]), want)


def test_compiled_sampling_keeps_rows_independent_of_the_batch(parts):
    tok, vq, layout, lm, slots = parts
    arm = M.ToyARM(lm, vq, tok, layout, slots=slots, compile=True, guidance_scale=2.0)
    prev = torch.randint(0, 32, (3, 1, 64), generator=torch.Generator().manual_seed(1))
    texts = [s[:2] for s in STORIES]
    batch = arm.generate(texts, prev, [torch.Generator().manual_seed(s) for s in (10, 11, 12)])
    alone = arm.generate(texts[1:2], prev[1:2], [torch.Generator().manual_seed(11)])
    assert torch.equal(alone[0], batch[1])


def test_another_arm_reuses_the_compiled_step_without_recompiling(parts):
    # An ARM loaded later in the same process (notebook 03 loads the ARM, its weak and its strong snapshot)
    # reuses the compiled step's graphs. A step that specialised on anything of one instance would recompile
    # for each and, past dynamo's recompile limit, fall back to eager without an error.
    import copy

    from torch._dynamo.utils import counters

    tok, vq, layout, lm, slots = parts
    want = story_codes(M.ToyARM(lm, vq, tok, layout, slots=slots), [1, 2, 3])
    story_codes(M.ToyARM(lm, vq, tok, layout, slots=slots, compile=True), [1, 2, 3])
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(3):
        other = M.ToyARM(copy.deepcopy(lm), vq, tok, layout, slots=copy.deepcopy(slots), compile=True)
        assert torch.equal(story_codes(other, [1, 2, 3]), want)
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_must_be_a_bool(parts):
    tok, vq, layout, lm, slots = parts
    with pytest.raises(ValueError, match="compile must be True or False"):
        M.ToyARM(lm, vq, tok, layout, compile="yes")


# ---- the real ARMs on tiny random models -----------------------------------------------------
REAL_STORIES = [["a cat sits.", "the cat runs.", "the cat sleeps."],
                ["a dog on a hill.", "the dog jumps.", "it rains."]]


def real_story_codes(arm, seeds) -> torch.LongTensor:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    prev = torch.empty(len(REAL_STORIES), 0, arm.tokens_per_frame, dtype=torch.long)
    for i in range(len(REAL_STORIES[0])):
        tok = arm.generate([s[:i + 1] for s in REAL_STORIES], prev, gens)
        prev = torch.cat([prev, tok[:, None]], 1)
    return prev


@pytest.mark.parametrize("kind", ["emu3", "janus"])
def test_real_arms_compiled_and_eager_draw_the_same_story(kind):
    import tiny_backends as tb  # tests/unit is on sys.path under pytest's default import mode
    from acdc_lib.backends.arms import Emu3ARM, JanusARM

    model, tok = tb.tiny_emu3() if kind == "emu3" else tb.tiny_janus()
    cls = Emu3ARM if kind == "emu3" else JanusARM
    # CFG rows, top-k and a first frame sampled more freely, as the paper's settings
    kw = {"top_k": 8, "guidance_scale": 2.0, "first_frame_guidance_scale": 3.0, "first_frame_top_k": 16}
    want = real_story_codes(cls(model, tok, **kw), [1, 2])
    got = real_story_codes(cls(model, tok, compile=True, **kw), [1, 2])
    assert got.shape == (2, 3, tb.TOKENS_PER_FRAME)
    assert torch.equal(got, want), f"{int((got != want).sum())} of {want.numel()} codes differ"
    assert not torch.equal(real_story_codes(cls(model, tok, **kw), [3, 4]), want)


# ---- the corrector's batched VAE encode ------------------------------------------------------
@pytest.mark.parametrize("latent", ["kl", "vq"])
def test_batched_encode_matches_the_per_row_encode_up_to_float_rounding(latent):
    import tiny_diffusers as td
    from acdc_lib.correctors import UNetCorrector

    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    rows = UNetCorrector(**td.tiny_unet_corrector_parts(latent))
    batched = UNetCorrector(**td.tiny_unet_corrector_parts(latent), batched_encode=True)
    z_rows, z_batched = rows._to_model_space(x, gens()), batched._to_model_space(x, gens())
    assert z_batched.shape == z_rows.shape == (3, 4, 8, 8)
    torch.testing.assert_close(z_batched, z_rows, atol=1e-5, rtol=1e-5)  # row b's posterior noise from generators[b]
    # each row's latent is its own frame's (a shuffled batch would fail the tolerance above by far)
    assert (z_rows[0] - z_rows[1]).abs().max() > 1e-2
    out_rows = rows.correct(x, ["a cat", "a dog", "an owl"], strength=0.5, num_inference_steps=4, generators=gens())
    out_batched = batched.correct(x, ["a cat", "a dog", "an owl"], strength=0.5, num_inference_steps=4,
                                  generators=gens())
    torch.testing.assert_close(out_batched, out_rows, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="batched_encode must be True or False"):
        UNetCorrector(**td.tiny_unet_corrector_parts(latent), batched_encode=1)
