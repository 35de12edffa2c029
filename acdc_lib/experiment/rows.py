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

`run_experiment` writes every finished story at once to <out_dir>/<row>/<story_id>.npz (uint8 frames)
and .json (seed, prompts, memory source); a rerun skips what is there, so a killed run resumes. With
`distributed=True` each accelerate process runs its share of the stories into the same folder.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH
from acdc_lib.io import atomic_write_bytes, atomic_write_json
from acdc_lib.loop import run_stories, story_generators, story_seed
from acdc_lib.types import LoopConfig, Story, TextToImage

# --------------------------------------------------------------------------------------------
# Rows and configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """One row of the table: how its frames are made (kind "dm", "loop" or "true_context") and its label."""

    label: str
    kind: str
    correct_frames: str = "none"
    use_memory: bool = False

    def needs(self) -> list[str]:
        """The components `run_experiment` must be given for this row."""
        return ((["arm"] if self.kind in ("loop", "true_context") else []) + (["text_to_image"] if self.kind == "dm"
                else []) + (["corrector"] if self.correct_frames != "none" else [])
                + (["memory"] if self.use_memory else []) + (["reference"] if self.kind == "true_context" else []))


ROWS: dict[str, RowSpec] = {
    "dm_only": RowSpec("DM only (raw sentence per frame)", "dm"),
    "arm": RowSpec("ARM alone", "loop"),
    "acdc_rules": RowSpec("ARM + ACDC, rule memory", "loop", "all", True),
    "acdc_nomem": RowSpec("ARM + ACDC, no memory", "loop", "all", False),
    "acdc_llm": RowSpec("ARM + ACDC, LLM memory", "loop", "all", True),
    "arm_true_ctx": RowSpec("ARM, true earlier frames (oracle)", "true_context"),
}
DEFAULT_ROWS = ("dm_only", "arm", "acdc_rules", "acdc_nomem", "arm_true_ctx")
GENERATION_FIELDS = ("strength", "guidance_scale", "num_inference_steps", "base_seed", "image_size")


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


def _done(row_dir: Path, story: Story, seed: int) -> bool:
    """Whether the story's files exist (the .json is written last); refuses files of another run."""
    rec_path = row_dir / f"{story.story_id}.json"
    if not rec_path.exists() or not (row_dir / f"{story.story_id}.npz").exists():
        return False
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    if rec["seed"] != seed or rec["sentences"] != list(story.sentences):
        raise ValueError(f"{rec_path} was written for seed {rec['seed']} and sentences {rec['sentences'][:1]}..., "
                         f"but story {story.story_id!r} here has seed {seed} and {story.sentences[:1]}...; "
                         f"use a fresh out_dir or the same story list in the same order")
    return True


def _missing(out_dir: str | Path, row: str, stories: Sequence[Story]) -> Path:
    row_dir = Path(out_dir) / row
    missing = [s.story_id for s in stories if not (row_dir / f"{s.story_id}.json").exists()]
    if missing:
        raise ValueError(f"row {row!r} lacks {len(missing)} of {len(stories)} stories (first: {missing[:3]}); "
                         f"run run_experiment first")
    return row_dir


def load_frames(out_dir: str | Path, row: str, stories: Sequence[Story]) -> torch.Tensor:
    """(S, N, C, H, W) float frames in [0, 1] of `row` as written by `run_experiment`."""
    row_dir = _missing(out_dir, row, stories)
    arrays = [np.load(row_dir / f"{s.story_id}.npz")["frames"] for s in stories]
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def _check_config(out_dir: Path, config: ExperimentConfig) -> None:
    path, mine = out_dir / "config.json", {k: getattr(config, k) for k in GENERATION_FIELDS}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
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


def run_experiment(stories: Sequence[Story], out_dir: str | Path, *, arm=None, corrector=None, memory=None,
                   reference: Callable[[Story], torch.Tensor] | None = None,
                   config: ExperimentConfig | None = None, device: str | torch.device = "cpu",
                   progress: bool = True, text_to_image: TextToImage | None = None,
                   distributed: bool = False) -> dict[str, list[str]]:
    """Generate every row's frames for `stories`, batched, writing each story's files as its batch ends.

    Stories whose files exist are skipped (resume); files from another story list or other settings
    are refused. Args:
        stories: S stories of equal length N.
        out_dir: results folder; <out_dir>/<row>/<story_id>.{npz,json} and <out_dir>/config.json.
        arm: ARM protocol (rows arm, acdc_*, arm_true_ctx); corrector: Corrector (acdc_*).
        memory: the memory of acdc_rules (e.g. RuleMemory(vocabulary)).
        reference: story -> (N, C, H, W) ground-truth frames in [0, 1] (row arm_true_ctx), e.g.
            `GroundTruth.reference_images`.
        text_to_image: the TextToImage of row dm_only (default: the corrector, when it implements it,
            as the toy DM and `PipelineCorrector` do).
        distributed: run only this accelerate process's share of the stories (`PartialState`; launch
            with `accelerate launch`); seeds still follow each story's index in `stories`, so the
            files equal those of one process. Every process waits for the others at the end.
    Returns:
        {row: story ids computed by this call (this process's, when distributed)}.
    """
    config = config or ExperimentConfig()
    if text_to_image is None and isinstance(corrector, TextToImage):
        text_to_image = corrector
    given = {"arm": arm, "corrector": corrector, "memory": memory, "reference": reference,
             "text_to_image": text_to_image}
    for row in config.rows:  # e.g. acdc_rules without a memory would silently equal acdc_nomem
        missing = [k for k in ROWS[row].needs() if given[k] is None]
        if missing:
            raise ValueError(f"row {row!r} needs {missing}; pass them or leave the row out of config.rows")
    seeds = {s.story_id: story_seed(config.base_seed, k) for k, s in enumerate(stories)}
    if len(seeds) != len(stories) or len({len(s) for s in stories}) != 1:
        raise ValueError(f"stories need unique ids and one length; got {len(stories)} stories, {len(seeds)} ids, "
                         f"lengths {sorted({len(s) for s in stories})}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    state = _process_state() if distributed else None
    mine = process_share(stories, state) if state is not None else list(stories)
    computed: dict[str, list[str]] = {}
    for row in config.rows:
        spec, row_dir = ROWS[row], out_dir / row
        row_dir.mkdir(exist_ok=True)
        todo = [s for s in mine if not _done(row_dir, s, seeds[s.story_id])]
        computed[row] = []
        with tqdm(total=len(todo), desc=row, unit="story", disable=not progress) as bar:
            for b0 in range(0, len(todo), config.batch_size):
                batch = todo[b0:b0 + config.batch_size]
                bseeds = [seeds[s.story_id] for s in batch]
                if spec.kind == "dm":
                    frames, prompts, sources = _dm_only(batch, text_to_image, bseeds, config, device), None, None
                elif spec.kind == "true_context":
                    frames, prompts, sources = arm_true_context(batch, arm, reference, bseeds, device), None, None
                else:
                    loop_cfg = LoopConfig(correct_frames=spec.correct_frames, strength=config.strength,
                                          guidance_scale=config.guidance_scale,
                                          num_inference_steps=config.num_inference_steps, use_memory=spec.use_memory)
                    out = run_stories(batch, arm, corrector, memory if spec.use_memory else None, loop_cfg,
                                      seeds=bseeds, device=device)
                    frames = torch.stack([r.final_images() for r in out.stories])
                    prompts = [[f.prompt for f in r.frames] for r in out.stories]
                    sources = [r.memory.source if r.memory else None for r in out.stories]
                for k, s in enumerate(batch):  # frames first, the .json last: it marks the story done
                    _atomic_npz(row_dir / f"{s.story_id}.npz", frames=_to_uint8(frames[k]))
                    atomic_write_json(row_dir / f"{s.story_id}.json", {
                        "story_id": s.story_id, "row": row, "seed": bseeds[k], "sentences": list(s.sentences),
                        "prompts": prompts[k] if prompts else None, "memory_source": sources[k] if sources else None})
                    computed[row].append(s.story_id)
                bar.update(len(batch))
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


