"""The real scoring models behind `acdc_lib.types.Evaluator`: CLIP, Inception (FID) and DINOv2.

    embed_images    CLIP image embeddings, L2-normalised: frame consistency (Esser et al., 2023)
    clip_model_fn   the same CLIP for torchmetrics' CLIPScore (text-image agreement)
    fid_features    Inception-v3 pool features (2048-d), the standard FID network
    embed_subject   DINOv2 CLS features, L2-normalised: subject consistency as VBench measures it

Every part is passed in already built (tests use tiny random models); `RealEvaluator.from_pretrained`
loads the real ones by id on a GPU node. Images are float (B, C, H, W) tensors in [0, 1], C in {1, 3}
(grey frames are repeated to RGB); preprocessing (resize, centre crop, normalisation) is done with torch
ops on tensors, so frames never go through PIL and stay on the models' device.

FID's Inception: torchmetrics' `NoTrainInceptionV3` (torch-fidelity's TensorFlow-compatible InceptionV3)
is the network `FrechetInceptionDistance(feature=2048, normalize=True)` uses, so our FID equals that
metric's. torch-fidelity is NOT a dependency of this package: it requires torchvision, whose wheels on
our registry are CUDA builds that do not import beside the CPU torch. On a GPU node install it with
`pip install torch-fidelity==0.4.0` (torchvision comes along with the CUDA torch there); it is imported
only when `from_pretrained` builds the Inception, and any nn.Module with an int `num_features` can be
injected instead.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from acdc_lib import metrics as M
from acdc_lib.sdedit import ModelNotAvailableError, _load_or_explain, validate_images

# ViT-L/14 rather than ViT-B/32: it is the CLIP that frame consistency is usually measured with in the
# text-to-video work the ACDC paper follows (Esser et al., 2023) and the default of torchmetrics'
# CLIPScore, so our CLIP-sim and CLIPScore are comparable with published numbers. ViT-B/32 is 3x
# cheaper; pass clip_id="openai/clip-vit-base-patch32" where speed matters more than comparability.
DEFAULT_CLIP_ID = "openai/clip-vit-large-patch14"
# VBench's subject consistency uses DINO (v1) ViT-B/16; DINOv2 ViT-B/14 is its maintained successor in
# transformers. dino_id="facebook/dino-vitb16" loads the v1 model through the same AutoModel path.
DEFAULT_DINO_ID = "facebook/dinov2-base"
INCEPTION_FEATURES = 2048  # pool3 features: the FID standard (torchmetrics' feature=2048)
TORCH_FIDELITY_PIN = "torch-fidelity==0.4.0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's pixel normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Tensor preprocessing
# --------------------------------------------------------------------------------------------
def _side(size: Any, *keys: str) -> int | None:
    """The first of `keys` set in a transformers size (a dict in transformers 4, a SizeDict in 5)."""
    for key in keys:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with C in {1, 3} -> (B, 3, H, W): grey frames repeated to the three channels."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def resize_crop_normalize(images: torch.Tensor, resize: int, crop: int, mean: Sequence[float],
                          std: Sequence[float]) -> torch.Tensor:
    """What CLIP's and DINOv2's image processors do, as torch ops on [0, 1] tensors.

    Resize (bicubic, antialiased) so the shorter side is `resize`, centre-crop `crop` x `crop`, then
    (x - mean) / std. The processors do the same on uint8 PIL images; values differ from theirs only
    by resampling round-off.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        resize: shorter side after resizing (>= crop).
        crop: side of the square centre crop.
        mean, std: per-channel normalisation.
    Returns:
        (B, 3, crop, crop) normalised pixels in the input's dtype.
    """
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(resize * long / short)  # transformers' rule: the longer side is truncated
    new_hw = (resize, new_long) if h <= w else (new_long, resize)
    x = images.float()
    if tuple(new_hw) != (h, w):
        # bicubic overshoots a little outside [0, 1]: clamp, as uint8 images would be
        x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    top, left = (new_hw[0] - crop) // 2, (new_hw[1] - crop) // 2
    x = x[..., top:top + crop, left:left + crop]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / s).to(images.dtype)


def _module_place(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(module.parameters()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


# --------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------
class _CLIPForScore(nn.Module):
    """CLIP as torchmetrics' CLIPScore calls it, for any device and dtype.

    CLIPScore hands over float32 pixels; a float16 CLIP on a GPU needs them in its own dtype, and the
    features come back as float32 so the cosine is not computed in half precision.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.config = clip.config  # CLIPScore reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return (out.pooler_output if hasattr(out, "pooler_output") else out).float()

    def get_image_features(self, pixel_values):
        device, dtype = _module_place(self.clip)
        return self._tensor(self.clip.get_image_features(pixel_values=pixel_values.to(device, dtype)))

    def get_text_features(self, input_ids, attention_mask=None):
        device, _ = _module_place(self.clip)
        mask = attention_mask.to(device) if attention_mask is not None else None
        return self._tensor(self.clip.get_text_features(input_ids=input_ids.to(device), attention_mask=mask))


class FIDFeatures(nn.Module):
    """FID's feature module over an injected network: (B, C, H, W) in [0, 1] -> (B, num_features) float32.

    Moves each batch to the network's device and dtype (the scorer passes CPU frames) and repeats
    grey frames to RGB. torchmetrics' FID places itself on this module's parameters' device.

    Args:
        network: nn.Module (B, 3, H, W) in [0, 1] -> (B, F), with an int attribute `num_features` = F.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        n = getattr(network, "num_features", None)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the FID feature network needs a positive int attribute num_features, got {n!r} "
                             f"on {type(network).__name__}")
        self.network, self.num_features = network, n

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device, dtype = _module_place(self.network)
        out = self.network(_rgb(images).to(device, dtype))
        if out.ndim != 2 or out.shape != (images.shape[0], self.num_features):
            raise ValueError(f"the FID feature network returned {tuple(out.shape)}; expected "
                             f"({images.shape[0]}, {self.num_features})")
        return out.float()


class InceptionUint8(nn.Module):
    """torchmetrics' / torch-fidelity's InceptionV3 on [0, 1] images, quantised as torchmetrics does.

    `FrechetInceptionDistance(normalize=True)` feeds its Inception `(x * 255).byte()`; the same here,
    so our FID is that metric's number.

    Args:
        inception: a torchmetrics NoTrainInceptionV3 (uint8 (B, 3, H, W) -> (B, 2048)).
    """

    num_features = INCEPTION_FEATURES

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception((images.float() * 255).byte())


def build_inception(weights: str | os.PathLike | None = None) -> nn.Module:
    """The FID Inception-v3 (torch-fidelity's weights, 2048-d pool features) as a [0, 1]-image module.

    Args:
        weights: torch-fidelity's weights file (weights-inception-2015-12-05-6726825d.pth) for machines
            without internet; None downloads it into torch hub's cache on first use.
    Raises:
        ImportError naming torch-fidelity when it is not installed; ModelNotAvailableError when the
        weights cannot be read or downloaded.
    """
    try:
        importlib.import_module("torch_fidelity")  # torchmetrics only checks it is installed; say why it fails
    except Exception as err:  # ImportError, or torchvision failing inside torch_fidelity's __init__
        raise ImportError(
            f"the FID Inception needs the torch-fidelity package ({type(err).__name__}: {err}); on a GPU node run "
            f"`pip install {TORCH_FIDELITY_PIN}` (it brings torchvision). It cannot be installed beside the CPU "
            "torch of this project's CPU environment; there, pass `inception=` an nn.Module with an int "
            "num_features instead") from None
    from torchmetrics.image.fid import NoTrainInceptionV3

    if weights is not None and not os.path.isfile(os.path.expanduser(str(weights))):
        raise ModelNotAvailableError(f"cannot load the FID Inception from {str(weights)!r}: no such file; pass "
                                     "`inception`: torch-fidelity's weights file (.pth), None to download it, or an "
                                     "nn.Module with an int num_features")
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)],
                                 feature_extractor_weights_path=None if weights is None else
                                 os.path.expanduser(str(weights)))
    except OSError as err:  # no network (URLError), unreadable file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "torch-fidelity's download URL" if weights is None else repr(str(weights))
        raise ModelNotAvailableError(
            f"cannot load the FID Inception weights from {where} ({first}); pass `inception`: the weights file "
            "(.pth) torch-fidelity downloads, copied to this machine, or an nn.Module with an int num_features"
        ) from None
    return InceptionUint8(net)


def _torchscript(path: str | os.PathLike) -> nn.Module | None:
    """A feature network saved with torch.jit.save (with an int `num_features`), or None when `path` is not one.

    This lets a papermill run, whose parameters are plain values, pass its own Inception-like network by
    file; torch-fidelity's weights file is a state dict, which torch.jit.load refuses.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        return None
    try:
        net = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError):
        return None
    if not isinstance(getattr(net, "num_features", None), int):
        raise ValueError(f"the TorchScript network {path!r} has no int num_features attribute (the FID feature width)")
    return net


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------
class RealEvaluator:
    """CLIP + Inception + DINOv2 behind the Evaluator protocol (name "real"; no attribute readers).

    `embed_subject` exists only when a DINO model is given: `hasattr(ev, "embed_subject")` is False
    otherwise, so the scorer (which looks it up with getattr) reports subject consistency as skipped
    instead of failing halfway through a table.

    Args:
        clip_model: a transformers CLIPModel (weights loaded).
        clip_processor: its CLIPProcessor (tokenizer + image processor: resize, crop, mean, std are
            read from it), or a bare tokenizer (then the vision config's image size and OpenAI's
            mean / std are used).
        fid_features: nn.Module (B, 3, H, W) in [0, 1] -> (B, F) with an int `num_features`
            (`build_inception()` on GPU nodes; tests inject a tiny CNN).
        dino_model: a transformers Dinov2Model (or any AutoModel whose last_hidden_state[:, 0] is a
            CLS token, e.g. DINO v1's ViTModel); None turns subject consistency off.
        dino_mean, dino_std: DINO's pixel normalisation (ImageNet's for DINOv2).
        dino_size: side of DINO's centre crop (224 for DINOv2).
        dino_resize: shorter side before the crop (256 for DINOv2's processor; default dino_size).
        device, dtype: where and in which precision CLIP and DINO run (float16 on GPU nodes). The FID
            network is only moved to `device`: its dtype stays as built (float32), since FID's
            covariances are sensitive to half-precision features.
    """

    name = "real"

    def __init__(self, clip_model: nn.Module, clip_processor, fid_features: nn.Module,
                 dino_model: nn.Module | None = None, *, dino_mean: Sequence[float] = IMAGENET_MEAN,
                 dino_std: Sequence[float] = IMAGENET_STD, dino_size: int = 224, dino_resize: int | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        self.device, self.dtype = torch.device(device), dtype or torch.float32
        self.clip = clip_model.to(self.device, self.dtype).eval()
        ip = getattr(clip_processor, "image_processor", None)
        crop = _side(getattr(ip, "crop_size", None), "height", "shortest_edge")
        self.clip_size = crop or int(self.clip.config.vision_config.image_size)
        self.clip_resize = _side(getattr(ip, "size", None), "shortest_edge", "height") or self.clip_size
        self.clip_mean = tuple(getattr(ip, "image_mean", None) or M.OPENAI_CLIP_MEAN)
        self.clip_std = tuple(getattr(ip, "image_std", None) or M.OPENAI_CLIP_STD)
        if self.clip_resize < self.clip_size:
            raise ValueError(f"CLIP's resize side {self.clip_resize} is smaller than its crop {self.clip_size}")
        # CLIPScore through the same CLIP: texts padded and cut to the model's context (77 for OpenAI CLIP)
        self._clip_fn = M.clipscore_from_clip_model(_CLIPForScore(self.clip), clip_processor, self.clip_size,
                                                    self.clip_mean, self.clip_std,
                                                    {"padding": True, "truncation": True})
        if not isinstance(fid_features, nn.Module):
            raise ValueError(f"fid_features must be an nn.Module with an int num_features, got "
                             f"{type(fid_features).__name__}")
        self.fid_features = FIDFeatures(fid_features.to(self.device).eval())
        self.attributes: dict[str, int] = {}
        self.dino = None
        if dino_model is not None:
            self.dino = dino_model.to(self.device, self.dtype).eval()
            self.dino_mean, self.dino_std = tuple(dino_mean), tuple(dino_std)
            self.dino_size, self.dino_resize = int(dino_size), int(dino_resize or dino_size)
            if self.dino_resize < self.dino_size:
                raise ValueError(f"dino_resize {self.dino_resize} is smaller than dino_size {self.dino_size}")
            self.embed_subject = self._embed_subject  # only here: see the class docstring

    @classmethod
    def from_pretrained(cls, clip_id: str | os.PathLike = DEFAULT_CLIP_ID,
                        dino_id: str | os.PathLike | None = DEFAULT_DINO_ID,
                        inception: nn.Module | str | os.PathLike | None = None, *,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "RealEvaluator":
        """Load CLIP, DINOv2 and the FID Inception (no remote code is run).

        Args:
            clip_id: Hub id or save_pretrained folder of a CLIPModel + CLIPProcessor.
            dino_id: Hub id or folder of a DINOv2 model + its image processor; None: no subject consistency.
            inception: None (torch-fidelity's InceptionV3, weights downloaded once into torch hub's
                cache), a path to those weights (offline nodes), a path to a TorchScript feature network
                with an int `num_features`, or an nn.Module with an int `num_features` used as is.
            device, dtype: as in the constructor (dtype None: float32).
        Raises:
            ModelNotAvailableError naming the model that could not be loaded and what to pass;
            ImportError naming torch-fidelity when the Inception is wanted and it is missing.
        """
        from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

        dtype = dtype or torch.float32
        clip = _load_or_explain(CLIPModel.from_pretrained, clip_id, "a CLIP model (transformers CLIPModel)",
                                "clip_id", f" (e.g. {DEFAULT_CLIP_ID!r})", dtype=dtype, trust_remote_code=False)
        processor = _load_or_explain(CLIPProcessor.from_pretrained, clip_id, "CLIP's processor (tokenizer + image "
                                     "processor)", "clip_id", f" (e.g. {DEFAULT_CLIP_ID!r})", trust_remote_code=False)
        dino, dino_kwargs = None, {}
        if dino_id is not None:
            dino = _load_or_explain(AutoModel.from_pretrained, dino_id, "a DINOv2 model (transformers AutoModel)",
                                    "dino_id", f" (e.g. {DEFAULT_DINO_ID!r}; None turns subject consistency off)",
                                    dtype=dtype, trust_remote_code=False)
            dp = _load_or_explain(AutoImageProcessor.from_pretrained, dino_id, "DINOv2's image processor",
                                  "dino_id", f" (e.g. {DEFAULT_DINO_ID!r}; the folder needs preprocessor_config.json)",
                                  trust_remote_code=False)
            crop = _side(getattr(dp, "crop_size", None), "height", "shortest_edge") if getattr(
                dp, "do_center_crop", True) else None
            resize = _side(getattr(dp, "size", None), "shortest_edge", "height")
            size = crop or resize or int(dino.config.image_size)
            dino_kwargs = dict(dino_mean=tuple(dp.image_mean), dino_std=tuple(dp.image_std), dino_size=size,
                               dino_resize=max(resize or size, size))
        scripted = _torchscript(inception) if isinstance(inception, (str, os.PathLike)) else None
        if isinstance(inception, nn.Module):
            fid_net = inception
        elif scripted is not None:
            fid_net = scripted
        elif inception is None or isinstance(inception, (str, os.PathLike)):
            fid_net = build_inception(inception)
        else:
            raise ValueError(f"inception must be None, a weights path or an nn.Module, got {type(inception).__name__}")
        return cls(clip, processor, fid_net, dino, device=device, dtype=dtype, **dino_kwargs)

    # ---- the protocol ---------------------------------------------------------------------
    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, D) L2-normalised CLIP image embeddings (float32, on `device`)."""
        validate_images(images)
        px = resize_crop_normalize(_rgb(images).to(self.device, torch.float32), self.clip_resize, self.clip_size,
                                   self.clip_mean, self.clip_std)
        out = self.clip.get_image_features(pixel_values=px.to(self.dtype))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5: an output object
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def _embed_subject(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, D) L2-normalised DINO CLS features (float32, on `device`)."""
        validate_images(images)
        px = resize_crop_normalize(_rgb(images).to(self.device, torch.float32), self.dino_resize, self.dino_size,
                                   self.dino_mean, self.dino_std)
        cls_token = self.dino(pixel_values=px.to(self.dtype)).last_hidden_state[:, 0]  # after the final norm
        return F.normalize(cls_token.float(), dim=-1)

    def clip_model_fn(self) -> tuple:
        """CLIPScore's model callable: () -> (model, processor)."""
        return self._clip_fn()

    def predict_attributes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{}: real stories come with no attribute labels, so no attribute reader is run."""
        return {}


__all__ = ["DEFAULT_CLIP_ID", "DEFAULT_DINO_ID", "FIDFeatures", "InceptionUint8", "ModelNotAvailableError",
           "RealEvaluator", "build_inception", "resize_crop_normalize"]
