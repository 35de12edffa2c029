"""The real ARMs (acdc_lib.backends.arms) as their authors and transformers run them, on tiny random models.

- context windows at the real models' position counts and frame sizes (Emu3-Gen: 9,216 positions, 8 pixels a
  code; Janus-Pro: 4,096 positions, 384 px frames of 24 x 24 codes), and the frame sizes they refuse;
- Janus-Pro's re-encoding against a port of DeepSeek's nearest-code rule (janus/models/vq_model.py);
- dtypes (LM in bfloat16, VQ in float32) and the ARM's own dtype option;
- story generators on the ARM's device in the physical and video experiments;
- prompt formats (Emu3's positive prompt, DeepSeek's separator after an assistant turn) and the GPU sets' settings;
- equivalence with the reference loops: Emu3 against `Emu3ForConditionalGeneration.generate` with BAAI's
  prefix-constrained visual tokens and negative prompt; Janus against a port of DeepSeek's
  generation_inference.py and against `generate(generation_mode="image")`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import (Emu3Config, Emu3ForConditionalGeneration, JanusConfig, JanusForConditionalGeneration,
                          LogitsProcessor, LogitsProcessorList)

import tiny_backends as tb  # tests/unit is on sys.path under pytest's default import mode
from acdc_lib.backends import arms as A
from acdc_lib.backends.arms import EMU3_POSITIVE_PROMPT, Emu3ARM, JanusARM
from acdc_lib.io import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

EMU3_POSITIONS = 9216  # Emu3-Gen's text_config.max_position_embeddings
JANUS_POSITIONS = 4096  # the sequence length of DeepSeek-LLM, the LM Janus-Pro is built on
STORY = [f"sentence {k} of a long story." for k in range(1, 13)]


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def emu3_at(positions: int, levels: int, seed: int = 0):
    """A tiny Emu3 with `positions` positions and a VQ of `levels` levels (spatial factor 2 ** (levels - 1))."""
    tok = tb.tiny_emu3_tokenizer()
    vocab = tok.get_vocab()
    text = dict(vocab_size=len(tok), hidden_size=tb.HIDDEN, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
                pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|extra_203|>"],
                eos_token_id=vocab["<|extra_204|>"])
    vq = dict(codebook_size=tb.CODEBOOK_SIZE, embed_dim=4, latent_channels=4, base_channels=32,
              channel_multiplier=[1] * levels, num_res_blocks=1, attn_resolutions=[], hidden_size=64,
              num_attention_heads=1, temporal_downsample_factor=4)
    torch.manual_seed(seed)
    return Emu3ForConditionalGeneration(Emu3Config(text_config=text, vq_config=vq, vocabulary_map=vocab)).eval(), tok


def janus_at(positions: int, side: int, patch: int, levels: int, seed: int = 0):
    """A tiny Janus with `positions` positions and side x side frames of (side / patch)^2 codes."""
    tok = tb.tiny_janus_tokenizer()
    vocab = tok.get_vocab()
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=tb.HIDDEN, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
                pad_token_id=vocab["<｜▁pad▁｜>"], bos_token_id=vocab["<｜begin▁of▁sentence｜>"],
                eos_token_id=vocab["<｜end▁of▁sentence｜>"])
    vision = dict(hidden_size=tb.HIDDEN, num_hidden_layers=1, num_attention_heads=2, image_size=side,
                  patch_size=patch, projection_dim=tb.HIDDEN, num_image_tokens=(side // patch) ** 2)
    vq = dict(embed_dim=8, num_embeddings=tb.CODEBOOK_SIZE, latent_channels=8, base_channels=32,
              channel_multiplier=[1] * levels, num_res_blocks=1, projection_dim=tb.HIDDEN,
              image_token_embed_dim=tb.HIDDEN)
    torch.manual_seed(seed)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=vocab["<image_placeholder>"])
    return JanusForConditionalGeneration(config).eval(), tok


class SampleRecorder:
    """Stands in for an ARM's `_sample`: records each call's rows and returns code 0 (no forward pass)."""

    def __init__(self, arm):
        self.arm, self.rows = arm, []

    def __call__(self, inputs, mask, generators, guidance, top_k):
        self.rows.append([inputs[r][mask[r].bool()] for r in range(inputs.shape[0])])
        return torch.zeros(len(generators), self.arm.tokens_per_frame, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Context windows and frame sizes at the real models' positions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side, frame, window", [(256, 1065, None), (512, 4169, 2)])
def test_emu3_window_at_real_positions_runs_a_story_longer_than_fits(monkeypatch, side, frame, window):
    model, tok = emu3_at(EMU3_POSITIONS, levels=4)  # 8 pixels a code, as Emu3's VQ
    arm = Emu3ARM(model, tok, image_size=side, top_k=8)
    assert arm._frame_positions() == frame  # header "<|image start|>32*32<|image token|>", 32 rows of 33, eof, eoi
    fixed = 1 + len(tok(A.EMU3_NEGATIVE_PROMPT, add_special_tokens=False).input_ids)
    K = (EMU3_POSITIONS - fixed) // (frame + A.TEXT_POSITIONS)
    assert arm.context_frames == K and K == (window or K) and K >= 2
    rec = SampleRecorder(arm)
    monkeypatch.setattr(arm, "_sample", rec)
    n = arm.tokens_per_frame
    codes = torch.randint(0, 32, (1, len(STORY), n), generator=torch.Generator().manual_seed(0))
    assert len(STORY) > K  # the whole story would not fit
    for i in range(len(STORY)):
        arm.generate([STORY[: i + 1]], codes[:, :i], gens(0))
        lo = max(0, i - (K - 1))  # the last K - 1 frames and their sentences, then sentence i + 1
        want = arm.context_ids([STORY[lo: i + 1]], codes[:, lo:i])[0]
        cond, uncond = rec.rows[-1]
        assert cond.tolist() == want
        assert max(len(cond), len(uncond)) + n + arm.grid[0] - 1 <= EMU3_POSITIONS
    # the same story without a window does not fit: the positions check refuses it before any forward pass
    monkeypatch.setattr(arm, "context_frames", len(STORY))
    with pytest.raises(ValueError, match=f"more than the model's {EMU3_POSITIONS}"):
        arm.generate([STORY], codes[:, :-1], gens(0))


def test_emu3_video_window_keeps_the_prompt(monkeypatch):
    model, tok = emu3_at(EMU3_POSITIONS, levels=4)
    arm = Emu3ARM(model, tok, image_size=512, top_k=8)
    rec = SampleRecorder(arm)
    monkeypatch.setattr(arm, "_sample", rec)
    codes = torch.randint(0, 32, (1, 5, arm.tokens_per_frame), generator=torch.Generator().manual_seed(0))
    arm.generate([["a cat runs."]], codes, gens(0))
    assert rec.rows[-1][0].tolist() == arm.context_ids([["a cat runs."]], codes[:, -1:])[0]  # K = 2: the last frame


def test_janus_pro_window_at_real_positions(monkeypatch):
    model, tok = janus_at(JANUS_POSITIONS, side=384, patch=16, levels=5)  # Janus-Pro: 384 px, 24 x 24 codes
    arm = JanusARM(model, tok, top_k=8)
    assert arm.image_size == (384, 384) and arm.tokens_per_frame == 576
    K = (JANUS_POSITIONS - 1) // (576 + 3 + A.TEXT_POSITIONS)
    assert arm.context_frames == K == 6  # a whole story of the test split
    rec = SampleRecorder(arm)
    monkeypatch.setattr(arm, "_sample", rec)
    story = [f"sentence {k}." for k in range(K + 3)]
    codes = torch.randint(0, 32, (1, len(story), 576), generator=torch.Generator().manual_seed(0))
    for i in (K - 1, K, len(story) - 1):
        arm.generate([story[: i + 1]], codes[:, :i], gens(0))
        lo = max(0, i - (K - 1))
        segments = arm._segments(story[lo: i + 1], codes[0, lo:i])
        assert torch.equal(rec.rows[-1][0], arm._render(segments, cond=True))
        assert len(rec.rows[-1][0]) + 576 <= JANUS_POSITIONS


def test_a_frame_size_without_room_for_one_earlier_frame_is_refused(tmp_path, capsys):
    model, tok = emu3_at(EMU3_POSITIONS, levels=4)
    # Emu3's own area, 720 x 720: 90 x 91 + 9 = 8,199 positions a frame; 9,216 hold one frame only
    with pytest.raises(ValueError, match=r"720x720 pixels takes 8199 positions.*no room for one earlier frame"):
        Emu3ARM(model, tok, image_size=720)
    with pytest.raises(ValueError, match=r"context_frames must be None .* in \[1, 2\]"):
        Emu3ARM(model, tok, image_size=512, context_frames=3)
    # notebook 03 and the generate command build the ARM by name: the same refusal before any story runs
    from acdc_lib.experiment.parts import build_parts

    model.save_pretrained(tmp_path / "emu3")
    tok.save_pretrained(tmp_path / "emu3")
    with pytest.raises(ValueError, match="no room for one earlier frame"):
        build_parts(arm="emu3", arm_id=str(tmp_path / "emu3"), arm_options={"image_size": 720}, dm="toy",
                    evaluator=None, ground_truth=None, memory="none")
    from acdc_lib.generate import main

    capsys.readouterr()
    assert main(["a cat sits.", "--arm", "emu3", "--arm-id", str(tmp_path / "emu3"), "--arm-option", "image_size=720",
                 "--correct", "none", "--out", str(tmp_path / "out")]) == 2
    out = capsys.readouterr().err
    assert "Loading weights" not in out  # refused from the config, before the weights load
    err = [line for line in out.splitlines() if line.strip()]
    assert len(err) == 1 and "no room for one earlier frame" in err[0]  # one line, no traceback


# --------------------------------------------------------------------------------------------
# Janus-Pro's quantizer
# --------------------------------------------------------------------------------------------
def deepseek_nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """A port of DeepSeek's VectorQuantizer.forward lookup (janus/models/vq_model.py) with l2_norm=True."""
    z = torch.einsum("b c h w -> b h w c", z).contiguous()
    z_flattened = z.view(-1, codebook.shape[1])
    z_flattened = F.normalize(z_flattened, p=2, dim=-1)
    embedding = F.normalize(codebook, p=2, dim=-1)
    d = torch.sum(z_flattened ** 2, dim=1, keepdim=True) + torch.sum(embedding ** 2, dim=1) - 2 * \
        torch.einsum("bd,dn->bn", z_flattened, torch.einsum("n d -> d n", embedding))
    return torch.argmin(d, dim=1)


def test_janus_encodes_with_deepseeks_normalised_nearest_code():
    arm = JanusARM(*tb.tiny_janus(), top_k=8)
    images = arm.decode(torch.randint(0, 32, (6, 16), generator=torch.Generator().manual_seed(0)))
    images = (images + 0.2 * torch.rand(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    vq = arm.model.model.vqmodel
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(images * 2 - 1))
        want = deepseek_nearest_codes(z, vq.quantize.embedding.weight).view(6, -1)
        library = vq.encode(images * 2 - 1).image_tokens.view(6, -1)
    assert torch.equal(arm.encode(images), want)
    assert (library != want).float().mean() > 0.2  # transformers' un-normalised lookup picks other codes


# --------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------
def test_arms_default_to_bfloat16_on_cuda_and_keep_the_vq_in_float32(tmp_path, monkeypatch):
    assert A._default_dtype(torch.device("cuda")) == torch.bfloat16
    assert A._default_dtype(torch.device("cpu")) == torch.float32
    for cls, (model, tok) in ((Emu3ARM, tb.tiny_emu3()), (JanusARM, tb.tiny_janus())):
        vq_weight = model.model.vqmodel.encoder.conv_in.weight.detach().clone()
        arm = cls(model, tok, dtype=torch.bfloat16, top_k=8)
        assert {p.dtype for n, p in arm.model.named_parameters() if ".vqmodel." not in f".{n}"} == {torch.bfloat16}
        assert {p.dtype for p in arm.model.model.vqmodel.parameters()} == {torch.float32}
        assert torch.equal(arm.model.model.vqmodel.encoder.conv_in.weight, vq_weight)  # never rounded to half
        x = arm.decode(torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0)))
        assert x.dtype == torch.float32 and arm.encode(x).shape == (2, 16)
        assert arm.generate([["a cat."]], torch.empty(1, 0, 16, dtype=torch.long), gens(0)).shape == (1, 16)
    # one option sets the ARM's dtype, beside the corrector's DTYPE (it used to raise a TypeError)
    from acdc_lib.experiment.parts import build_arm, build_parts

    folder = tb.save_tiny_janus(tmp_path / "janus")
    parts = build_parts(arm="janus", arm_id=str(folder), arm_options={"dtype": "bfloat16", "top_k": 8}, dm="toy",
                        evaluator=None, ground_truth=None, memory="none", dtype="float32")
    assert parts.arm.dtype == torch.bfloat16 and parts.names["arm_dtype"] == "bfloat16"
    assert build_arm("janus", str(folder), {"top_k": 8}, dtype="float32").dtype == torch.float32
    # the generate command: --arm-option dtype=bfloat16 beside --dtype float32
    from acdc_lib import generate as G

    built = {}
    real_build = G.build

    def spy(kind, name, **options):
        built[kind] = real_build(kind, name, **options)
        return built[kind]

    monkeypatch.setattr(G, "build", spy)
    assert G.main(["a cat sits.", "--arm", "janus", "--arm-id", str(folder), "--arm-option", "dtype=bfloat16",
                   "--arm-option", "top_k=8", "--correct", "none", "--dtype", "float32",
                   "--out", str(tmp_path / "out")]) == 0
    assert built["arm"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        JanusARM(*tb.tiny_janus(), dtype="half")


# --------------------------------------------------------------------------------------------
# Generators on the ARM's device
# --------------------------------------------------------------------------------------------
class FakeGenerator:
    """torch.Generator's constructor and manual_seed, on any device name (CPU torch has no CUDA generators)."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def manual_seed(self, seed):
        return self


class DeviceARM:
    """An ARM on a device named "cuda:3" that refuses generators elsewhere, as the real ARMs do."""

    tokens_per_frame = 4
    device = torch.device("cuda:3")

    def __init__(self):
        self.seen = []

    def generate(self, texts, prev_tokens, generators):
        self.seen += [g.device for g in generators]
        if any(g.device != self.device for g in generators):
            raise ValueError(f"generators must be on {self.device}")
        return torch.zeros(len(texts), 4, dtype=torch.long)

    def decode(self, tokens):
        return torch.zeros(tokens.shape[0], 3, 4, 4)

    def encode(self, images):
        return torch.zeros(images.shape[0], 4, dtype=torch.long)


def test_physical_and_video_experiments_make_generators_on_the_arms_device(monkeypatch):
    from acdc_lib.experiment.physical import continue_stories
    from acdc_lib.experiment.video import oracle_videos

    monkeypatch.setattr(torch, "Generator", FakeGenerator)
    arm = DeviceARM()
    out = continue_stories([["a.", "b.", "c."]] * 2, torch.zeros(2, 3, 4, 4), arm)
    assert out["frames"].shape[:2] == (2, 3)
    frames = oracle_videos(arm, ["a cat."], torch.zeros(1, 3, 4, dtype=torch.long), seeds=[0])
    assert frames.shape[:2] == (1, 3)
    assert arm.seen and set(arm.seen) == {torch.device("cuda:3")}


def test_video_rows_pass_the_arms_device_to_the_loop(monkeypatch):
    from acdc_lib.experiment import video as V

    seen = []

    def run_video(prompts, arm, corrector, *, device="cpu", **kw):
        seen.append(torch.device(device))
        raise StopIteration

    monkeypatch.setattr(V, "run_video", run_video)
    exp = V.VideoExperiment(num_frames=2, chunk_length=2, batch_size=1)
    with pytest.raises(StopIteration):
        V.generate_row("arm", ["a cat."], DeviceARM(), None, exp, indices=[0])
    assert seen == [torch.device("cuda:3")]


# --------------------------------------------------------------------------------------------
# Formats and the GPU sets' settings
# --------------------------------------------------------------------------------------------
def test_emu3_appends_baais_positive_prompt_to_every_sentence():
    model, tok = tb.tiny_emu3()
    arm = Emu3ARM(model, tok)
    assert EMU3_POSITIVE_PROMPT == " masterpiece, film grained, best quality."
    ids = arm.context_ids([["a cat.", "it runs."]], torch.zeros(1, 1, 16, dtype=torch.long))[0]

    def count(sentence):  # occurrences of the sentence's ids with the suffix in the context
        want = tok(sentence + " masterpiece, film grained, best quality.", add_special_tokens=False).input_ids
        return sum(ids[i:i + len(want)] == want for i in range(len(ids)))

    assert count("a cat.") == 1 and count("it runs.") == 1


def test_janus_closes_each_assistant_turn_with_end_of_sentence():
    model, tok = tb.tiny_janus()
    arm = JanusARM(model, tok)
    codes = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    emb = model.get_input_embeddings()

    def ids(*xs):
        return emb(torch.tensor([x for part in xs for x in part]))

    def turn(s):  # DeepSeek's SFT format of one user turn, then the assistant's opening
        return tok(f"<|User|>: {s}\n\n<|Assistant|>:", add_special_tokens=False).input_ids

    boi, eoi, eos = tok.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>", "<｜end▁of▁sentence｜>"])
    frame = model.prepare_embeddings_for_image_generation
    with torch.no_grad():
        got = arm._render(arm._segments(["a cat.", "it runs.", "it sleeps."], codes), cond=True)
        want = torch.cat([ids([tok.bos_token_id], turn("a cat."), [boi]), frame(codes[0]), ids([eoi, eos], turn("it runs."), [boi]),
                          frame(codes[1]), ids([eoi, eos], turn("it sleeps."), [boi])])
        assert torch.equal(got, want)
        # one prompt for a video: the frames are one assistant turn, with no separator between them
        video = arm._render(arm._segments(["a cat."], codes), cond=True)
        want = torch.cat([ids([tok.bos_token_id], turn("a cat."), [boi]), frame(codes[0]), ids([eoi, boi]),
                          frame(codes[1]), ids([eoi, boi])])
        assert torch.equal(video, want)


def _arm_entries():
    for path in sorted((REPO_ROOT / "papermill_runs").glob("gpu-*.yaml")):
        for entry in yaml.safe_load(path.read_text())["notebooks"]:
            params = entry.get("parameters") or {}
            if params.get("ARM") in ("emu3", "janus"):
                yield path, entry["notebook"], params


def test_gpu_sets_run_the_arms_as_their_authors_do():
    entries = list(_arm_entries())
    assert {(p.name, Path(nb).stem[:2]) for p, nb, _ in entries} >= {
        ("gpu-emu3-sd15.yaml", "03"), ("gpu-emu3-sd15.yaml", "05"), ("gpu-janus-sd15.yaml", "03")}
    for path, nb, params in entries:
        opts = params.get("ARM_OPTIONS") or {}
        assert opts.get("dtype") == "bfloat16", (path.name, nb)
        assert "context_frames" in opts, (path.name, nb)
        if params["ARM"] == "emu3":
            assert opts.get("image_size") == 512 and opts["context_frames"] == 2, (path.name, nb)
            assert opts.get("guidance_scale", 3.0) == 3.0 and opts.get("top_k", 2048) == 2048, (path.name, nb)
            assert "first_frame_top_k" not in opts and "first_frame_guidance_scale" not in opts, (path.name, nb)
    # the options build the ARMs at the real models' positions and frame sizes, with the window they ask for
    models = {"emu3": lambda: emu3_at(EMU3_POSITIONS, levels=4),
              "janus": lambda: janus_at(JANUS_POSITIONS, side=384, patch=16, levels=5)}
    for path, nb, params in entries:
        opts = {k: v for k, v in params["ARM_OPTIONS"].items() if k != "dtype"}
        arm = (Emu3ARM if params["ARM"] == "emu3" else JanusARM)(*models[params["ARM"]](), **opts)
        assert arm.context_frames == opts["context_frames"] >= 2, (path.name, nb)
    # every ARM setting carries its source in the comment above it
    for path in sorted((REPO_ROOT / "papermill_runs").glob("gpu-*.yaml")):
        lines = path.read_text().splitlines()
        for k, line in enumerate(lines):
            if line.strip().startswith("ARM_OPTIONS"):
                comment = " ".join(x for x in lines[max(0, k - 6):k] if x.strip().startswith("#"))
                assert re.search(r"(BAAI|DeepSeek|as in notebook 03)", comment), (path.name, k)


# --------------------------------------------------------------------------------------------
# Equivalence with the reference loops
# --------------------------------------------------------------------------------------------
class ForcePath(LogitsProcessor):
    """Record the scores `generate` has made (after CFG and the prefix constraint), then force `path`."""

    def __init__(self, path: list[int], start: int):
        self.path, self.start, self.scores = path, start, []

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.start
        self.scores.append(scores.detach().clone())
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.path[k]] = 0.0
        return forced


def baai_prefix_fn(arm: Emu3ARM, prompt_len: int):
    """BAAI's prefix_allowed_tokens_fn for the new frame: visual tokens, and end-of-line closing each row.

    Their function counts from the first <|image token|> of the input; with frames in context that is an
    earlier frame's, so here the offset counts from the end of the prompt (whose last token is the new
    frame's <|image token|>), which is the same count for a prompt without frames.
    """
    w = arm.grid[1]
    visual = arm._visual_ids.tolist()

    def fn(batch_id, input_ids):
        offset = input_ids.shape[0] - prompt_len + 1
        return [arm._eol] if offset % (w + 1) == 0 else visual

    return fn


def _emu3_hf(arm: Emu3ARM, cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float, **kw):
    h, w = arm.grid
    extra = {} if uncond is None else dict(negative_prompt_ids=uncond[None],
                                           negative_prompt_attention_mask=torch.ones_like(uncond)[None])
    return arm.model.generate(input_ids=cond[None], attention_mask=torch.ones_like(cond)[None],
                              max_new_tokens=h * (w + 1) - 1, do_sample=False, guidance_scale=guidance,
                              prefix_allowed_tokens_fn=baai_prefix_fn(arm, len(cond)), pad_token_id=arm._pad,
                              eos_token_id=None, **extra, **kw)


def _visual_codes(arm: Emu3ARM, ids: torch.Tensor) -> torch.Tensor:
    ids = ids[ids != arm._eol]
    return (ids[:, None] == arm._visual_ids[None]).long().argmax(-1)


def _record_log_probs(arm, monkeypatch):
    """Wrap arm._pick to record, per step, each row's log-probability of the code it drew."""
    steps = []
    pick = arm._pick

    def recording(logits, guidance, top_k, generators):
        codes = pick(logits, guidance, top_k, generators)
        lp = arm._scores(logits, guidance, top_k, len(generators)).log_softmax(-1)
        steps.append(lp.gather(1, codes[:, None])[:, 0])
        return codes

    monkeypatch.setattr(arm, "_pick", recording)
    return steps


@pytest.fixture(scope="module")
def emu3():
    return tb.tiny_emu3()


def test_emu3_greedy_first_frame_equals_generate_with_baais_processor_and_negative_prompt(emu3):
    model, tok = emu3
    arm = Emu3ARM(model, tok, top_k=1, guidance_scale=3.0)  # top-k 1: the most likely code, whatever the draw
    story = ["a cat sits on a hill."]
    ours = arm.generate([story], torch.empty(1, 0, 16, dtype=torch.long), gens(0))[0]
    seg = arm._segments(story, torch.empty(0, 16, dtype=torch.long))
    cond, uncond = arm._render(seg, cond=True), arm._render(seg, cond=False)
    out = _emu3_hf(arm, cond, uncond, 3.0)
    assert torch.equal(_visual_codes(arm, out[0, len(cond):]), ours)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_emu3_log_probs_along_a_sampled_path_equal_generates(emu3, monkeypatch, guidance):
    model, tok = emu3
    # a short negative prompt: the unconditional rows are shorter than the conditional ones, so left-padded
    arm = Emu3ARM(model, tok, top_k=None, guidance_scale=guidance, negative_prompt="blurry.")
    stories = [["a cat sits.", "the cat runs on the long road.", "it sleeps."], ["a dog.", "it jumps.", "rain."]]
    prev = torch.randint(0, 32, (2, 2, 16), generator=torch.Generator().manual_seed(3))  # two frames in context
    steps = _record_log_probs(arm, monkeypatch)
    codes = arm.generate(stories, prev, gens(5, 6))
    ours = torch.stack(steps, 1)                                                # (2, 16)
    h, w = arm.grid
    for b, story in enumerate(stories):
        seg = arm._segments(story, prev[b])
        cond, uncond = arm._render(seg, cond=True), arm._render(seg, cond=False)
        if b == 0:
            assert len(uncond) < len(cond)  # the unconditional row was left-padded in our batch
        ids = arm._visual_ids[codes[b]].view(h, w)
        path = torch.cat([ids, torch.full((h, 1), arm._eol)], 1).flatten().tolist()
        force = ForcePath(path, len(cond))
        out = _emu3_hf(arm, cond, uncond if guidance != 1 else None, guidance,
                       logits_processor=LogitsProcessorList([force]))
        assert torch.equal(_visual_codes(arm, out[0, len(cond):]), codes[b])
        visual_steps = [k for k in range(len(force.scores)) if (k + 1) % (w + 1) != 0]
        theirs = torch.stack([force.scores[k][0, arm._visual_ids].log_softmax(-1)[codes[b, j]]
                              for j, k in enumerate(visual_steps)])
        torch.testing.assert_close(ours[b], theirs, atol=1e-5, rtol=0)


def deepseek_log_probs(model, prompt_ids: list[int], pad_id: int, codes: torch.Tensor, cfg_weight: float,
                       temperature: float = 1.0) -> torch.Tensor:
    """A port of DeepSeek's generate() (generation_inference.py), following the path `codes` instead of
    drawing: rows interleaved (even conditional, odd with every token but the first and last blanked to pad),
    gen_head on the last hidden state, logit_uncond + cfg_weight * (logit_cond - logit_uncond), softmax."""
    tokens = torch.tensor([prompt_ids, prompt_ids])
    tokens[1, 1:-1] = pad_id
    inputs_embeds = model.get_input_embeddings()(tokens)
    out, past = [], None
    for i in range(len(codes)):
        outputs = model.model.language_model(inputs_embeds=inputs_embeds, use_cache=True, past_key_values=past)
        past = outputs.past_key_values
        logits = model.model.generation_head(outputs.last_hidden_state[:, -1, :])
        logit_cond, logit_uncond = logits[0::2, :], logits[1::2, :]
        logits = logit_uncond + cfg_weight * (logit_cond - logit_uncond)
        out.append(torch.log_softmax(logits / temperature, dim=-1)[0, codes[i]])
        next_token = torch.stack([codes[i], codes[i]])
        inputs_embeds = model.prepare_embeddings_for_image_generation(next_token[:, None])
    return torch.stack(out)


@pytest.fixture(scope="module")
def janus():
    return tb.tiny_janus()


def _janus_prompt(arm: JanusARM, tok, sentence: str) -> list[int]:
    # DeepSeek: sft_format + image_start_tag, tokenizer.encode adds <bos>
    return [tok.bos_token_id] + tok(arm.prompt_template.format(sentence), add_special_tokens=False).input_ids \
        + [arm._boi]


def test_janus_log_probs_along_a_sampled_path_equal_deepseeks_loop(janus, monkeypatch):
    model, tok = janus
    arm = JanusARM(model, tok)  # Janus-Pro's published settings: CFG 5, temperature 1, no top-k
    prompts = ["a cat sits on a hill.", "a dog."]  # different lengths: the second story's rows are left-padded
    steps = _record_log_probs(arm, monkeypatch)
    with torch.no_grad():
        codes = arm.generate([[p] for p in prompts], torch.empty(2, 0, 16, dtype=torch.long), gens(1, 2))
        ours = torch.stack(steps, 1)                                            # (2, 16)
        for b, p in enumerate(prompts):
            theirs = deepseek_log_probs(model, _janus_prompt(arm, tok, p), arm._pad, codes[b], 5.0)
            torch.testing.assert_close(ours[b], theirs, atol=1e-5, rtol=0)


def test_janus_greedy_tokens_equal_generate_image_mode(janus):
    model, tok = janus
    # transformers' image mode fails at guidance_scale 1 (no unconditional rows to split), so compare with CFG
    arm = JanusARM(model, tok, top_k=1, guidance_scale=5.0)
    prompt = "a cat sits on a hill."
    ours = arm.generate([[prompt]], torch.empty(1, 0, 16, dtype=torch.long), gens(0))[0]
    from transformers import GenerationConfig

    ids = torch.tensor([_janus_prompt(arm, tok, prompt)])
    config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=arm._pad, do_sample=False,
                              guidance_scale=5.0, generation_kwargs={"boi_token_id": arm._boi},
                              max_new_tokens=16)
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                            generation_config=config)
    assert torch.equal(theirs[0].long(), ours)


def test_every_set_runs_every_notebook():
    # a notebook a set cannot run with its models runs on the toy world's, with the reason beside it
    notebooks = {p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for path in sorted((REPO_ROOT / "papermill_runs").glob("*.yaml")):
        named = {Path(e["notebook"]).name for e in yaml.safe_load(path.read_text())["notebooks"]}
        assert named == notebooks, (path.name, sorted(notebooks - named))
