"""Toy video clips: one prompt, one character moving smoothly over a fixed background, exact truth per frame.

A clip is the video extension's unit (Eq. 4-6): a prompt u ("Max the corgi runs in the snowy field at
night.") and N scene states. Everything the prompt names (character, species, place, time, action)
is fixed for the clip, and so is what it never names (coat marking, collar colour, background layout).
The motion follows one rule, the clip's physics: every frame the character moves one cell of the
X_POSITIONS grid the way it faces; at the edge of the grid it turns round on the spot for one frame.
A jumping character also hops: its feet line follows JUMP_ARC, one hop every len(JUMP_ARC) frames.
So the next frame is fixed by the frame before it (position, facing, hop phase): a video model that
continues from its context can draw it exactly, one that redraws from the prompt cannot.

Clips come from seeded streams: `make_clips(n, split)` gives the same clips on every machine, and the
three splits draw from disjoint seed streams (no clip of the test split is ever trained on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from acdc_lib.toyworld.world import (
    ACCESSORIES,
    DEFAULT_Y,
    FACINGS,
    MARKINGS,
    N_LAYOUTS,
    NAMES,
    PLACES,
    SPECIES,
    TIMES,
    X_POSITIONS,
    SceneState,
    explicit_caption,
)

CLIP_ACTIONS: tuple[str, ...] = ("run", "jump")
JUMP_ARC: tuple[float, ...] = (DEFAULT_Y, 0.80, 0.76, 0.80)  # feet line over one hop (lower y: higher up)
CLIP_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}  # spawn keys of the splits' seed streams
CLIP_SEED = 20240605  # root of every split's stream


@dataclass
class Clip:
    """One toy video: its prompt and the ground-truth state of every frame.

    Args:
        clip_id: unique within its split ("test-00042").
        prompt: the one prompt u that conditions every frame.
        states: N SceneStates, frame by frame.
        phase: the hop phase of frame 1 (index into JUMP_ARC; jumping clips only, else 0).
    """

    clip_id: str
    prompt: str
    states: list[SceneState]
    phase: int = 0

    def __len__(self) -> int:
        return len(self.states)

    def to_dict(self) -> dict[str, Any]:
        return {"clip_id": self.clip_id, "prompt": self.prompt, "phase": self.phase,
                "states": [s.to_dict() for s in self.states]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Clip":
        missing = [k for k in ("clip_id", "prompt", "states") if k not in d]
        if missing:
            raise ValueError(f"a clip dict needs {missing}; got keys {sorted(d)}")
        return cls(str(d["clip_id"]), str(d["prompt"]), [SceneState.from_dict(s) for s in d["states"]],
                   int(d.get("phase", 0)))


def step_motion(cell: int, facing: str) -> tuple[int, str]:
    """The clip physics for one frame: one grid cell the way the character faces; at the edge, turn round."""
    if facing not in FACINGS:
        raise ValueError(f"facing must be one of {FACINGS}, got {facing!r}")
    if not isinstance(cell, (int, np.integer)) or not 0 <= cell < len(X_POSITIONS):
        raise ValueError(f"cell must be an int in [0, {len(X_POSITIONS) - 1}], got {cell!r}")
    step = 1 if facing == "right" else -1
    nxt = int(cell) + step
    if not 0 <= nxt < len(X_POSITIONS):
        return int(cell), ("left" if facing == "right" else "right")
    return nxt, facing


def clip_states(first: SceneState, n_frames: int, phase: int = 0) -> list[SceneState]:
    """The N states of a clip that starts at `first` (its x must be on the grid) and follows the clip physics."""
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
    if first.action not in CLIP_ACTIONS:
        raise ValueError(f"a clip's action must be one of {CLIP_ACTIONS}, got {first.action!r}")
    cells = [k for k, x in enumerate(X_POSITIONS) if abs(x - first.x) < 1e-9]
    if not cells:
        raise ValueError(f"a clip starts on the grid X_POSITIONS {X_POSITIONS}, got x={first.x!r}")
    cell, facing, out = cells[0], first.facing, []
    for j in range(n_frames):
        y = JUMP_ARC[(phase + j) % len(JUMP_ARC)] if first.action == "jump" else first.y
        out.append(first.replace(x=X_POSITIONS[cell], facing=facing, y=y))
        cell, facing = step_motion(cell, facing)
    return out


def random_clip(rng: np.random.Generator, n_frames: int, clip_id: str = "clip") -> Clip:
    """One clip with every choice drawn from `rng` (uniform over the world's values)."""
    names = list(NAMES)
    name = names[int(rng.integers(len(names)))]
    first = SceneState(
        place=PLACES[int(rng.integers(len(PLACES)))], time=TIMES[int(rng.integers(len(TIMES)))], name=name,
        gender=NAMES[name], species=SPECIES[int(rng.integers(len(SPECIES)))],
        action=CLIP_ACTIONS[int(rng.integers(len(CLIP_ACTIONS)))],
        x=X_POSITIONS[int(rng.integers(len(X_POSITIONS)))], y=DEFAULT_Y, facing=FACINGS[int(rng.integers(2))],
        marking=MARKINGS[int(rng.integers(len(MARKINGS)))],
        accessory=ACCESSORIES[1 + int(rng.integers(len(ACCESSORIES) - 1))], layout=int(rng.integers(N_LAYOUTS)))
    phase = int(rng.integers(len(JUMP_ARC))) if first.action == "jump" else 0
    states = clip_states(first, n_frames, phase)
    return Clip(clip_id, explicit_caption(first), states, phase)


def make_clips(n: int, split: str = "test", n_frames: int = 32, start: int = 0) -> list[Clip]:
    """Clips start .. start+n-1 of a split ("train", "val" or "test"); clip k is the same whatever n and start are."""
    if split not in CLIP_SPLITS:
        raise ValueError(f"split must be one of {tuple(CLIP_SPLITS)}, got {split!r}")
    for name, v, lo in (("n", n, 0), ("start", start, 0), ("n_frames", n_frames, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    root = np.random.SeedSequence(CLIP_SEED, spawn_key=(CLIP_SPLITS[split],))
    out = []
    for k in range(start, start + n):
        rng = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(CLIP_SPLITS[split], k)))
        out.append(random_clip(rng, n_frames, f"{split}-{k:05d}"))
    return out


def render_clips(clips: Sequence[Clip]) -> torch.Tensor:
    """(B, N, 3, 32, 32) ground-truth frames of clips of equal length."""
    from acdc_lib.toyworld.render import render_states

    if not clips:
        raise ValueError("render_clips needs at least one clip")
    n = {len(c) for c in clips}
    if len(n) != 1:
        raise ValueError(f"clips must have equal lengths to stack, got {sorted(n)}")
    images = render_states([s for c in clips for s in c.states]).images
    return images.view(len(clips), n.pop(), *images.shape[1:])


def true_motion(clips: Sequence[Clip]) -> dict[str, torch.Tensor]:
    """{"x_cell": (B, N) long, "facing": (B, N) long (left 0, right 1)} of the clips' ground truth."""
    cells = torch.tensor([[min(range(len(X_POSITIONS)), key=lambda k: abs(X_POSITIONS[k] - s.x)) for s in c.states]
                          for c in clips])
    facing = torch.tensor([[FACINGS.index(s.facing) for s in c.states] for c in clips])
    return {"x_cell": cells, "facing": facing}


def physics_next(cells: torch.Tensor, facing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised `step_motion`: next (cell, facing) of long tensors (facing: left 0, right 1)."""
    step = facing * 2 - 1
    nxt = cells + step
    out = (nxt < 0) | (nxt >= len(X_POSITIONS))
    return torch.where(out, cells, nxt), torch.where(out, 1 - facing, facing)


class ToyClipTruth:
    """The truth of a set of clips, for the model-agnostic video experiment (`acdc_lib.experiment.video`).

    Args:
        clips: the clips (equal lengths).
    Attributes:
        prompts: one prompt per clip.
        frames: (B, N, 3, 32, 32) ground-truth renders.
        labels: {probe head: (B, N) long} true labels of the heads the evaluator reads on videos
            (species, place, time, marking, accessory, layout, x_cell, facing).
        physics: `physics_next`, the clips' motion rule on (cell, facing) tensors.
    """

    label = "Ground-truth clips"

    def __init__(self, clips: Sequence[Clip]):
        from acdc_lib.toyworld.models import state_labels

        if not clips:
            raise ValueError("ToyClipTruth needs at least one clip")
        self.clips = list(clips)
        self.prompts = [c.prompt for c in self.clips]
        self.frames = render_clips(self.clips)
        B, N = self.frames.shape[:2]
        labels = state_labels([s for c in self.clips for s in c.states])
        keep = ("species", "place", "time", "marking", "accessory", "layout", "x_cell", "facing")
        self.labels = {k: labels[k].view(B, N) for k in keep}
        self.physics = physics_next

    @classmethod
    def from_split(cls, n: int, split: str = "test", n_frames: int = 32, start: int = 0) -> "ToyClipTruth":
        """The truth of clips start .. start+n-1 of a split (`make_clips`)."""
        return cls(make_clips(n, split, n_frames, start))

    def tokens(self, arm) -> torch.Tensor:
        """(B, N, n) the ARM's tokens of the true frames (its encoder E of Eq. 6)."""
        B, N = self.frames.shape[:2]
        with torch.no_grad():
            codes = torch.cat([arm.encode(self.frames.flatten(0, 1)[i:i + 512])
                               for i in range(0, B * N, 512)])
        return codes.view(B, N, -1)
