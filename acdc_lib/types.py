"""Core data types and the protocols every backend implements.

The ACDC loop (`acdc_lib.loop`) and the experiment (`acdc_lib.experiment`) see models only through
these protocols, so the embedded toy world and the real models (Stable Diffusion, AnimateDiff,
transformers ARMs, an LLM memory, CLIP / Inception / DINOv2 scoring) are interchangeable:

    ARM        generate(texts, prev_tokens, generators) -> tokens    v^i ~ p(v^i | v^{1:i-1}, u^{1:i})  (Eq. 1)
               decode(tokens) -> images                              x_0^i = D(v^i)
               encode(images) -> tokens                              v~^i = E(x~_0^i)
    Corrector  correct(images, prompts, ...) -> images               SDEdit, Eq. (2)
    VideoCorrector  correct_video(videos, prompts, ...) -> videos    Eq. (5)
    Memory     refine(sentences) -> MemoryOutput                     y^i ~ p(y^i | y^{1:i-1}, d), Eq. (3)
    TextToImage  generate(prompts, height, width, ...) -> images     a frame from its text alone (the DM-only row)
    Evaluator  embed_images / fid_features / clip_model_fn / predict_attributes    scoring models
    GroundTruth  reference_images(story) / true_attributes(story)    what a world with known frames adds

Images are float tensors in [0, 1], shape (B, C, H, W); videos (B, L, C, H, W); image tokens are
long tensors (B, n). Every stochastic call takes one `torch.Generator` per batch row, so a story's
numbers never depend on which other stories share its batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol, Sequence, Union, runtime_checkable

import torch

from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------------------------
# Stories
# --------------------------------------------------------------------------------------------
@dataclass
class Story:
    """A multi-sentence story u^{1:N}; one sentence per frame.

    Args:
        story_id: unique id within its file.
        sentences: the story text, one sentence per frame (6 in the paper's benchmark).
        states: ground-truth scene state per sentence (toy world; JSON-serialisable dicts) or None.
        source: where the story came from: "grammar", "llm", "referential", "seed", ...
        meta: free-form, JSON-serialisable extras (seed, generator settings, parent story ...).
    """

    story_id: str
    sentences: list[str]
    states: list[dict[str, Any]] | None = None
    source: str = "grammar"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sentences)


# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------
@runtime_checkable
class ARM(Protocol):
    """A multimodal autoregressive model over text and discrete image tokens (Eq. 1).

    `tokens_per_frame` is n, the number of image tokens of one frame; the loop uses it to shape the
    empty context (B, 0, n) of the first frame and checks every frame against it.
    """

    tokens_per_frame: int

    def generate(
        self,
        texts: Sequence[Sequence[str]],
        prev_tokens: torch.LongTensor,
        generators: Sequence[torch.Generator],
    ) -> torch.LongTensor:
        """Sample the next frame's tokens for every story in the batch.

        Args:
            texts: per story, the text so far u^{1:i} (i strings for a story; one prompt for video).
            prev_tokens: (B, i-1, n) the tokens of the frames already in context (possibly corrected
                and re-encoded); (B, 0, n) at the first frame.
            generators: one per story; row b draws its randomness from generators[b] only.
        Returns:
            (B, n) long tensor of image tokens v^i.
        """
        ...

    def decode(self, tokens: torch.LongTensor) -> torch.Tensor:
        """(B, n) tokens -> (B, C, H, W) images in [0, 1]  (x_0^i = D(v^i))."""
        ...

    def encode(self, images: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) images in [0, 1] -> (B, n) tokens  (v~^i = E(x~_0^i))."""
        ...


@runtime_checkable
class Corrector(Protocol):
    """A text-conditional image diffusion model used as a local corrector through SDEdit (Eq. 2)."""

    def correct(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        *,
        strength: float = PAPER_STRENGTH,
        guidance_scale: float = PAPER_GUIDANCE_SCALE,
        num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] and B prompts -> corrected (B, C, H, W) images in [0, 1].

        t' = `strength` follows diffusers: int(num_inference_steps * strength) denoising steps run.
        """
        ...


@runtime_checkable
class DriftScorer(Protocol):
    """A corrector that can say, before correcting, how far a frame has drifted from its prompt."""

    def drift_score(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        *,
        strength: float = PAPER_STRENGTH,
        num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] and B prompts -> (B,) float scores; higher means more drift."""
        ...


@runtime_checkable
class VideoCorrector(Protocol):
    """A text-to-video diffusion model used to correct a chunk of L frames (Eq. 5)."""

    def correct_video(
        self,
        videos: torch.Tensor,
        prompts: Sequence[str],
        *,
        strength: float = PAPER_STRENGTH,
        guidance_scale: float = PAPER_GUIDANCE_SCALE,
        num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, L, C, H, W) videos in [0, 1] and B prompts -> corrected (B, L, C, H, W) in [0, 1]."""
        ...


@dataclass
class MemoryOutput:
    """What a memory module made of one story's sentences.

    Args:
        prompts: one refined prompt y^i per sentence, same length as the input.
        source: which module produced them: "none", "rules", "llm", "llm-cache", "fallback-rules".
        fallback_reason: why the LLM's answer was not used (None when it was, or no LLM is involved).
        requests: how many requests reached a server for this story (0 for a cache hit).
    """

    prompts: list[str]
    source: str
    fallback_reason: str | None = None
    requests: int = 0


@runtime_checkable
class Memory(Protocol):
    """Rewrites a story's sentences so each carries the context it needs (Eq. 3). One call per story."""

    def refine(self, sentences: Sequence[str]) -> MemoryOutput:
        ...


@runtime_checkable
class TextToImage(Protocol):
    """A text-to-image model drawing each frame from its prompt alone (the paper's Stable Diffusion row)."""

    def generate(
        self,
        prompts: Sequence[str],
        height: int | None = None,
        width: int | None = None,
        *,
        guidance_scale: float = PAPER_GUIDANCE_SCALE,
        num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """B prompts -> (B, C, height, width) images in [0, 1]; all N steps from noise, row b from generators[b]."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """The models that score frames. They never share weights or training with the models they judge.

    Required:
        name: a short label for tables ("toy", "real").
        embed_images: (B, C, H, W) in [0, 1] -> (B, D) image embeddings (frame consistency).
        fid_features: an nn.Module (B, C, H, W) in [0, 1] -> (B, F) with an int `num_features` (FID).
        clip_model_fn: torchmetrics CLIPScore's `model_name_or_path` callable, () -> (model, processor).
        attributes: {column: number of classes} of the attributes `predict_attributes` reads ({} for none).
        predict_attributes: (B, C, H, W) -> {column: (B,) long} for every column of `attributes`.
    Optional (used where present):
        embed_subject(images) -> (B, D): features of the subject (subject consistency, e.g. DINOv2).
        physically_valid(images) -> (B,) bool: whether a frame is physically plausible.
    """

    name: str
    fid_features: Any
    attributes: Mapping[str, int]

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        ...

    def clip_model_fn(self) -> tuple:
        ...

    def predict_attributes(self, images: torch.Tensor) -> Mapping[str, torch.Tensor]:
        ...


@runtime_checkable
class GroundTruth(Protocol):
    """What a world with known frames gives the scorer: true frames and true attribute labels per story."""

    def reference_images(self, story: Story) -> torch.Tensor:
        """(N, C, H, W) ground-truth frames in [0, 1] of the story's N sentences."""
        ...

    def true_attributes(self, story: Story) -> Mapping[str, torch.Tensor]:
        """{column: (N,) long} true labels, for the columns an evaluator's `attributes` names."""
        ...


# --------------------------------------------------------------------------------------------
# Loop configuration and results
# --------------------------------------------------------------------------------------------
CorrectPolicy = Union[Literal["all", "none", "adaptive"], str, int, frozenset, set, tuple, list]
"""Which frames get corrected: "all", "none", "every<k>" (frames 0, k, 2k, ...), an int k (the first k
frames, Table 2's "ACDC #"), an explicit collection of 0-based frame indices, or "adaptive" (a frame
whose drift score, `DriftScorer.drift_score` of the corrector, exceeds `LoopConfig.drift_threshold`)."""


@dataclass
class LoopConfig:
    """Settings of the ACDC loop. Defaults are the paper's (DDIM, CFG 7.5, t' = 0.5).

    Args:
        correct_frames: the correction policy (see `CorrectPolicy`).
        strength: SDEdit's t' in (0, 1]; int(num_inference_steps * strength) steps run.
        guidance_scale: classifier-free guidance scale of the corrector.
        num_inference_steps: N, the scheduler's full number of steps.
        use_memory: ask the memory module for refined prompts (else the raw sentences are used).
        drift_threshold: with correct_frames="adaptive", a frame is corrected when the corrector's
            drift score of it (against its prompt, at t') is above this value; unused otherwise.
    """

    correct_frames: CorrectPolicy = "all"
    strength: float = PAPER_STRENGTH
    guidance_scale: float = PAPER_GUIDANCE_SCALE
    num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS
    use_memory: bool = True
    drift_threshold: float | None = None


@dataclass
class FrameFault:
    """A frame that went wrong where it was made: it holds NaN or Inf, or is (near) constant.

    Args:
        frame: 0-based frame index i.
        stage: "decode" (the ARM's frame x_0^i = D(v^i)) or "correction" (the corrector's x~_0^i).
        reason: what is wrong, with the value measured (e.g. "12 NaN values", "near constant: std 0.0000").
        action: "stopped" (the story ends before this frame) or "uncorrected" (the story went on from the
            ARM's frame, as if this frame had not been corrected).
        image: (C, H, W) the bad frame as it came out, for inspection.
    """

    frame: int
    stage: str
    reason: str
    action: str
    image: torch.Tensor | None = None

    def describe(self) -> str:
        """One line: "frame 3 (correction): 12 NaN values; stopped" (frames counted from 1)."""
        return f"frame {self.frame + 1} ({self.stage}): {self.reason}; {self.action}"

    def to_record(self) -> dict[str, Any]:
        """The fault as JSON-ready data (without the image)."""
        return {"frame": self.frame, "stage": self.stage, "reason": self.reason, "action": self.action}


@dataclass
class FrameResult:
    """Every intermediate of one frame of one story.

    Args:
        index: 0-based frame index i.
        text: the story sentence u^i.
        arm_tokens: (n,) tokens the ARM sampled.
        arm_image: (C, H, W) decoded ARM frame x_0^i in [0, 1].
        corrected: whether the corrector ran on this frame.
        prompt: the prompt the corrector used (None when not corrected).
        corrected_image: (C, H, W) SDEdit output x~_0^i, None when not corrected.
        context_tokens: (n,) tokens the ARM continued from (re-encoded corrected frame, or arm_tokens).
        steps_run: denoising steps that actually ran (int(N * t')), 0 when not corrected.
        drift_score: the corrector's drift score of the ARM frame (adaptive policy only, else None).
        fault: why the corrected frame was not used (it went wrong and the loop went on from the ARM's
            frame, `on_bad_frame="uncorrected"`), else None.
    """

    index: int
    text: str
    arm_tokens: torch.Tensor
    arm_image: torch.Tensor
    corrected: bool
    prompt: str | None
    corrected_image: torch.Tensor | None
    context_tokens: torch.Tensor
    steps_run: int = 0
    drift_score: float | None = None
    fault: FrameFault | None = None

    @property
    def final_image(self) -> torch.Tensor:
        """The frame that the story shows: the corrected one where correction ran."""
        return self.corrected_image if self.corrected_image is not None else self.arm_image


@dataclass
class StoryResult:
    """One story's output: its frames, the memory's output and the seed that made them.

    `stopped` is the fault that ended the story early (its `frames` are then those before it), else None.
    """

    story_id: str
    seed: int
    frames: list[FrameResult]
    memory: MemoryOutput | None = None
    stopped: FrameFault | None = None

    def faults(self) -> list[FrameFault]:
        """Every frame that went wrong, in order: those the story went on past, then the one that stopped it."""
        return [f.fault for f in self.frames if f.fault is not None] + ([self.stopped] if self.stopped else [])

    def final_images(self) -> torch.Tensor:
        """(N, C, H, W) the frames the story shows."""
        return torch.stack([f.final_image for f in self.frames])

    def arm_images(self) -> torch.Tensor:
        """(N, C, H, W) the ARM's own decoded frames."""
        return torch.stack([f.arm_image for f in self.frames])


STAGES = ("arm", "decode", "memory", "drift", "correction", "encode")


@dataclass
class LoopOutput:
    """Results of one batched loop call, with wall time per stage (seconds, whole batch)."""

    stories: list[StoryResult]
    config: LoopConfig
    timings: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
