"""StoryGPT-V in the toy world on tiny random models: the fused embedding, L_reg, the [IMG] path from the LM to
the Char-LDM, input checks, per-story generators, and a few training steps of both stages."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acdc_lib.toyworld import models as M
from acdc_lib.toyworld import storygpt as S
from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.text import build_tokenizer
from acdc_lib.toyworld.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def tiny_dm(tok):
    from diffusers import DDIMScheduler

    from acdc_lib.sdedit import UNetCorrector

    torch.manual_seed(0)
    vq = M.build_vq(codebook_size=32, channels=(16, 16, 16), embed_dim=4).eval()
    unet, te, sched = M.build_dm(len(tok), latent_channels=4, channels=(16, 32), text_hidden=32, text_layers=1)
    return UNetCorrector(unet, te, tok, DDIMScheduler.from_config(sched.config, steps_offset=1), vq)


@pytest.fixture(scope="module")
def char_ldm(tok):
    torch.manual_seed(0)
    model = S.CharLDM.from_dm(tiny_dm(tok), feature_dim=16, hidden=32)
    with torch.no_grad():  # a fusion that is not the identity (a trained one; zero-initialised it is)
        torch.nn.init.normal_(model.fusion.mlp[-1].weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def stories():
    return generate_stories(4, seed=11, n_sentences=3)


def tiny_lm(char_ldm, tok, frame_tokens=S.FRAME_TOKENS, target="fused"):
    torch.manual_seed(0)
    cfg = S.AlignedLMConfig(n_text=len(tok), cond_len=tok.model_max_length,
                            cond_dim=int(char_ldm.unet.config.cross_attention_dim), frame_dim=4 * 8 * 8,
                            frame_tokens=frame_tokens, target=target, hidden=32, layers=1, heads=2, mapper_layers=1,
                            max_frames=8)
    return S.AlignedLM(cfg).eval()


def _frames(stories):
    return S.story_frames(stories, [(s, f) for s in range(len(stories)) for f in range(len(stories[s].states))])


# ---- stage 1: the fused embedding and L_reg ----------------------------------------------
def test_fused_embedding_changes_only_the_name_token_and_follows_the_reference(char_ldm, tok, stories):
    fr = _frames(stories[:2])
    caps, names, refs = fr["captions"][:3], fr["names"][:3], fr["references"][:3]
    text = char_ldm.text_embeddings(caps)
    with torch.no_grad():
        fused = char_ldm.fused_embeddings(caps, names, refs)
    assert fused.shape == text.shape == (3, tok.model_max_length, 32)
    where = S.name_token_mask(tok, caps, names)
    assert where.sum(1).tolist() == [1, 1, 1]  # "Toby the pig sits ...": the name once
    changed = (fused - text).abs().amax(-1) > 1e-6  # (B, T)
    assert torch.equal(changed, where)
    assert torch.equal(refs[0], refs[2])  # one story: one reference, its first frame's character
    with torch.no_grad():  # another story's character as the reference changes the name token
        other = char_ldm.fused_embeddings(caps, names, fr["references"][3:6])
    assert not torch.allclose(other[0][where[0]], fused[0][where[0]])
    fresh = S.FusionMLP(text_dim=32, feature_dim=16)  # zero-initialised: the fine-tune starts at the DM
    assert torch.equal(fresh(text[where], torch.randn(3, 16)), text[where])


def test_reference_crops_centre_the_character_on_grey():
    img = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., 2:6, 20:24] = True  # centroid (3.5, 21.5) -> (15.5, 15.5) after a shift of (12, -6)
    out = S.reference_crops(img, mask)
    assert torch.equal(out[0, :, 14:18, 14:18], img[0, :, 2:6, 20:24])
    assert int((out[0] == 0.5).all(0).sum()) == 32 * 32 - 16


def test_l_reg_is_zero_on_the_mask_one_when_spread_and_two_outside():
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1.0  # the 2x2 centre of a 4x4 latent grid, exactly
    m = torch.nn.functional.adaptive_avg_pool2d(masks, (4, 4)).flatten()  # (16,) in {0, 1}
    tokens = torch.tensor([[False, True, False]])

    def attn(k_map):  # token 1 gets k_map, tokens 0 and 2 share the rest of each pixel's attention
        a = torch.stack([(1 - k_map) / 2, k_map, (1 - k_map) / 2], dim=-1)
        return a[None]  # (1, 16, 3)

    loss = lambda k_map: float(S.attention_mask_loss(attn(k_map), tokens, masks)[0])  # noqa: E731
    assert loss(m) == pytest.approx(0.0, abs=1e-7)  # on the character only
    assert loss(torch.full((16,), 0.3)) == pytest.approx(1.0, abs=1e-7)  # spread evenly
    assert loss(1 - m) == pytest.approx(2.0, abs=1e-7)  # wholly outside
    half = torch.where(m > 0, 0.5, 0.25)  # A+ = 0.5, A- = 0.25 -> 1 + 0.25 - 0.5
    assert loss(half) == pytest.approx(0.75, abs=1e-7)
    with pytest.raises(ValueError, match="character pixels"):
        S.attention_mask_loss(attn(m), tokens, torch.zeros(1, 1, 32, 32))


def test_the_attention_processor_stores_probabilities_and_changes_nothing(char_ldm):
    unet = char_ldm.unet
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    emb = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=emb).sample
        with S.capture_cross_attention(unet) as store:
            seen = unet(z, t, encoder_hidden_states=emb).sample
    assert torch.allclose(seen, plain, atol=1e-5)
    assert sorted(store) == sorted(S.cross_attention_layers(unet)) and len(store) == 4
    grids = sorted(p.shape[2] for p in store.values())
    assert grids == [16, 64, 64, 64]  # the 4x4 middle block; 8x8: one down, two up (layers_per_block + 1)
    for p in store.values():
        assert p.shape[0] == 2 and p.shape[-1] == 32
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}
    with pytest.raises(ValueError, match="unknown attention layers"):
        with S.capture_cross_attention(unet, ["nope"]):
            pass


# ---- stage 2: the [IMG] path ---------------------------------------------------------------
def test_img_outputs_reach_the_char_ldm_and_the_alignment_loss_trains_the_lm(char_ldm, tok, stories):
    lm = tiny_lm(char_ldm, tok)
    ids, feats = S.story_tensors(lm, tok, char_ldm.vq, stories[:2])  # (2, 3, 32), (2, 3, 256)
    cond, _ = lm(ids, feats)
    assert cond.shape == (2, 3, tok.model_max_length, 32)
    z, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300])
    with torch.no_grad():
        eps = char_ldm.unet(z, t, encoder_hidden_states=cond[:1, 1]).sample
        lm.mapper.out.bias.add_(0.5)  # a change of the mapper's output ...
        eps2 = char_ldm.unet(z, t, encoder_hidden_states=lm(ids, feats)[0][:1, 1]).sample
        lm.mapper.out.bias.sub_(0.5)
    assert (eps2 - eps).abs().max() > 1e-3  # ... changes the UNet's noise prediction
    # Frame i's output reads frames < i only: changing frame 2 moves frame 3's output, not frames 1 and 2.
    with torch.no_grad():
        moved = lm(ids, feats + torch.eye(3)[1].view(1, 3, 1) * 3.0)[0]
    assert torch.allclose(moved[:, :2], cond[:, :2].detach(), atol=1e-5)
    assert (moved[:, 2] - cond[:, 2]).abs().max() > 1e-4
    targets = S.alignment_targets(char_ldm, stories[:2])
    lm.zero_grad()
    torch.nn.functional.mse_loss(lm(ids, feats)[0], targets).backward()
    for name, p in (("W_v2t", lm.v2t.weight), ("[IMG] embeddings", lm.lm.get_input_embeddings().weight),
                    ("LM layer", lm.lm.model.layers[0].self_attn.q_proj.weight)):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert float(lm.lm.get_input_embeddings().weight.grad[lm.img_ids].abs().sum()) > 0


def test_caption_only_lm_reads_no_frames(char_ldm, tok, stories):
    lm = tiny_lm(char_ldm, tok, frame_tokens=0)
    assert not lm.config.interleaved and lm.config.segment == lm.config.text_len + 8
    ids, _ = S.story_tensors(lm, tok, char_ldm.vq, stories[:1])
    assert lm(ids, None)[0].shape == (1, 3, tok.model_max_length, 32)
    with pytest.raises(ValueError, match="frame_features of shape"):
        tiny_lm(char_ldm, tok)(ids, None)


# ---- input checks --------------------------------------------------------------------------
def test_bad_reference_images_and_empty_stories_are_refused(char_ldm, tok, stories):
    caps, names = ["Toby the pig sits in the snowy field during the day."], ["Toby"]
    with pytest.raises(ValueError, match=r"reference images must have shape \(B, 3, 32, 32\).*\(1, 3, 16, 16\)"):
        char_ldm.fused_embeddings(caps, names, torch.rand(1, 3, 16, 16))
    nan = torch.rand(1, 3, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="reference images.*NaN"):
        char_ldm.fused_embeddings(caps, names, nan)
    with pytest.raises(ValueError, match="'Luna'"):
        char_ldm.fused_embeddings(caps, ["Luna"], torch.rand(1, 3, 32, 32))
    gen = S.StoryGPTVGenerator(char_ldm, tiny_lm(char_ldm, tok), num_inference_steps=2)
    empty = type(stories[0])(story_id="empty", sentences=[])
    with pytest.raises(ValueError, match="story 'empty' has no sentences"):
        gen.generate([stories[0], empty], [torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="no stories"):
        gen.generate([], [])
    with pytest.raises(ValueError, match="first_frames must have shape"):
        gen.generate(stories[:1], [torch.Generator()], first_frames=torch.rand(1, 3, 8, 8))


# ---- the generator -------------------------------------------------------------------------
def test_per_story_generators_make_frames_independent_of_the_batch(char_ldm, tok, stories):
    gen = S.StoryGPTVGenerator(char_ldm, tiny_lm(char_ldm, tok), num_inference_steps=2)
    short = type(stories[0])(story_id="short", sentences=stories[2].sentences[:2])
    batch = gen.generate([stories[0], short, stories[1]], [torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    assert [tuple(f.shape) for f in batch] == [(3, 3, 32, 32), (2, 3, 32, 32), (3, 3, 32, 32)]
    alone = gen.generate([stories[1]], [torch.Generator().manual_seed(9)])[0]
    assert torch.allclose(alone, batch[2], atol=1e-5)
    other_seed = gen.generate([stories[1]], [torch.Generator().manual_seed(10)])[0]
    assert (other_seed - batch[2]).abs().max() > 1e-3
    given = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cont = gen.generate([stories[1]], [torch.Generator().manual_seed(9)], first_frames=given)[0]
    assert torch.equal(cont[0], given[0]) and (cont[1:] - alone[1:]).abs().max() > 1e-4  # frame 1 is read


def test_a_fresh_char_ldm_samples_as_the_dm_it_starts_from(tok, stories):
    """Zero-initialised fusion: fused == text embedding, and `sample` is the DM's own text-to-image path."""
    dm = tiny_dm(tok)
    torch.manual_seed(1)
    ldm = S.CharLDM.from_dm(dm, feature_dim=16, hidden=32).eval()
    fr = _frames(stories[:1])
    caps = fr["captions"][:2]
    with torch.no_grad():
        fused = ldm.fused_embeddings(caps, fr["names"][:2], fr["references"][:2])
    assert torch.equal(fused, ldm.text_embeddings(caps))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    ours = ldm.sample(fused, gens(), guidance_scale=3.0, num_inference_steps=3)
    theirs = dm.generate(caps, guidance_scale=3.0, num_inference_steps=3, generators=gens())
    assert ours.shape == (2, 3, 32, 32) and torch.allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match=r"cond must be \(B, 32, 32\)"):
        ldm.sample(fused[:, :8], gens())


def test_the_shipped_dm_becomes_a_char_ldm(stories):
    """The shipped toy DM (64-wide text, 4 cross-attention layers) takes the fused embedding and L_reg."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    ldm = S.CharLDM.from_dm(M.load_dm())
    batch = _frames(stories[:1])
    loss, mse, reg = S.char_ldm_step_loss(ldm, batch, ["fused", "text", "uncond"],
                                          DDPMScheduler.from_config(ldm.dm.scheduler.config),
                                          torch.Generator().manual_seed(0), reg_weight=1.0)
    assert 0.0 < float(mse) < 1.0 and 0.5 < float(reg) < 1.5  # a trained DM; L_reg near 1 before guidance
    assert loss.item() == pytest.approx(mse.item() + reg.item(), rel=1e-5)
    loss.backward()
    assert float(ldm.fusion.mlp[-1].weight.grad.abs().sum()) > 0  # the fused rows train the fusion MLP


# ---- training ------------------------------------------------------------------------------
def _falls(losses, k=5):
    return float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


def test_char_ldm_and_aligned_lm_training_reduce_their_losses(tok, tmp_path):
    stories = generate_stories(6, seed=5, n_sentences=3)
    cfg = TrainConfig(steps=25, batch_size=8, lr=3e-3, seed=0, warmup=3,
                      extra={"p_text": 0.1, "p_uncond": 0.1, "reg_weight": 1.0, "feature_dim": 16})
    ldm, curves = S.train_char_ldm(stories, tiny_dm(tok), cfg, verbose=False, out=tmp_path, name="char_ldm")
    assert _falls(curves["loss"]) and _falls(curves["mse"])
    assert all(0.0 < r < 2.0 for r in curves["reg"])
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["char_ldm"]["config"]["extra"]["reg_weight"] == 1.0
    loaded = S.CharLDM.from_pretrained(tmp_path / "char_ldm")
    from acdc_lib.sdedit import UNetCorrector

    plain = UNetCorrector.from_pretrained(tmp_path / "char_ldm")  # its folder is also a plain text-to-image DM
    assert torch.equal(plain.unet.conv_in.weight, ldm.unet.conv_in.weight)
    fr = _frames(stories[:1])
    with torch.no_grad():
        a = ldm.fused_embeddings(fr["captions"], fr["names"], fr["references"])
        b = loaded.fused_embeddings(fr["captions"], fr["names"], fr["references"])
    assert torch.allclose(a, b, atol=1e-6)
    noreg = TrainConfig(**{**cfg.__dict__, "steps": 2, "extra": {**cfg.extra, "reg_weight": 0.0}})
    assert S.train_char_ldm(stories, tiny_dm(tok), noreg, verbose=False)[1]["reg"] == [0.0, 0.0]

    lm_cfg = TrainConfig(steps=25, batch_size=4, lr=3e-3, seed=0, warmup=3,
                         extra={"hidden": 32, "layers": 1, "max_frames": 4})
    lm, lm_curves = S.train_aligned_lm(stories, ldm, lm_cfg, verbose=False, out=tmp_path, name="aligned_lm")
    assert _falls(lm_curves["align"]) and _falls(lm_curves["lm"])
    gen = S.StoryGPTVGenerator.from_pretrained(tmp_path, "storygpt_v", num_inference_steps=2)
    frames = gen.generate(stories[:1], [torch.Generator().manual_seed(0)])[0]
    assert frames.shape == (3, 3, 32, 32) and bool(torch.isfinite(frames).all())
    with pytest.raises(FileNotFoundError, match="aligned_lm_text"):
        S.StoryGPTVGenerator.from_pretrained(tmp_path, "text_embedding")
    with pytest.raises(ValueError, match="allowed"):
        S.StoryGPTVGenerator.from_pretrained(tmp_path, "nope")


def test_char_ldm_saved_over_its_dm_stores_only_what_training_changed_and_checks_the_dm(tok, tmp_path):
    from acdc_lib.correctors.loading import ModelNotAvailableError
    from acdc_lib.sdedit import UNetCorrector

    stories = generate_stories(2, seed=5, n_sentences=3)
    dm = tiny_dm(tok)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        getattr(dm, part).save_pretrained(tmp_path / "dm" / part)
    dm.vae.save_pretrained(tmp_path / "dm" / "vae")
    model = S.CharLDM.from_dm(UNetCorrector.from_pretrained(tmp_path / "dm"), feature_dim=16, hidden=32).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.fusion.mlp[-1].weight, std=0.5)
        model.unet.conv_in.weight.add_(0.25)  # trained: its UNet is no longer the DM's
    model.save_pretrained(tmp_path / "ckpt" / "char_ldm", base_dm=tmp_path / "dm")
    saved = {p.name for p in (tmp_path / "ckpt" / "char_ldm").iterdir()}
    assert saved == {"unet", "character_encoder", "fusion", S.BASE_DM_FILE}
    loaded = S.CharLDM.from_pretrained(tmp_path / "ckpt" / "char_ldm")
    assert torch.equal(loaded.unet.conv_in.weight, model.unet.conv_in.weight)
    assert not torch.equal(loaded.unet.conv_in.weight, dm.unet.conv_in.weight)
    fr = _frames(stories[:1])
    with torch.no_grad():
        a = model.fused_embeddings(fr["captions"], fr["names"], fr["references"])
        b = loaded.fused_embeddings(fr["captions"], fr["names"], fr["references"])
    assert torch.allclose(a, b, atol=1e-6)

    other = tiny_dm(tok)  # another DM (another VQ): refused as the base, both when saving and when loading
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.1)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        getattr(other, part).save_pretrained(tmp_path / "other" / part)
    other.vae.save_pretrained(tmp_path / "other" / "vae")
    with pytest.raises(ValueError, match="another text encoder or VQ"):
        model.save_pretrained(tmp_path / "bad", base_dm=tmp_path / "other")
    with pytest.raises(ValueError, match="is not a saved DM"):
        model.save_pretrained(tmp_path / "bad", base_dm=tmp_path / "nowhere")
    import shutil

    shutil.rmtree(tmp_path / "dm" / "vae")
    shutil.copytree(tmp_path / "other" / "vae", tmp_path / "dm" / "vae")  # the DM retrained since
    with pytest.raises(ModelNotAvailableError, match="not the one the Char-LDM"):
        S.CharLDM.from_pretrained(tmp_path / "ckpt" / "char_ldm")
    shutil.move(tmp_path / "dm", tmp_path / "moved")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        S.CharLDM.from_pretrained(tmp_path / "ckpt" / "char_ldm")
