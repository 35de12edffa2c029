"""The real evaluator (CLIP, Inception-style FID network, DINOv2) on tiny random models, offline on CPU.

What a user relies on: it is an `Evaluator`; CLIP and DINO embeddings are unit vectors that depend
only on their own image; the tensor preprocessing is what the transformers image processors do;
CLIPScore and FID run through `acdc_lib.metrics`; subject consistency can be turned off cleanly;
loading from folders works and a missing model fails with one clear error.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BitImageProcessor, CLIPImageProcessor, CLIPProcessor, Dinov2Config, Dinov2Model

from acdc_lib import metrics as M
from acdc_lib.backends import components
from acdc_lib.backends.evaluator import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FIDFeatures,
    RealEvaluator,
    build_inception,
    resize_crop_normalize,
)
from acdc_lib.sdedit import ModelNotAvailableError
from acdc_lib.types import Evaluator

import tiny_diffusers as td  # tests/unit is on sys.path under pytest's default import mode

# A row alone vs inside a batch: CPU BLAS may pick other kernels for other batch sizes (last float32 bits).
BATCH_ATOL = 1e-5
TEXTS = ["a red fox in a meadow", "a beagle on the beach", "an owl at night"]


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyFeatureCNN(nn.Module):
    """An Inception-like stand-in: conv, pooling, linear -> (B, num_features)."""

    num_features = 6

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, self.num_features)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x * 2 - 1)), 1).flatten(1))


def clip_processor() -> CLIPProcessor:
    # CLIP's real processor shape (resize shortest side, then centre crop) at the tiny model's 8 px
    ip = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    return CLIPProcessor(image_processor=ip, tokenizer=td.tiny_tokenizer())


def tiny_dino(seed: int = 0) -> Dinov2Model:
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=8, patch_size=4)
    return Dinov2Model(config).eval()


def dino_processor() -> BitImageProcessor:
    # DINOv2's processor shape (shorter side 256, crop 224, ImageNet statistics), scaled down to 10 / 8 px
    return BitImageProcessor(size={"shortest_edge": 10}, crop_size={"height": 8, "width": 8},
                             image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


def build(dino: bool = True, **kwargs) -> RealEvaluator:
    extra = dict(dino_model=tiny_dino(), dino_size=8, dino_resize=10) if dino else {}
    return RealEvaluator(td.tiny_clip_model(), clip_processor(), TinyFeatureCNN(), **extra, **kwargs)


def images(b: int = 3, h: int = 16, w: int = 16, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ev() -> RealEvaluator:
    return build()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny CLIP and DINOv2 folders written with save_pretrained, as a user would have them."""
    root = tmp_path_factory.mktemp("tiny_evaluator")
    td.tiny_clip_model().save_pretrained(root / "clip")
    clip_processor().save_pretrained(root / "clip")
    tiny_dino().save_pretrained(root / "dino")
    dino_processor().save_pretrained(root / "dino")
    td.tiny_clip_model().save_pretrained(root / "clip_without_processor")
    return root


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------
def test_is_an_evaluator_without_attribute_readers(ev):
    assert isinstance(ev, Evaluator) and ev.name == "real"
    assert ev.attributes == {} and ev.predict_attributes(images()) == {}
    assert not hasattr(ev, "physically_valid")
    assert isinstance(ev.fid_features, nn.Module) and ev.fid_features.num_features == 6


def test_embed_images_gives_deterministic_unit_vectors_per_image(ev):
    x = images(3)
    a, b = ev.embed_images(x), ev.embed_images(x)
    assert a.shape == (3, 8) and a.dtype == torch.float32 and torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(ev.embed_images(x[1:2])[0], a[1], atol=BATCH_ATOL, rtol=0)
    assert (a[0] - a[1]).abs().max() > 1e-4
    # other sizes, non-square and grey frames are taken as the processor would take them
    assert ev.embed_images(images(2, 12, 20)).shape == (2, 8)
    grey = images(2, c=1)
    torch.testing.assert_close(ev.embed_images(grey), ev.embed_images(grey.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 16, 16), "4-D"),
    (torch.rand(2, 4, 16, 16), "C in"),
    (torch.rand(2, 3, 16, 16) * 2, r"\[0, 1\]"),
    (torch.randint(0, 255, (2, 3, 16, 16)), "float"),
])
def test_embedders_refuse_bad_images(ev, bad, match):
    for fn in (ev.embed_images, ev.embed_subject):
        with pytest.raises(ValueError, match=match):
            fn(bad)


def test_clip_preprocessing_matches_the_transformers_processor(ev):
    # 8 x 12 frames: no resize is needed (shorter side = 8), so the centre crop and the normalisation
    # must match the processor's to float precision on uint8-exact pixels.
    x = torch.randint(0, 256, (2, 3, 8, 12), generator=torch.Generator().manual_seed(1)).float() / 255
    ours = resize_crop_normalize(x, ev.clip_resize, ev.clip_size, ev.clip_mean, ev.clip_std)
    theirs = clip_processor().image_processor(images=list((x * 255).round().byte()), return_tensors="pt")
    torch.testing.assert_close(ours, theirs["pixel_values"], atol=1e-5, rtol=0)


def test_dino_preprocessing_matches_the_transformers_processor(ev):
    x = torch.randint(0, 256, (2, 3, 10, 14), generator=torch.Generator().manual_seed(2)).float() / 255
    ours = resize_crop_normalize(x, ev.dino_resize, ev.dino_size, ev.dino_mean, ev.dino_std)
    theirs = dino_processor()(images=list((x * 255).round().byte()), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, 8, 8)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # with a resize the values differ from PIL's only by resampling round-off
    big = images(1, 20, 28, seed=3)
    ours = resize_crop_normalize(big, ev.dino_resize, ev.dino_size, ev.dino_mean, ev.dino_std)
    theirs = dino_processor()(images=list((big * 255).round().byte()), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape and (ours - theirs).abs().mean() < 0.02  # measured 0.005


def test_clip_score_runs_and_equals_the_cosine_it_defines(ev):
    frames = images(6).reshape(2, 3, 3, 16, 16)                                 # (S, N, C, H, W)
    texts = [TEXTS, TEXTS[::-1]]
    scores = M.clip_score(frames, texts, ev.clip_model_fn)
    assert scores.shape == (2,) and bool(((scores >= 0) & (scores <= 100)).all())
    # CLIPScore = max(100 * mean_i cos(image_i, text_i), 0) with the same CLIP embeddings
    tok = clip_processor().tokenizer
    for s in range(2):
        ids = tok(texts[s], return_tensors="pt", padding=True)
        t = ev.clip.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output
        cos = (ev.embed_images(frames[s]) * F.normalize(t, dim=-1)).sum(-1)
        assert scores[s].item() == pytest.approx(max(100 * cos.mean().item(), 0.0), abs=1e-3)


def test_fid_and_feature_embedding_run(ev):
    real, fake = images(8, seed=1), images(8, seed=2) * 0.5
    value = M.fid(real, fake, ev.fid_features)
    assert np.isfinite(value) and value > 0
    assert M.fid(real, real, ev.fid_features) == pytest.approx(0.0, abs=1e-3)
    feats = M.embed_frames(real.reshape(2, 4, 3, 16, 16), ev.fid_features)
    assert feats.shape == (2, 4, 6) and feats.dtype == torch.float32


def test_fid_features_check_the_network():
    class NoCount(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ValueError, match="num_features"):
        FIDFeatures(NoCount())
    wrong = TinyFeatureCNN()
    wrong.num_features = 5
    with pytest.raises(ValueError, match=r"returned \(2, 6\); expected \(2, 5\)"):
        FIDFeatures(wrong)(images(2))


def test_embed_subject_gives_unit_cls_features(ev):
    x = images(3)
    a = ev.embed_subject(x)
    assert a.shape == (3, 16) and a.dtype == torch.float32 and torch.equal(a, ev.embed_subject(x))
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(ev.embed_subject(x[2:]), a[2:], atol=BATCH_ATOL, rtol=0)
    cons = M.frame_consistency(M.embed_frames(images(6).reshape(2, 3, 3, 16, 16), ev.embed_subject))
    assert cons.per_story.shape == (2,) and bool((cons.per_story.abs() <= 1 + 1e-9).all())


def test_without_dino_there_is_no_embed_subject():
    ev = build(dino=False)
    assert isinstance(ev, Evaluator) and not hasattr(ev, "embed_subject")
    assert getattr(ev, "embed_subject", None) is None  # how the scorer looks it up


def test_half_precision_models_return_float32():
    ev = build(dtype=torch.bfloat16)
    assert ev.clip.dtype == torch.bfloat16 and ev.dino.dtype == torch.bfloat16
    x = images(2)
    assert ev.embed_images(x).dtype == torch.float32 and ev.embed_subject(x).dtype == torch.float32
    scores = M.clip_score(x[None], [TEXTS[:2]], ev.clip_model_fn)
    assert bool(((scores >= 0) & (scores <= 100)).all())


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def test_from_pretrained_loads_saved_folders(saved, ev):
    loaded = RealEvaluator.from_pretrained(clip_id=saved / "clip", dino_id=saved / "dino", inception=TinyFeatureCNN())
    assert isinstance(loaded, Evaluator)
    assert (loaded.clip_size, loaded.clip_resize, loaded.dino_size, loaded.dino_resize) == (8, 8, 8, 10)
    assert loaded.dino_mean == pytest.approx(IMAGENET_MEAN) and loaded.dino_std == pytest.approx(IMAGENET_STD)
    x = images(2)
    torch.testing.assert_close(loaded.embed_images(x), ev.embed_images(x))
    torch.testing.assert_close(loaded.embed_subject(x), ev.embed_subject(x))
    no_dino = RealEvaluator.from_pretrained(clip_id=saved / "clip", dino_id=None, inception=TinyFeatureCNN())
    assert not hasattr(no_dino, "embed_subject")


def test_the_real_backend_builds_it(saved):
    ev = components.real_evaluator(str(saved / "clip"), dino_id=str(saved / "dino"), inception=TinyFeatureCNN())
    assert isinstance(ev, RealEvaluator) and hasattr(ev, "embed_subject")


@pytest.mark.parametrize("kwargs, match", [
    (dict(clip_id="missing"), r"cannot load a CLIP model .*missing.*no such folder; pass `clip_id`"),
    (dict(dino_id="missing"), r"cannot load a DINOv2 model .*no such folder; pass `dino_id`"),
    (dict(clip_id="clip_without_processor"), r"cannot load CLIP's processor .*pass `clip_id`"),
    (dict(dino_id="clip_without_processor"), r"cannot load DINOv2's image processor .*pass `dino_id`"),
])
def test_a_missing_model_is_one_clear_error(saved, kwargs, match):
    paths = dict(clip_id=saved / "clip", dino_id=saved / "dino")
    paths.update({k: saved / v for k, v in kwargs.items()})
    with pytest.raises(ModelNotAvailableError, match=match) as info:
        RealEvaluator.from_pretrained(**paths, inception=TinyFeatureCNN())
    err = info.value  # one error: no chained traceback of the loader underneath
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_bad_inception_argument(saved):
    with pytest.raises(ValueError, match="inception must be None, a weights path or an nn.Module, got int"):
        RealEvaluator.from_pretrained(clip_id=saved / "clip", dino_id=None, inception=3)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_without_torch_fidelity_the_inception_names_the_package():
    with pytest.raises(ImportError, match=r"pip install torch-fidelity==0\.4\.0"):
        build_inception()
