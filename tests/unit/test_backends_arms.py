"""Emu3ARM and JanusARM (acdc_lib.backends.arms) on tiny random transformers models, offline on CPU.

The tiny models (tests/unit/tiny_backends.py) work on 16x16 frames of 4x4 = 16 codes from a
32-entry codebook; the corrector is a tiny SD img2img pipeline (tests/unit/tiny_diffusers.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from acdc_lib.backends import components
from acdc_lib.backends.arms import EMU3_POSITIVE_PROMPT, Emu3ARM, JanusARM
from acdc_lib.loop import run_stories, run_video
from acdc_lib.memory import NoMemory
from acdc_lib.sdedit import ModelNotAvailableError, PipelineCorrector
from acdc_lib.types import ARM, LoopConfig

import tiny_backends as tb  # tests/unit is on sys.path under pytest's default import mode
import tiny_diffusers as td

STORIES = [["a cat sits.", "the cat runs.", "the cat sleeps."],
           ["a dog on a hill.", "the dog jumps.", "it rains."],
           ["an owl at night.", "the owl flies.", "the moon sets."]]
FAST = LoopConfig(num_inference_steps=2, strength=0.5)  # one SDEdit step per corrected frame
KINDS = ("emu3", "janus")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return {"emu3": tb.tiny_emu3(), "janus": tb.tiny_janus()}


def make_arm(models, kind: str, **settings):
    model, tok = models[kind]
    # top_k 8 keeps sampling away from the random model's long tail; the published defaults are tested below.
    settings = {"top_k": 8, **settings}
    return Emu3ARM(model, tok, **settings) if kind == "emu3" else JanusARM(model, tok, **settings)


@pytest.fixture(scope="module")
def corrector():
    return PipelineCorrector.from_pipeline(td.tiny_sd_img2img_pipeline())


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def empty(b: int) -> torch.Tensor:
    return torch.empty(b, 0, tb.TOKENS_PER_FRAME, dtype=torch.long)


class Recorder:
    """An ARM that records what the loop passes to generate()."""

    def __init__(self, arm):
        self.arm, self.tokens_per_frame, self.prev, self.texts = arm, arm.tokens_per_frame, [], []

    def generate(self, texts, prev_tokens, generators):
        self.prev.append(prev_tokens.clone())
        self.texts.append([list(t) for t in texts])
        return self.arm.generate(texts, prev_tokens, generators)

    def decode(self, tokens):
        return self.arm.decode(tokens)

    def encode(self, images):
        return self.arm.encode(images)


# --------------------------------------------------------------------------------------------
# The ACDC loop
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_loop_continues_from_reencoded_corrected_frames(models, corrector, kind):
    arm = make_arm(models, kind)
    assert isinstance(arm, ARM)
    rec = Recorder(arm)
    out = run_stories(STORIES[:2], rec, corrector, NoMemory(), FAST, seeds=[3, 4])
    assert [len(p[0]) for p in rec.texts] == [1, 2, 3]  # u^{1:i}
    assert [tuple(p.shape) for p in rec.prev] == [(2, 0, 16), (2, 1, 16), (2, 2, 16)]
    reencoded_differs = False
    for i in (1, 2):
        for j in range(i):
            corrected = torch.stack([s.frames[j].corrected_image for s in out.stories])  # (B, 3, 16, 16)
            assert torch.equal(rec.prev[i][:, j], arm.encode(corrected))             # v~^j = E(x~_0^j)
            arm_tokens = torch.stack([s.frames[j].arm_tokens for s in out.stories])
            reencoded_differs |= not torch.equal(rec.prev[i][:, j], arm_tokens)
    assert reencoded_differs  # the context is the corrected frame, not the ARM's own sample
    for s in out.stories:
        for f in s.frames:
            assert f.arm_image.shape == (3, 16, 16) and 0 <= f.arm_image.min() and f.arm_image.max() <= 1
            assert f.arm_tokens.dtype == torch.long and 0 <= f.arm_tokens.min() and f.arm_tokens.max() < 32


@pytest.mark.parametrize("kind", KINDS)
def test_story_is_the_same_alone_and_in_a_batch(models, corrector, kind):
    arm = make_arm(models, kind)
    batch = run_stories(STORIES, arm, corrector, NoMemory(), FAST, seeds=[5, 6, 7])
    alone = run_stories(STORIES[1:2], arm, corrector, NoMemory(), FAST, seeds=[6])
    again = run_stories(STORIES[1:2], arm, corrector, NoMemory(), FAST, seeds=[6])
    for fb, fa, f2 in zip(batch.stories[1].frames, alone.stories[0].frames, again.stories[0].frames):
        assert torch.equal(fb.arm_tokens, fa.arm_tokens)
        assert torch.equal(fb.context_tokens, fa.context_tokens)
        # CPU BLAS may pick other kernels for another batch size: images agree to float rounding.
        torch.testing.assert_close(fb.final_image, fa.final_image, atol=1e-5, rtol=0)
        assert torch.equal(fa.arm_tokens, f2.arm_tokens) and torch.equal(fa.final_image, f2.final_image)


@pytest.mark.parametrize("kind", KINDS)
def test_the_context_and_the_settings_change_the_sample(models, kind):
    arm = make_arm(models, kind)
    first = arm.generate([STORIES[0][:1]], empty(1), gens(0))
    other = (first + 1) % 32  # another code at every position
    a = arm.generate([STORIES[0][:2]], first[:, None], gens(1))
    b = arm.generate([STORIES[0][:2]], other[:, None], gens(1))
    assert not torch.equal(a, b)  # frame 2 depends on frame 1's tokens
    c = arm.generate([STORIES[1][:1]], empty(1), gens(0))
    assert not torch.equal(first, c)  # and on the text
    # first_frame_top_k=1 makes frame 1 greedy (seed-free) while later frames still sample.
    greedy = make_arm(models, kind, first_frame_top_k=1)
    f1, f2 = greedy.generate([STORIES[0][:1]] * 2, empty(2), gens(0, 1))
    assert torch.equal(f1, f2)
    later = greedy.generate([STORIES[0][:2]] * 2, torch.stack([f1, f1])[:, None], gens(0, 1))
    assert not torch.equal(later[0], later[1])
    # No guidance runs only the conditional rows and samples something else than CFG 5.
    assert not torch.equal(make_arm(models, kind, guidance_scale=1.0).generate([STORIES[0][:1]], empty(1), gens(0)),
                           make_arm(models, kind, guidance_scale=5.0).generate([STORIES[0][:1]], empty(1), gens(0)))


def test_emu3_context_is_laid_out_as_emu3_writes_images(models):
    model, tok = models["emu3"]
    arm = make_arm(models, "emu3")
    codes = torch.randint(0, 32, (1, 2, 16), generator=torch.Generator().manual_seed(0))
    ids = arm.context_ids([["a cat.", "it runs.", "it sleeps."]], codes)[0]
    # Emu3Processor.replace_image_token writes "<|image start|>{h}*{w}<|image token|>" + image tokens
    # + "<|extra_201|><|image end|>"; the model's convert_img2bpe gives those tokens (rows + eol).
    vocab = model.config.vocabulary_map
    header = [vocab["<|image start|>"], *tok("4*4", add_special_tokens=False).input_ids, vocab["<|image token|>"]]

    def image(c):
        bpe = model.model.vocabulary_mapping.convert_img2bpe(c.view(4, 4)).flatten().tolist()  # (4 * 5,)
        return header + bpe + [vocab["<|extra_201|>"], vocab["<|image end|>"]]

    def text(s):  # BAAI's example appends its positive prompt to every prompt
        return tok(s + EMU3_POSITIVE_PROMPT, add_special_tokens=False).input_ids

    want = [tok.bos_token_id] + text("a cat.") + image(codes[0, 0]) + text("it runs.") + image(codes[0, 1]) \
        + text("it sleeps.") + header
    assert ids == want
    # One prompt for several frames (video, Eq. 4) goes once, before all of them.
    video = arm.context_ids([["a cat runs."]], codes)[0]
    assert video == [tok.bos_token_id] + text("a cat runs.") + image(codes[0, 0]) + image(codes[0, 1]) + header
    # A context longer than the model's positions (1024 here) is refused before any forward pass.
    big = make_arm(models, "emu3", image_size=64, context_frames=2)  # 16 x 16 codes a frame, 16 x 17 + 9 positions
    with pytest.raises(ValueError, match="positions"):
        big.generate([["a" * 600] * 5], torch.zeros(1, 4, 256, dtype=torch.long), gens(0))


@pytest.mark.parametrize("kind", KINDS)
def test_video_loop_runs_with_one_prompt(models, kind):
    out = run_video(["a cat runs."], make_arm(models, kind), None, num_frames=3, chunk_length=3,
                    correct_chunks="none", seeds=[1])
    assert out.videos[0].arm_tokens.shape == (3, 16) and out.videos[0].final_frames.shape == (3, 3, 16, 16)


# --------------------------------------------------------------------------------------------
# D and E
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_decode_encode_round_trip_shapes_and_ranges(models, kind):
    arm = make_arm(models, kind)
    assert arm.tokens_per_frame == 16 and arm.image_size == (16, 16) and arm.codebook_size == 32
    tokens = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(0))
    images = arm.decode(tokens)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    again = arm.encode(images)
    assert again.shape == (3, 16) and again.dtype == torch.long and 0 <= again.min() and again.max() < 32
    # Another size is resized (bilinear) to the model's 16x16 before encoding.
    big = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    assert arm.encode(big).shape == (2, 16)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        arm.decode(torch.full((1, 16), 32))
    with pytest.raises(ValueError, match="long tensor"):
        arm.decode(tokens.float())
    with pytest.raises(ValueError, match="16 codes per frame"):
        arm.decode(tokens[:, :8])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        arm.encode(images * 2)
    with pytest.raises(ValueError, match="RGB"):
        arm.encode(images[:, :1])
    with pytest.raises(ValueError, match="generator per story"):
        arm.generate([["a"], ["b"]], empty(2), gens(0))
    with pytest.raises(ValueError, match="sentences"):
        arm.generate([["a", "b", "c"]], torch.zeros(1, 1, 16, dtype=torch.long), gens(0))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_on_a_saved_folder_and_a_missing_one(models, tmp_path, kind):
    cls, save = (Emu3ARM, tb.save_tiny_emu3) if kind == "emu3" else (JanusARM, tb.save_tiny_janus)
    folder = save(tmp_path / kind)
    loaded = cls.from_pretrained(folder, device="cpu", top_k=8)
    assert loaded.dtype == torch.float32 and loaded.image_size == (16, 16)  # Emu3: from the config's image_area
    built = make_arm(models, kind)
    assert torch.equal(loaded.generate([STORIES[0][:1]], empty(1), gens(0)),
                       built.generate([STORIES[0][:1]], empty(1), gens(0)))
    registry = getattr(components, f"{kind}_arm")(str(folder), device="cpu", top_k=8)
    assert isinstance(registry, cls)
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelNotAvailableError, match="no such folder") as err:
        cls.from_pretrained(missing)
    assert str(missing) in str(err.value) and "model_id" in str(err.value)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------
def test_published_defaults(models):
    emu3, janus = Emu3ARM(*models["emu3"]), JanusARM(*models["janus"])
    assert (emu3.guidance_scale, emu3.top_k, emu3.temperature) == (3.0, 2048, 1.0)
    assert (janus.guidance_scale, janus.top_k, janus.temperature) == (5.0, None, 1.0)
    assert emu3.first_frame_guidance_scale is None and janus.first_frame_top_k is None
    # top_k larger than the codebook keeps every code (as transformers' TopKLogitsWarper does).
    assert emu3.generate([["a cat."]], empty(1), gens(0)).shape == (1, 16)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("setting, value, message", [
    ("temperature", 0.0, "temperature"), ("temperature", -1.0, "temperature"),
    ("temperature", math.nan, "temperature"), ("temperature", True, "temperature"),
    ("top_k", 0, "top_k"), ("top_k", 2.5, "top_k"), ("top_k", True, "top_k"),
    ("guidance_scale", 0.5, "guidance_scale"), ("guidance_scale", math.inf, "guidance_scale"),
    ("first_frame_guidance_scale", 0.0, "first_frame_guidance_scale"),
    ("first_frame_top_k", -1, "first_frame_top_k"), ("prompt_template", "no slot", "prompt_template"),
])
def test_bad_settings_raise(models, kind, setting, value, message):
    with pytest.raises(ValueError, match=message) as err:
        make_arm(models, kind, **{setting: value})
    assert repr(value) in str(err.value)


def test_emu3_image_size_must_fit_the_vq(models):
    with pytest.raises(ValueError, match="multiples of the VQ's spatial factor 4"):
        make_arm(models, "emu3", image_size=18)
