"""Story metrics (acdc_lib.metrics) on tiny random models and hand-made inputs with known answers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from acdc_lib import metrics as M
from tiny_diffusers import tiny_clip_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_clip():
    """A random 1-layer transformers 5 CLIPModel over 8x8 images and the tiny character tokenizer."""
    tok = tiny_tokenizer()
    clip = tiny_clip_model(image_size=8, patch_size=4)
    return clip, tok


def clip_embedder(clip):
    def embed(x):
        out = clip.get_image_features(pixel_values=(x - 0.5) / 0.5)
        return out.pooler_output if hasattr(out, "pooler_output") else out
    return embed


# --------------------------------------------------------------------------------------------
# Frame consistency
# --------------------------------------------------------------------------------------------
def test_identical_frames_give_consistency_one(tiny_clip):
    torch.manual_seed(0)
    frame = torch.rand(3, 1, 3, 8, 8)
    frames = frame.expand(3, 6, 3, 8, 8).contiguous()                            # each story repeats one frame
    cons = M.frame_consistency(M.embed_frames(frames, clip_embedder(tiny_clip[0]), batch_size=4))
    assert cons.per_story.shape == (3,) and cons.per_pair.shape == (3, 5)
    assert torch.allclose(cons.per_story, torch.ones(3, dtype=torch.float64), atol=1e-6)
    other = M.frame_consistency(M.embed_frames(torch.rand(3, 6, 3, 8, 8), clip_embedder(tiny_clip[0])))
    assert (other.per_story < 1 - 1e-4).all()


def test_consistency_is_the_mean_over_consecutive_pairs():
    e = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])                     # cos: 0, then 1/sqrt(2)
    cons = M.frame_consistency(e)
    assert torch.allclose(cons.per_pair, torch.tensor([[0.0, 1 / math.sqrt(2)]], dtype=torch.float64))
    assert cons.per_story.item() == pytest.approx(0.5 / math.sqrt(2))


def test_consistency_and_embedding_refuse_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        M.frame_consistency(torch.rand(2, 1, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        M.frame_consistency(torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"\(S, N, C, H, W\)"):
        M.embed_frames(torch.rand(6, 3, 8, 8), lambda x: x.flatten(1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.embed_frames(torch.rand(1, 2, 3, 8, 8) + 1, lambda x: x.flatten(1))
    with pytest.raises(ValueError, match="image_embedder returned"):
        M.embed_frames(torch.rand(1, 2, 3, 8, 8), lambda x: x)


# --------------------------------------------------------------------------------------------
# CLIPScore through torchmetrics with a transformers 5 CLIPModel
# --------------------------------------------------------------------------------------------
def test_clipscore_works_with_transformers5_and_matches_the_definition(tiny_clip):
    clip, tok = tiny_clip
    fn = M.clipscore_from_clip_model(clip, tok, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 3, 8, 8)                                           # already at the model's size
    texts = [["a fox sits.", "she runs.", "a moon"], ["a cat", "the cat jumps", "night"]]
    got = M.clip_score(frames, texts, fn)
    assert got.shape == (2,)
    with torch.no_grad():                                                         # CLIPScore by hand
        for s in range(2):
            img = F.normalize(clip.get_image_features(pixel_values=(frames[s] - 0.5) / 0.5).pooler_output, dim=-1)
            ids = tok(texts[s], padding=True, return_tensors="pt")
            txt = F.normalize(clip.get_text_features(input_ids=ids.input_ids,
                                                     attention_mask=ids.attention_mask).pooler_output, dim=-1)
            want = max(100 * (img * txt).sum(-1).mean().item(), 0.0)
            assert got[s].item() == pytest.approx(want, abs=1e-4)
    # A larger input is resized to the vision tower's 8x8 first, not refused.
    assert M.clip_score(F.interpolate(frames[0], size=16).unsqueeze(0), texts[:1], fn).shape == (1,)


def test_clipscore_refuses_mismatched_texts(tiny_clip):
    fn = M.clipscore_from_clip_model(*tiny_clip)
    with pytest.raises(ValueError, match="3 strings"):
        M.clip_score(torch.rand(1, 3, 3, 8, 8), [["only", "two"]], fn)


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------
def test_fid_of_a_set_against_itself_is_near_zero_and_grows_with_a_shift():
    torch.manual_seed(0)
    module = M.FeatureModule(lambda x: x.flatten(1)[:, :6], 6)
    real = torch.rand(60, 3, 2, 2)
    assert abs(M.fid(real, real, module, batch_size=16)) < 1e-6
    shifted = (real + 0.3).clamp(0, 1)
    assert M.fid(real, shifted, module) > 0.1
    # The bootstrap path (precomputed features, identity module) gives the same point value.
    feats = lambda x: x.flatten(1)[:, :6].reshape(10, 6, 6)
    ci = M.fid_with_ci(feats(real), feats(shifted), n_resamples=50, seed=0)
    assert ci.value == pytest.approx(M.fid(real, shifted, module), rel=1e-6)
    assert 0 < ci.low <= ci.high


def test_fid_refuses_bad_inputs():
    with pytest.raises(ValueError, match="M >= 2"):
        M.fid(torch.rand(1, 3, 2, 2), torch.rand(4, 3, 2, 2), M.FeatureModule(lambda x: x.flatten(1), 12))
    with pytest.raises(ValueError, match="num_features"):
        M.fid(torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2), torch.nn.Flatten())
    with pytest.raises(ValueError, match=r"\(S, N, F\)"):
        M.fid_with_ci(torch.rand(3, 4, 2), torch.rand(3, 5, 2))


# --------------------------------------------------------------------------------------------
# Attribute accuracy / F1 and physical validity
# --------------------------------------------------------------------------------------------
def test_one_misclassification_changes_accuracy_and_f1_by_the_expected_amount():
    target = torch.tensor([[0, 0, 1, 1, 2], [2, 0, 1, 2, 1]])                     # 10 frames, 3 classes
    perfect = M.attribute_scores(target.clone(), target, 3)
    assert perfect.accuracy == 1.0 and perfect.f1 == pytest.approx(1.0)
    pred = target.clone()
    pred[0, 0] = 1                                                                # one 0 read as a 1
    sc = M.attribute_scores(pred, target, 3)
    assert sc.accuracy == pytest.approx(0.9)
    assert sc.per_story.tolist() == pytest.approx([0.8, 1.0])
    assert sc.correct.sum().item() == 9 and not sc.correct[0, 0]
    # class 0: tp 2, fn 1 -> F1 4/5; class 1: tp 4, fp 1 -> 8/9; class 2 untouched -> 1.
    assert sc.f1 == pytest.approx((4 / 5 + 8 / 9 + 1) / 3)


def test_attribute_scores_refuse_bad_input():
    t = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        M.attribute_scores(torch.zeros(2, 4, dtype=torch.long), t, 2)
    with pytest.raises(ValueError, match="outside"):
        M.attribute_scores(torch.full((2, 3), 5), t, 2)
    with pytest.raises(ValueError, match="integer tensor"):
        M.attribute_scores(torch.zeros(2, 3), t, 2)


def test_physical_validity_counts_only_normal_frames():
    from acdc_lib.toyworld import validity as V

    normal = {"n_suns": torch.tensor([[1, 0, 1, 1]]), "n_moons": torch.tensor([[0, 1, 1, 0]]),
              "n_ears": torch.tensor([[2, 2, 2, 3]]), "n_tails": torch.tensor([[1, 1, 1, 1]])}
    # day, night, sun AND moon (invalid), three ears (invalid)
    assert V.physically_valid(normal).tolist() == [[True, True, False, False]]
    assert V.physical_validity_rate(normal).tolist() == [0.5]
    with pytest.raises(ValueError, match="missing"):
        V.physically_valid({"n_suns": normal["n_suns"]})


# --------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_the_mean_shrinks_with_more_stories_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 500)
    a = M.bootstrap_ci(small, n_resamples=500, seed=0)
    b = M.bootstrap_ci(large, n_resamples=500, seed=0)
    assert a.value == pytest.approx(small.mean()) and a.low < a.value < a.high
    assert b.low < b.value < b.high
    assert (b.high - b.low) < 0.5 * (a.high - a.low)                              # ~ 1/sqrt(S): 0.2x expected
    assert M.bootstrap_ci(small, n_resamples=500, seed=0) == a
    assert M.bootstrap_ci(small, n_resamples=500, seed=1) != a
    assert M.bootstrap_ci(np.ones(7)) == M.Interval(1.0, 1.0, 1.0)


def test_set_statistic_ci_resamples_stories():
    values = np.arange(10.0)
    ci = M.set_statistic_ci(10, lambda idx: float(values[idx].max()), n_resamples=200, seed=0)
    assert ci.value == 9.0 and ci.high == 9.0 and ci.low < 9.0                    # max is often lost in resamples


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        M.bootstrap_ci(np.ones((3, 2)))
    with pytest.raises(ValueError, match=">= 2"):
        M.bootstrap_ci([1.0])
    with pytest.raises(ValueError, match="confidence"):
        M.bootstrap_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="n_stories"):
        M.set_statistic_ci(1, lambda i: 0.0)
