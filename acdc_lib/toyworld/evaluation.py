"""The toy world's scoring parts: its evaluator (CLIP + probe) and its ground truth (the renderer).

`ToyStoryEvaluator` implements `acdc_lib.types.Evaluator` over `ToyEvaluator`, and `ToyGroundTruth`
implements `acdc_lib.types.GroundTruth` from the stories' scene states, so the model-agnostic scorer
(`acdc_lib.experiment`) reads the toy world only through those protocols.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from acdc_lib import metrics as M
from acdc_lib.toyworld.models import IMAGE_SIZE, PROBE_HEADS, ToyEvaluator, state_labels
from acdc_lib.toyworld.validity import COUNT_HEADS, physically_valid

# table column -> probe head: StoryGPT-V's character and background accuracy, then time and action
ATTRIBUTE_COLUMNS: dict[str, str] = {"char": "species", "bg": "place", "time": "time", "action": "action"}
# what a clip keeps from frame to frame: what its prompt names, and what only its frames carry
IDENTITY_HEADS: tuple[str, ...] = ("species", "place", "time", "marking", "accessory", "layout")


class ToyStoryEvaluator:
    """The toy evaluator behind the Evaluator protocol (it shares nothing with the ARM or the DM).

    Args:
        toy: the loaded ToyEvaluator (`models.load_evaluator()`).
    """

    name = "toy"

    def __init__(self, toy: ToyEvaluator):
        self.toy = toy
        self.attributes: dict[str, int] = {c: PROBE_HEADS[h] for c, h in ATTRIBUTE_COLUMNS.items()}
        self.fid_features = M.FeatureModule(lambda x: toy.image_features(_toy_size(x)), toy.num_features)
        # CLIPScore through the same tiny CLIP; its pixels are x * 2 - 1, as ToyEvaluator feeds it
        self._clip_fn = M.clipscore_from_clip_model(toy.clip, toy.tokenizer, IMAGE_SIZE, (0.5,) * 3, (0.5,) * 3,
                                                    {"padding": "max_length"})

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, F) L2-normalised CLIP image embeddings."""
        return self.toy.image_features(_toy_size(images))

    def clip_model_fn(self) -> tuple:
        """CLIPScore's model callable: () -> (model, processor)."""
        return self._clip_fn()

    def predict_attributes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) -> {column: (B,) long} read by the probe."""
        heads = self.toy.predict(_toy_size(images))
        return {c: heads[h] for c, h in ATTRIBUTE_COLUMNS.items()}

    @torch.no_grad()
    def embed_subject(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 256) L2-normalised features of the probe's shared layer: the evaluator's view
        of the character (species, pose, coat, collar, where it stands and faces), for subject consistency
        as VBench measures it with DINO features."""
        x, probe, out = _toy_size(images), self.toy.probe, []
        for i in range(0, x.shape[0], batch_size):
            px = x[i:i + batch_size].to(self.toy.device) * 2.0 - 1.0
            out.append(F.normalize(probe.trunk(probe.features(px)), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def read_identity(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {"species", "marking", "accessory", "layout", "place", "time": (B,) long}: what
        a video keeps from frame to frame, as the probe reads it."""
        heads = self.toy.predict(_toy_size(images))
        return {k: heads[k] for k in IDENTITY_HEADS}

    @torch.no_grad()
    def read_motion(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {"position": (B,) float, the expected X_POSITIONS cell under the probe's x-cell
        probabilities (a continuous reading), "cell": (B,) long its most likely cell, "facing": (B,) long
        (left 0, right 1)}."""
        x, probs, facing = _toy_size(images), [], []
        for i in range(0, x.shape[0], 512):
            logits = self.toy.probe(x[i:i + 512].to(self.toy.device))
            probs.append(logits["x_cell"].softmax(-1).cpu())
            facing.append(logits["facing"].argmax(-1).cpu())
        p = torch.cat(probs)
        pos = (p.double() * torch.arange(p.shape[-1], dtype=torch.float64)).sum(-1)
        return {"position": pos, "cell": p.argmax(-1), "facing": torch.cat(facing)}

    def physically_valid(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the probe counts one sun or moon, two ears and one tail."""
        heads = self.toy.predict(_toy_size(images))
        return physically_valid({k: heads[k][None] for k in COUNT_HEADS})[0]

    def physical_errors(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"sky", "ears", "tail"}: (B,) bool, the probe does not count one sun or moon, two ears, one tail."""
        from acdc_lib.toyworld.physical import physical_errors

        return physical_errors(self.toy.predict(_toy_size(images)))


    def carried_scores(self, frames: torch.Tensor, story) -> dict[str, torch.Tensor]:
        """What only the frames carry, judged against the row's own frame 1 (the text never states it).

        Args:
            frames: (N, 3, H, W) one story's frames of one row.
            story: the story, with ground-truth states.
        Returns:
            {"identity_acc": (N,), "position_err_px": (N,)} float, NaN where undefined. identity_acc at
            frame i >= 2: the fraction of coat marking, collar colour and (while the story is still at
            frame 1's place) layout variant read the same as in this row's frame 1, which fixed them.
            position_err_px: while the story is at frame 1's place, |(x_i - x_1) read - (x_i - x_1) true| in
            pixels, how far the character moved wrongly since frame 1; a place change draws a new x.
        """
        from acdc_lib.toyworld.world import X_POSITIONS

        _require_states(story)
        heads = self.toy.predict(_toy_size(frames))
        N = frames.shape[0]
        places = [st["place"] for st in story.states]
        same_place = torch.tensor([all(p == places[0] for p in places[:i + 1]) for i in range(N)])
        ident = torch.full((N,), float("nan"))
        pos = torch.full((N,), float("nan"))
        grid = torch.tensor(X_POSITIONS, dtype=torch.float64)
        x_read = grid[heads["x_cell"]]
        x_true = torch.tensor([st["x"] for st in story.states], dtype=torch.float64)
        for i in range(1, N):
            same = [heads[k][i] == heads[k][0] for k in ("marking", "accessory")]
            if same_place[i]:
                same.append(heads["layout"][i] == heads["layout"][0])
                pos[i] = float(((x_read[i] - x_read[0]) - (x_true[i] - x_true[0])).abs() * IMAGE_SIZE)
            ident[i] = float(torch.stack(same).float().mean())
        return {"identity_acc": ident, "position_err_px": pos}


class ToyGroundTruth:
    """True frames (rendered from each story's states) and true attribute labels, per story."""

    label = "Ground-truth renders"

    def reference_images(self, story) -> torch.Tensor:
        """(N, 3, 32, 32) renders of the story's ground-truth states."""
        from acdc_lib.toyworld.render import render_states

        _require_states(story)
        return render_states(story.states).images

    def true_attributes(self, story) -> Mapping[str, torch.Tensor]:
        """{column: (N,) long} labels of the story's states."""
        _require_states(story)
        labels = state_labels(story.states)
        return {c: labels[h] for c, h in ATTRIBUTE_COLUMNS.items()}


def _toy_size(images: torch.Tensor) -> torch.Tensor:
    """Frames of another model (e.g. 512 px from Stable Diffusion) resized to the 32 px the evaluator reads."""
    if tuple(images.shape[-2:]) == (IMAGE_SIZE, IMAGE_SIZE):
        return images
    return F.interpolate(images.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0.0, 1.0)


def _require_states(story) -> None:
    if not story.states:
        raise ValueError(f"story {story.story_id!r} (source {story.source!r}) has no ground-truth states; "
                         "score it without a ground truth")


__all__ = ["ATTRIBUTE_COLUMNS", "ToyStoryEvaluator", "ToyGroundTruth"]
