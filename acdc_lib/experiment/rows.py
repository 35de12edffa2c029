"""Running the story experiment's rows (the paper's Sec. 4.1 / Table 1), resumable and shardable.

Five rows over the same stories and per-story seeds (so the ARM rows share their random draws):

    dm_only      each frame generated from its raw sentence alone by a text-to-image model (the paper's
                 Stable Diffusion v1.5 row)
    arm          the ARM alone (Eq. 1, no correction)
    acdc_rules   ARM + ACDC on every frame, corrector prompts from the rule-based memory (Eq. 2-3)
    acdc_nomem   ARM + ACDC on every frame, corrector prompts = the raw sentences
    acdc_llm     ARM + ACDC on every frame, corrector prompts from an LLM memory (the paper's)
    arm_true_ctx the ARM with the ground-truth earlier frames as its context (an oracle only a world
                 with ground-truth frames has): frame i's error here is the ARM's own, so the
                 per-frame gap to `arm` is the error it inherited from its earlier frames
    storygpt_v*  a whole-story generator that is neither ARM nor corrector (StoryGPT-V and its ablations;
                 `generator_rows={row: generator}`, components of kind "story_generator")

`run_experiment` writes every finished story at once to <out_dir>/<row>/<story_id>.npz (uint8 frames)
and .json (seed, prompts, memory source; written last, it marks the story done); a rerun skips what
is there, so a killed run resumes, and sets aside (<name>.damaged) and recomputes any story whose
files are damaged or partial (`check_story_files` says what is wrong, a `DamagedRunFileWarning` what
was done). With `distributed=True` each accelerate process runs its share of the stories into the
same folder.

A frame that went wrong in the loop (NaN, Inf or a constant frame, see `acdc_lib.loop.frame_faults`) is
recorded in the story's .json under "bad_frames" (frame, stage, reason, action); a story it stopped keeps
the frames before it in its .npz, counts as done, and is left out of the scores (`stopped_stories`).
"""
from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH
from acdc_lib.io import atomic_write_bytes, atomic_write_json, leftover_target, move_aside
from acdc_lib.loop import run_stories, story_generators, story_seed
from acdc_lib.types import LoopConfig, Story, TextToImage

# --------------------------------------------------------------------------------------------
# Rows and configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """One row of the table: how its frames are made (kind "dm", "loop", "true_context" or "generator": a
    story generator, `generator_rows[<the row's name>]`) and its label."""

    label: str
    kind: str
    correct_frames: str | int = "none"
    use_memory: bool = False

    def needs(self) -> list[str]:
        """The components `run_experiment` must be given for this row."""
        return ((["arm"] if self.kind in ("loop", "true_context") else []) + (["text_to_image"] if self.kind == "dm"
                else []) + (["corrector"] if self.correct_frames != "none" else [])
                + (["memory"] if self.use_memory else []) + (["reference"] if self.kind == "true_context" else [])
                + (["generator_rows"] if self.kind == "generator" else []))


ROWS: dict[str, RowSpec] = {
    "dm_only": RowSpec("DM only (raw sentence per frame)", "dm"),
    "arm": RowSpec("ARM alone", "loop"),
    "acdc_rules": RowSpec("ARM + ACDC, rule memory", "loop", "all", True),
    "acdc_nomem": RowSpec("ARM + ACDC, no memory", "loop", "all", False),
    "acdc_llm": RowSpec("ARM + ACDC, LLM memory", "loop", "all", True),
    "arm_true_ctx": RowSpec("ARM, true earlier frames (oracle)", "true_context"),
    # Table 2's "ACDC #k" (the first k frames corrected) and other fixed or run-time policies
    **{f"acdc{k}_{m}": RowSpec(f"ARM + ACDC #{k}, {label}", "loop", k, m != "nomem")
       for k in (2, 4) for m, label in (("rules", "rule memory"), ("nomem", "no memory"), ("llm", "LLM memory"))},
    "acdc_every2_rules": RowSpec("ARM + ACDC every 2nd frame, rule memory", "loop", "every2", True),
    "acdc_every3_rules": RowSpec("ARM + ACDC every 3rd frame, rule memory", "loop", "every3", True),
    "acdc_adaptive_rules": RowSpec("ARM + ACDC where the drift score exceeds the threshold, rule memory", "loop",
                                   "adaptive", True),
    # StoryGPT-V (a trained story generator: a character-aware LDM conditioned by an LM through [IMG] tokens) and
    # its ablations: its LDM fine-tuned without the attention loss L_reg; its LM aligned to the text embedding
    # instead of the fused one; its LM reading captions only, no earlier frames
    "storygpt_v": RowSpec("StoryGPT-V", "generator"),
    "storygpt_v_noreg": RowSpec("StoryGPT-V without L_reg", "generator"),
    "storygpt_v_text": RowSpec("StoryGPT-V, LM aligned to the text embedding", "generator"),
    "storygpt_v_caption": RowSpec("StoryGPT-V, caption-only input", "generator"),
}
DEFAULT_ROWS = ("dm_only", "arm", "acdc_rules", "acdc_nomem", "arm_true_ctx")
GENERATION_FIELDS = ("strength", "guidance_scale", "num_inference_steps", "base_seed", "image_size", "drift_threshold")


@dataclass
class ExperimentConfig:
    """Settings of the story experiment. Correction defaults are the paper's (DDIM, CFG 7.5, t' = 0.5).

    Args:
        rows: names from ROWS, in table order.
        strength, guidance_scale, num_inference_steps: SDEdit's t', CFG scale, N (dm_only runs all N steps).
        batch_size: stories per batched call (results do not depend on it: one generator pair per story).
        base_seed: story k's seed is `story_seed(base_seed, k)` (k = its index in the story list).
        image_size: side of dm_only frames (None: the corrector's default).
        n_bootstrap: resamples for per-story means; n_bootstrap_set: for FID / F1 (recomputed per resample).
        confidence: level of every interval.
        drift_threshold: the adaptive row's threshold on the corrector's drift score (see `LoopConfig`).
    """

    rows: tuple[str, ...] = DEFAULT_ROWS
    strength: float = PAPER_STRENGTH
    guidance_scale: float = PAPER_GUIDANCE_SCALE
    num_inference_steps: int = PAPER_NUM_INFERENCE_STEPS
    batch_size: int = 16
    base_seed: int = 0
    image_size: int | None = None
    n_bootstrap: int = 2000
    n_bootstrap_set: int = 200
    confidence: float = 0.95
    drift_threshold: float | None = None

    def __post_init__(self):
        bad = [r for r in self.rows if r not in ROWS]
        if bad or not self.rows:
            raise ValueError(f"unknown rows {bad or self.rows!r}; allowed: {list(ROWS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        self.rows = tuple(self.rows)


# --------------------------------------------------------------------------------------------
# Per-story files (atomic) and resume
# --------------------------------------------------------------------------------------------
def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.detach().cpu().float() * 255.0).round().to(torch.uint8).numpy()  # frames in [0, 1], checked


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class DamagedRunFileWarning(UserWarning):
    """A run folder held a damaged or partial file (a killed run, a full disk, an edit); it was set aside or removed."""


_RECORD_FIELDS = "story_id, row, seed, sentences, prompts, memory_source"


def _read_record(path: Path) -> dict | str:
    """The story record in `path`, or why it is not one (a reason that names no path)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if not text.strip():
        return "empty"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not valid JSON, e.g. cut short ({e})"
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not a story record (an object with {_RECORD_FIELDS})"
    bad = [k for k, ok in (("seed", isinstance(rec.get("seed"), int) and not isinstance(rec.get("seed"), bool)),
                           ("sentences", isinstance(rec.get("sentences"), list)
                            and all(isinstance(t, str) for t in rec["sentences"]))) if not ok]
    if bad:
        return f"not a story record: {bad} missing or of the wrong type (a record has {_RECORD_FIELDS})"
    return rec


def _refuse_other_run(path: Path, rec: dict, story: Story, seed: int) -> None:
    """Raise when the record `rec` in `path` was written for another story, row or seed (another run)."""
    other = {k: (rec[k], want) for k, want in (("story_id", story.story_id), ("row", path.parent.name))
             if k in rec and rec[k] != want}
    if rec["seed"] != seed or rec["sentences"] != list(story.sentences) or other:
        raise ValueError(f"{path} was written for seed {rec['seed']} and sentences {rec['sentences'][:1]}..."
                         f"{f' and {other} (stored, here)' if other else ''}, but story {story.story_id!r} here has "
                         f"seed {seed} and {story.sentences[:1]}...; use a fresh out_dir or the same story list in "
                         f"the same order")


def _frames_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the "frames" array of an .npz, read from its headers only (no frame is decompressed).

    A file cut short loses the zip directory at its end, so this catches truncation; damage inside the
    compressed data shows only when `load_frames` reads the frames.
    """
    with zipfile.ZipFile(path) as z, z.open("frames.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _inspect(row_dir: Path, story: Story, seed: int | None,
             frame_shape: tuple[int, ...] | None) -> tuple[str, tuple[int, ...] | None]:
    """("done", (C, H, W)), ("missing", None) or (what is wrong, None); see `check_story_files`."""
    sid = story.story_id
    rec_path, npz_path = row_dir / f"{sid}.json", row_dir / f"{sid}.npz"
    has_rec, has_npz = rec_path.exists(), npz_path.exists()
    if not has_rec and not has_npz:
        return "missing", None
    problems, shape, n_frames = [], None, len(story)
    if has_rec:
        rec = _read_record(rec_path)
        if isinstance(rec, str):
            problems.append(f"{rec_path.name} is {rec}")
        else:
            if seed is not None:
                _refuse_other_run(rec_path, rec, story, seed)
            n_frames = _stopped_at(rec, n_frames)
    else:  # the frames are written first: a run stopped between the two writes
        problems.append(f"{rec_path.name} is missing, so {npz_path.name} was never marked done")
    if has_npz:
        try:
            shape, dtype = _frames_header(npz_path)
        except Exception as e:  # zipfile.BadZipFile, KeyError (no frames), ValueError (bad header), OSError
            problems.append(f"{npz_path.name} is not a readable frames file ({type(e).__name__}: {e})")
        else:
            want = (n_frames, *(frame_shape or ()))
            if dtype != np.uint8 or len(shape) != 4 or shape[:len(want)] != want:
                problems.append(f"{npz_path.name} holds {dtype} frames of shape {shape}; this run's are uint8 "
                                f"({', '.join(map(str, want))}{', C, H, W' if frame_shape is None else ''})")
    else:  # a record without its frames: only a deletion or a lost file leaves this
        problems.append(f"{npz_path.name} is missing")
    return ("; ".join(problems), None) if problems else ("done", tuple(shape[1:]))


def _stopped_at(rec: dict, n_frames: int) -> int:
    """Frames a story's .npz holds: the index of the frame that stopped it (its record says), else all."""
    stops = [f.get("frame") for f in rec.get("bad_frames") or () if isinstance(f, dict) and f.get("action") == "stopped"]
    return stops[0] if stops and isinstance(stops[0], int) and 0 <= stops[0] < n_frames else n_frames


def bad_frames(out_dir: str | Path, row: str, stories: Sequence[Story]) -> dict[str, list[dict]]:
    """{story_id: the frames that went wrong, as recorded} for the stories of `row` that had any.

    Each entry is {"frame" (0-based), "stage" ("decode" or "correction"), "reason", "action" ("stopped" or
    "uncorrected")}. Reads the records of finished stories only.
    """
    out = {}
    for s in stories:
        path = Path(out_dir) / row / f"{s.story_id}.json"
        rec = _read_record(path) if path.exists() else None
        if isinstance(rec, dict) and rec.get("bad_frames"):
            out[s.story_id] = list(rec["bad_frames"])
    return out


def stopped_stories(out_dir: str | Path, row: str, stories: Sequence[Story]) -> dict[str, dict]:
    """{story_id: the fault that stopped it} for the stories of `row` that a frame gone wrong ended early."""
    return {sid: next(f for f in faults if f.get("action") == "stopped")
            for sid, faults in bad_frames(out_dir, row, stories).items()
            if any(f.get("action") == "stopped" for f in faults)}


def check_story_files(row_dir: str | Path, story: Story, seed: int | None = None,
                      frame_shape: tuple[int, ...] | None = None) -> str:
    """Whether a story's files in a row folder are complete: "done", "missing" (none there) or what is wrong.

    Reads the record (.json) whole and only the headers of the frames (.npz), so it is cheap on a large
    run; it changes nothing. Wrong is: either file absent, an empty, cut or non-record .json, an .npz
    that is not a zip with a "frames" array, or frames that are not uint8 (N, C, H, W), N = len(story)
    (or, for a story a bad frame stopped, the frames before it).

    Args:
        row_dir: <out_dir>/<row> as written by `run_experiment`.
        story: the story; its id names the files, its sentences must match the record's.
        seed: the story's seed in this run; a record of another seed, other sentences, another story id
            or another row raises a ValueError (it is another run's, not a damaged file). None: not checked.
        frame_shape: (C, H, W) the frames must have; None: any.
    Returns:
        "done", "missing", or a reason naming each bad file, e.g. "s1.json is empty".
    """
    return _inspect(Path(row_dir), story, seed, frame_shape)[0]


def _set_aside(row_dir: Path, story_id: str, reason: str) -> None:
    """Move a story's files to <name>.damaged (kept, never deleted) and warn, naming them and `reason`."""
    moved = []
    for ext in ("json", "npz"):  # the record first: once it is gone the story no longer counts as done
        path = row_dir / f"{story_id}.{ext}"
        if path.exists():
            moved.append(f"{path.name} -> {move_aside(path).name}")
    warnings.warn(f"{row_dir}: story {story_id!r} is incomplete or damaged ({reason}); moved {', '.join(moved)} "
                  f"and computing the story again (delete the .damaged files once you no longer need them)",
                  DamagedRunFileWarning, stacklevel=3)


def _remove_leftovers(folder: Path, names: Sequence[str]) -> None:
    """Remove, with a warning, the temporary files that killed writes of the files `names` left in `folder`.

    Only of these files: in a distributed run another process may be writing its own stories'
    temporary files in the same folder right now.
    """
    names = set(names)
    for path in sorted(folder.iterdir()):
        if leftover_target(path.name) in names:
            path.unlink(missing_ok=True)
            warnings.warn(f"removed {path}: the temporary file of a write of {leftover_target(path.name)} that "
                          f"was stopped before it finished (it never held a finished result)",
                          DamagedRunFileWarning, stacklevel=3)


def _resume(row_dir: Path, stories: Sequence[Story], seeds: dict[str, int]) -> tuple[list[Story], dict]:
    """Stories of `stories` to compute in `row_dir` (damaged files set aside) and {story_id: (C, H, W)} of the rest.

    Every story is inspected before anything moves, so a record of another run stops the call with
    the folder as it was.
    """
    states = {s.story_id: _inspect(row_dir, s, seeds[s.story_id], None) for s in stories}
    _remove_leftovers(row_dir, [f"{s.story_id}.{ext}" for s in stories for ext in ("json", "npz")])
    for sid, (state, _) in states.items():
        if state not in ("done", "missing"):
            _set_aside(row_dir, sid, state)
    return ([s for s in stories if states[s.story_id][0] != "done"],
            {sid: shape for sid, (state, shape) in states.items() if state == "done"})


def _missing(out_dir: str | Path, row: str, stories: Sequence[Story]) -> Path:
    """<out_dir>/<row> when every story's files are there and readable; else a ValueError naming each to rerun."""
    row_dir = Path(out_dir) / row
    states = {s.story_id: _inspect(row_dir, s, None, None) for s in stories}
    bad = {sid: ("not run yet" if state == "missing" else state) for sid, (state, _) in states.items()
           if state != "done"}
    shapes = [shape for state, shape in states.values() if state == "done"]
    if len(set(shapes)) > 1:  # the most common frame size is taken to be the row's
        common = max(dict.fromkeys(shapes), key=shapes.count)
        bad.update({sid: f"{sid}.npz holds frames of size {shape}, the row's others {common}"
                    for sid, (state, shape) in states.items() if state == "done" and shape != common})
    if bad:
        ids = [s.story_id for s in stories if s.story_id in bad]  # story order
        why = "; ".join(f"{sid}: {bad[sid]}" for sid in ids[:5]) + (f"; {len(ids) - 5} more" if len(ids) > 5 else "")
        raise ValueError(f"row {row!r} in {Path(out_dir)} lacks {len(ids)} of {len(stories)} stories ({why}); "
                         f"stories to rerun: {ids}. Run run_experiment again with the same stories and settings: it "
                         f"sets damaged files aside and computes exactly these")
    return row_dir


def load_frames(out_dir: str | Path, row: str, stories: Sequence[Story]) -> torch.Tensor:
    """(S, N, C, H, W) float frames in [0, 1] of `row` as written by `run_experiment`.

    Raises a ValueError naming the stories to rerun when files are missing or damaged, and one naming
    the stories a frame gone wrong stopped (they hold fewer than N frames; see `stopped_stories`).
    """
    row_dir = _missing(out_dir, row, stories)
    stopped = stopped_stories(out_dir, row, stories)
    if stopped:
        why = "; ".join(f"{sid}: frame {f.get('frame', -1) + 1} ({f.get('stage')}): {f.get('reason')}"
                        for sid, f in list(stopped.items())[:5])
        raise ValueError(f"row {row!r} in {Path(out_dir)}: {len(stopped)} of {len(stories)} stories were stopped by a "
                         f"frame that went wrong ({why}); they hold only the frames before it. Load the other "
                         f"stories, or rerun the row with on_bad_frame='uncorrected' to go on from the ARM's frame")
    arrays = []
    for s in stories:
        path = row_dir / f"{s.story_id}.npz"
        try:
            with np.load(path) as z:
                arrays.append(z["frames"])
        except Exception as e:  # damage inside the compressed data: zlib.error, BadZipFile (CRC), EOFError, ...
            raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); move it aside (rename it to "
                             f"{path.name}.damaged) and run run_experiment again with the same stories and "
                             f"settings: it computes story {s.story_id!r} again") from e
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def _check_config(out_dir: Path, config: ExperimentConfig) -> None:
    path, mine = out_dir / "config.json", {k: getattr(config, k) for k in GENERATION_FIELDS}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not readable JSON ({type(e).__name__}: {e}); it records the settings the "
                             f"folder's frames were made with: restore it, or delete it to have this call's settings "
                             f"written (only if they are the ones used), or use a fresh out_dir") from e
        if not isinstance(old, dict):
            raise ValueError(f"{path} holds a JSON {type(old).__name__}, not the run's settings {list(mine)}; restore "
                             f"it, or delete it to have this call's settings written, or use a fresh out_dir")
        diff = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{path} was written with other settings {diff} (stored, now); use a fresh out_dir")
    else:
        atomic_write_json(path, mine)


# --------------------------------------------------------------------------------------------
# Running the rows
# --------------------------------------------------------------------------------------------
def _dm_only(stories: Sequence[Story], text_to_image: TextToImage, seeds: Sequence[int], config: ExperimentConfig,
             device) -> torch.Tensor:
    """(B, N, C, H, W): frame i of story b from sentence i alone, noise from story b's corrector stream."""
    gens = [story_generators(s, device)[1] for s in seeds]
    frames = []
    for i in range(len(stories[0])):
        images = text_to_image.generate([s.sentences[i] for s in stories], config.image_size, config.image_size,
                                    guidance_scale=config.guidance_scale,
                                    num_inference_steps=config.num_inference_steps, generators=gens)
        if images.ndim != 4 or images.shape[0] != len(stories) or not (0 <= images.min() and images.max() <= 1):
            raise ValueError(f"text_to_image.generate returned {tuple(images.shape)}; expected ({len(stories)}, C, H, W) "
                             f"in [0, 1]")
        frames.append(images.detach().cpu())
    return torch.stack(frames, 1)


def arm_true_context(stories: Sequence[Story], arm, reference: Callable[[Story], torch.Tensor],
                      seeds: Sequence[int], device) -> torch.Tensor:
    """(B, N, C, H, W): frame i of story b sampled by the ARM from u^{1:i} and E(true frames 1..i-1).

    Each story draws from its ARM generator (`story_generators(seed)[0]`), as in the `arm` row, and
    every frame draws the same number of codes, so frame 1 equals the `arm` row's frame 1 and later
    frames differ from it only through the context: the paired per-frame gap is the inherited error.
    """
    ref = torch.stack([reference(s).to(device) for s in stories])                 # (B, N, C, H, W)
    B, N = ref.shape[:2]
    context = torch.stack([arm.encode(ref[:, i]) for i in range(N)], 1)          # (B, N, n) true v^1..v^N
    gens = [story_generators(s, device)[0] for s in seeds]
    frames = []
    for i in range(N):
        tokens = arm.generate([s.sentences[: i + 1] for s in stories], context[:, :i], gens)
        frames.append(arm.decode(tokens).detach().cpu())
    return torch.stack(frames, 1)


def _generator_row(generator, stories: Sequence[Story], seeds: Sequence[int], device) -> list[torch.Tensor]:
    """B (N, C, H, W) frames of a story generator; story b draws from its corrector-side stream (as dm_only)."""
    frames = generator.generate(list(stories), [story_generators(s, device)[1] for s in seeds])
    if len(frames) != len(stories) or any(f.ndim != 4 or f.shape[0] != len(s) for f, s in zip(frames, stories)):
        raise ValueError(f"story generator {type(generator).__name__} returned {[tuple(f.shape) for f in frames]}; "
                         f"expected one (N, C, H, W) tensor per story with N = {[len(s) for s in stories]}")
    return [f.detach().cpu() for f in frames]


def _compute_batch(spec: RowSpec, batch: Sequence[Story], seeds: Sequence[int], parts: dict, config: ExperimentConfig,
                   device, on_bad_frame: str = "stop", row: str | None = None
                   ) -> tuple[list[torch.Tensor], list | None, list | None, list]:
    """B (n, C, H, W) frame tensors of one row for a batch (n = N, or fewer for a story a bad frame stopped),
    with the corrector prompts and memory sources (loop rows) and each story's bad frames as records.

    Args:
        spec: the row; batch, seeds: its stories and their seeds; parts: the components by name
            ("arm", "corrector", "memory", "reference", "text_to_image"); config, device, on_bad_frame: as in
            `run_experiment`.
    """
    none = [[] for _ in batch]
    if spec.kind == "dm":
        return list(_dm_only(batch, parts["text_to_image"], seeds, config, device)), None, None, none
    if spec.kind == "true_context":
        return list(arm_true_context(batch, parts["arm"], parts["reference"], seeds, device)), None, None, none
    if spec.kind == "generator":
        return _generator_row(parts["generator_rows"][row], batch, seeds, device), None, None, none
    loop_cfg = LoopConfig(correct_frames=spec.correct_frames, strength=config.strength,
                          guidance_scale=config.guidance_scale, num_inference_steps=config.num_inference_steps,
                          use_memory=spec.use_memory, drift_threshold=config.drift_threshold)
    out = run_stories(batch, parts["arm"], parts["corrector"], parts["memory"] if spec.use_memory else None, loop_cfg,
                      seeds=seeds, device=device, on_bad_frame=on_bad_frame)
    # a story stopped at its first frame has none: an empty (0, C, H, W) stack of the bad frame's size
    frames = [r.final_images() if r.frames else r.stopped.image.new_zeros((0, *r.stopped.image.shape))
              for r in out.stories]
    return (frames, [[f.prompt for f in r.frames] for r in out.stories],
            [r.memory.source if r.memory else None for r in out.stories],
            [[f.to_record() for f in r.faults()] for r in out.stories])


def run_experiment(stories: Sequence[Story], out_dir: str | Path, *, arm=None, corrector=None, memory=None,
                   reference: Callable[[Story], torch.Tensor] | None = None,
                   config: ExperimentConfig | None = None, device: str | torch.device = "cpu",
                   progress: bool = True, text_to_image: TextToImage | None = None,
                   distributed: bool = False, on_bad_frame: str = "stop",
                   generator_rows: dict | None = None) -> dict[str, list[str]]:
    """Generate every row's frames for `stories`, batched, writing each story's files as its batch ends.

    Stories whose files are complete are skipped (resume); files from another story list or other
    settings are refused (ValueError). A story with a damaged or partial file (an empty or cut .json,
    one that is no record, an unreadable .npz or one with frames of another length, size or dtype,
    either file without the other) has its files renamed to <name>.damaged and is computed again, with
    a `DamagedRunFileWarning`; temporary files of a killed write are removed, with the same warning.
    Nothing else is recomputed. Args:
        stories: S stories of equal length N.
        out_dir: results folder; <out_dir>/<row>/<story_id>.{npz,json} and <out_dir>/config.json.
        arm: ARM protocol (rows arm, acdc_*, arm_true_ctx); corrector: Corrector (acdc_*).
        memory: the memory of acdc_rules (e.g. RuleMemory(vocabulary)).
        reference: story -> (N, C, H, W) ground-truth frames in [0, 1] (row arm_true_ctx), e.g.
            `GroundTruth.reference_images`.
        text_to_image: the TextToImage of row dm_only (default: the corrector, when it implements it,
            as the toy DM and `PipelineCorrector` do).
        distributed: run only this accelerate process's share of the story batches (`PartialState`;
            launch with `accelerate launch`); seeds follow each story's index in `stories` and batches
            its place, so the files equal those of one process. Every process waits for the others at
            the end.
        on_bad_frame: a story whose corrected frame went wrong (NaN, Inf, constant) is stopped ("stop": its
            .npz keeps the frames before it) or goes on from the ARM's frame ("uncorrected"); either way its
            .json lists the frame under "bad_frames" (see `acdc_lib.loop.run_stories`).
        generator_rows: {row: story generator} for the generator rows (storygpt_v ...): an object with
            `generate(stories, generators)` -> one (N, C, H, W) tensor in [0, 1] per story.
    Returns:
        {row: story ids computed by this call (this process's, when distributed)}.
    """
    config = config or ExperimentConfig()
    if text_to_image is None and isinstance(corrector, TextToImage):
        text_to_image = corrector
    given = {"arm": arm, "corrector": corrector, "memory": memory, "reference": reference,
             "text_to_image": text_to_image, "generator_rows": generator_rows}
    for row in config.rows:  # e.g. acdc_rules without a memory would silently equal acdc_nomem
        missing = [k for k in ROWS[row].needs() if given[k] is None
                   or (k == "generator_rows" and given[k].get(row) is None)]
        if missing:
            raise ValueError(f"row {row!r} needs {missing}; pass them or leave the row out of config.rows")
    seeds = {s.story_id: story_seed(config.base_seed, k) for k, s in enumerate(stories)}
    if len(seeds) != len(stories) or len({len(s) for s in stories}) != 1:
        raise ValueError(f"stories need unique ids and one length; got {len(stories)} stories, {len(seeds)} ids, "
                         f"lengths {sorted({len(s) for s in stories})}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not distributed:  # in a distributed run another process may be writing config.json right now
        _remove_leftovers(out_dir, ["config.json"])
    _check_config(out_dir, config)
    state = _process_state() if distributed else None
    # Batches are fixed by the stories' places in the list, and a resumed or sharded run computes whole
    # batches: a story's frames then come from the same batched float operations as in one uninterrupted
    # run (batched kernels round the last bits differently for other batch compositions, and a flipped
    # bit can change a re-encoded code and every later frame).
    batches = [list(stories[b0:b0 + config.batch_size]) for b0 in range(0, len(stories), config.batch_size)]
    if state is not None:
        batches = process_share(batches, state)
    mine = [s for b in batches for s in b]
    computed: dict[str, list[str]] = {}
    for row in config.rows:
        spec, row_dir = ROWS[row], out_dir / row
        row_dir.mkdir(exist_ok=True)
        todo_stories, done_shapes = _resume(row_dir, mine, seeds)
        todo = {s.story_id for s in todo_stories}
        pending = lambda: [b for b in batches if any(s.story_id in todo for s in b)]  # noqa: E731
        queue = pending()
        if not queue and len(set(done_shapes.values())) > 1:
            # Finished files of different frame sizes and nothing to compute that would tell the row's
            # size: compute a batch holding the rarest size (the likeliest damaged one) to learn it.
            sizes = list(done_shapes.values())
            rare = min(dict.fromkeys(sizes), key=sizes.count)
            queue = [next(b for b in batches if any(done_shapes[s.story_id] == rare for s in b))]
        frame_shape = None
        computed[row] = []
        with tqdm(total=len(todo), desc=row, unit="story", disable=not progress) as bar:
            while queue:
                batch = queue[0]
                bseeds = [seeds[s.story_id] for s in batch]
                frames, prompts, sources, faults = _compute_batch(spec, batch, bseeds, given, config, device,
                                                                  on_bad_frame, row=row)
                if frame_shape is None:  # the first frames this call makes set the row's frame size
                    frame_shape = tuple(frames[0].shape[1:])
                    for s in mine:
                        if s.story_id in done_shapes and done_shapes[s.story_id] != frame_shape:
                            _set_aside(row_dir, s.story_id, f"{s.story_id}.npz holds frames of size "
                                       f"{done_shapes[s.story_id]}; this run's are {frame_shape}")
                            todo.add(s.story_id)
                    bar.total = len(todo)
                for k, s in enumerate(batch):  # frames first, the .json last: it marks the story done
                    if s.story_id not in todo:
                        continue  # finished before: its files hold this batch's bytes already
                    _atomic_npz(row_dir / f"{s.story_id}.npz", frames=_to_uint8(frames[k]))
                    atomic_write_json(row_dir / f"{s.story_id}.json", {
                        "story_id": s.story_id, "row": row, "seed": bseeds[k], "sentences": list(s.sentences),
                        "prompts": prompts[k] if prompts else None, "memory_source": sources[k] if sources else None,
                        **({"bad_frames": faults[k]} if faults[k] else {})})
                    todo.discard(s.story_id)
                    computed[row].append(s.story_id)
                    bar.update(1)
                queue = pending()
    if state is not None:  # the summary reads every process's files: wait until all are written
        state.wait_for_everyone()
    return computed


def _process_state():
    from accelerate import PartialState

    # cpu=True where no GPU is visible, so several CPU processes form a gloo group (a GPU node uses NCCL)
    return PartialState(cpu=not torch.cuda.is_available())


def process_share(items: Sequence, state=None) -> list:
    """This accelerate process's contiguous share of `items` (all of them in a single process).

    Args:
        items: the full list, in the same order in every process.
        state: an accelerate `PartialState` (default: the current one).
    """
    state = state if state is not None else _process_state()
    with state.split_between_processes(list(items)) as share:
        return list(share)



def sweep_label(strength: float) -> str:
    """Row name of ACDC (rule memory) at SDEdit strength t' in a sweep table."""
    return f"acdc_rules_t{strength:g}"


def strength_sweep(stories: Sequence[Story], out_root: str | Path, strengths: Sequence[float], *, arm, corrector,
                   memory, config: ExperimentConfig, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict[float, Path]:
    """Run the acdc_rules row at each SDEdit strength t' into out_root/t<t'> (resumable like run_experiment).

    Returns {t': folder}. The stories keep their seeds (story k: story_seed(base_seed, k)), so the
    first k stories of a larger run draw the same ARM tokens here.
    """
    bad = [s for s in strengths if isinstance(s, (bool, str)) or not isinstance(s, (int, float)) or not 0.0 < s <= 1.0]
    if bad or not strengths:
        raise ValueError(f"strengths must be a non-empty list of t' in (0, 1], got {list(strengths)!r}")
    dirs = {}
    for s in strengths:
        d = Path(out_root) / f"t{s:g}"
        cfg = ExperimentConfig(**{**asdict(config), "rows": ("acdc_rules",), "strength": float(s)})
        run_experiment(stories, d, arm=arm, corrector=corrector, memory=memory, config=cfg, device=device,
                       progress=progress)
        dirs[float(s)] = d
    return dirs


