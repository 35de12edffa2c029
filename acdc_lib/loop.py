"""The ACDC loop, model-agnostic and batched: stories (Eq. 1-3) and video chunks (Eq. 4-6).

The loop sees models only through the protocols of `acdc_lib.types` (ARM, Corrector,
VideoCorrector, Memory). Randomness: every story (or video) has one integer seed, from which two
independent `torch.Generator`s are derived (see `story_generators`): one feeds the ARM, one feeds
the corrector. The ARM's stream therefore does not move when correction is switched on or off
(ARM-alone and ACDC runs are paired, common random numbers), and row b of a batch draws only from
its own generators, so a story's output does not depend on which stories share its batch.

Result tensors are stored on the CPU (copies), so a long run does not pile up intermediates on a GPU.

Every decoded and corrected frame is checked where it is made (`frame_faults`: NaN, Inf, near constant):
a bad one is never re-encoded into the ARM's context. Its story stops before it, or goes on from the
ARM's frame (`on_bad_frame`), with a `BadFrameWarning`; the story's result says which frame and why.
"""
from __future__ import annotations

import numbers
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from acdc_lib.correctors.schedule import steps_for_strength
from acdc_lib.types import (ARM, STAGES, Corrector, CorrectPolicy, DriftScorer, FrameFault, FrameResult, LoopConfig,
                            LoopOutput, Memory, MemoryOutput, Story, StoryResult, VideoCorrector)


# --------------------------------------------------------------------------------------------
# Policies, seeds, timing
# --------------------------------------------------------------------------------------------
def _indices_from_policy(policy, n: int, what: str) -> frozenset[int]:
    """Shared by frames_to_correct (frames) and run_video (chunks)."""
    if isinstance(policy, str):
        if policy == "all":
            return frozenset(range(n))
        if policy == "none":
            return frozenset()
        step = policy.removeprefix("every")
        if policy.startswith("every") and step.isdigit() and int(step) >= 1:
            return frozenset(range(0, n, int(step)))
        raise ValueError(f"unknown correction policy {policy!r}; allowed: 'all', 'none', 'every<k>' (every k-th "
                         f"{what} from the first, k >= 1), an int k in [0, {n}] (first k {what}s) or a collection "
                         f"of 0-based {what} indices" + ("" if what == "chunk" else ", or 'adaptive'"))
    if isinstance(policy, bool) or not isinstance(policy, (numbers.Integral, set, frozenset, list, tuple)):
        raise ValueError(f"correction policy {policy!r} of type {type(policy).__name__} is not allowed; use "
                         f"'all', 'none', an int k or a set/list/tuple of 0-based {what} indices")
    if isinstance(policy, numbers.Integral):
        if not 0 <= policy <= n:
            raise ValueError(f"correction policy k={policy} (first k {what}s) must be in [0, {n}] for {n} {what}s")
        return frozenset(range(int(policy)))
    bad = [i for i in policy if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n]
    if bad:
        raise ValueError(f"{what} indices {bad} in correction policy {sorted(policy, key=repr)} are not allowed; "
                         f"indices must be ints in [0, {n - 1}] for {n} {what}s")
    return frozenset(int(i) for i in policy)


def frames_to_correct(policy: CorrectPolicy, n_frames: int) -> frozenset[int]:
    """The 0-based frame indices a correction policy selects out of `n_frames`.

    Args:
        policy: "all", "none", "every<k>" (frames 0, k, 2k, ...), an int k (the first k frames, Table 2's
            "ACDC #"), or a set/frozenset/list/tuple of 0-based frame indices. "adaptive" decides per frame
            at run time (see `run_stories`); here it selects every frame as a candidate.
        n_frames: N, the number of frames of the story (>= 1).
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
    if policy == "adaptive":
        return frozenset(range(int(n_frames)))
    return _indices_from_policy(policy, int(n_frames), "frame")


def story_seed(base_seed: int, index: int) -> int:
    """Seed of story `index` under `base_seed`: numpy SeedSequence([base_seed, index]), one 32-bit word."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def story_generators(seed: int, device: str | torch.device = "cpu") -> tuple[torch.Generator, torch.Generator]:
    """The (ARM, correction) generator pair of one story, derived deterministically from its seed.

    numpy's SeedSequence(seed).spawn(2) gives two statistically independent child streams; each
    child's first 64-bit state word seeds a torch.Generator on `device`. The ARM uses only the
    first, the corrector only the second, so switching correction on leaves the ARM's draws intact.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    children = np.random.SeedSequence(int(seed)).spawn(2)
    gens = []
    for child in children:
        g = torch.Generator(device=device)
        g.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]))
        gens.append(g)
    return gens[0], gens[1]


def draw_rows(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.LongTensor:
    """(B, V) probabilities and (B,) uniforms in [0, 1) -> (B,) indices, row b drawn from probs[b] by the
    inverse of its CDF at uniforms[b].

    The ARMs' sampler. It is the distribution torch.multinomial draws, but multinomial takes one
    generator per call, so rows that each draw from their own generator (a story's draws must not
    depend on its batch) cost B calls per token; here each row's uniforms come from its generator,
    drawn ahead (`torch.rand(n, generator=g)`), and the draw itself is one batched op.
    """
    cdf = probs.cumsum(-1)
    # right=True never picks an index of probability 0; where u * total rounds up to the total, the last
    # index of positive probability (the first to reach the total) is the draw
    pick = torch.searchsorted(cdf, uniforms[:, None].to(cdf.dtype) * cdf[:, -1:], right=True)
    return torch.minimum(pick, cdf.argmax(-1, keepdim=True))[:, 0]


def drift_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The story's third stream, used only by the adaptive policy's drift score.

    SeedSequence(seed).spawn(3) gives the two children of `story_generators` first, so the ARM and
    correction streams are the same with and without the adaptive policy, and scoring a frame never
    moves the noise its correction draws.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    child = np.random.SeedSequence(int(seed)).spawn(3)[2]
    g = torch.Generator(device=device)
    g.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]))
    return g


def _check_seeds(seeds, batch: int) -> list[int]:
    seeds = list(range(batch)) if seeds is None else list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}; pass one seed per row or seeds=None")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"seed {s!r} is not allowed; seeds must be non-negative ints")
    return [int(s) for s in seeds]


class _Stopwatch:
    """Wall time per stage; synchronises CUDA before reading the clock so GPU work is counted."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.timings = {s: 0.0 for s in STAGES}

    def now(self) -> float:
        """The clock, after the device's queued work."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.timings[name] += time.perf_counter() - t0


def _keep(x: torch.Tensor) -> torch.Tensor:
    """A CPU copy for the results (never a view of a tensor a model might later modify in place)."""
    return x.detach().to("cpu", copy=True)


# --------------------------------------------------------------------------------------------
# Checks on what the plugged-in models return
# --------------------------------------------------------------------------------------------
def _check_tokens(tokens, batch: int, n: int | None, who: str) -> int:
    if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype.is_complex \
            or tokens.dtype == torch.bool:
        what = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{who} must return an integer token tensor of shape (B, n), got {what}")
    if tokens.ndim != 2 or tokens.shape[0] != batch or tokens.shape[1] < 1 or (n is not None and tokens.shape[1] != n):
        want = f"({batch}, {n})" if n is not None else f"({batch}, n)"
        raise ValueError(f"{who} returned tokens of shape {tuple(tokens.shape)}; expected {want}")
    return tokens.shape[1]


def _check_images(images, shape: tuple | None, ndim: int, batch: int, who: str, values: bool = True) -> None:
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{who} must return a float tensor in [0, 1], got {what}")
    dims = "(B, C, H, W)" if ndim == 4 else "(B, L, C, H, W)"
    if images.ndim != ndim or images.shape[0] != batch or (shape is not None and tuple(images.shape) != tuple(shape)):
        want = tuple(shape) if shape is not None else f"{dims} with B={batch}"
        raise ValueError(f"{who} returned shape {tuple(images.shape)}; expected {want}")
    if not values:  # the caller checks the values frame by frame (`frame_faults`, `_check_range`)
        return
    lo, hi = images.min().item(), images.max().item()
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise ValueError(f"{who} returned values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1]")


# A frame whose pixels spread less than this (population std over every pixel and channel, images in
# [0, 1]) is taken to be constant: a black frame from a safety filter, a grey one from a collapsed
# decoder. 0.01 is 2.5 grey levels of an 8-bit image, under what any drawing shows and above float noise;
# the toy world's frames spread at least 0.118 (6,000 rendered frames of the test split), 0.118 decoded by
# the toy ARM and 0.128 corrected by the toy DM (96 frames each of 16 test stories, with the shipped
# models), so no frame of it comes near. A frame under 8x8 pixels is no picture (the unit tests' stand-in
# ARMs write their tokens into 2x2 frames, where a few random values may well be alike): only NaN and Inf
# are looked for there.
MIN_FRAME_STD = 0.01
MIN_PICTURE_PIXELS = 64
ON_BAD_FRAME = ("stop", "uncorrected")


class BadFrameWarning(UserWarning):
    """A decoded or corrected frame went wrong (NaN, Inf or constant) and its story was stopped or went on
    from the uncorrected frame; the story's result records which frame and why."""


def frame_faults(images: torch.Tensor, min_std: float = MIN_FRAME_STD) -> list[str | None]:
    """What is wrong with each frame of a batch, or None: NaN or Inf values, or (near) constant pixels.

    Only reads the frames.

    Args:
        images: (B, ...) float frames in [0, 1] ((B, C, H, W) or (B, L, C, H, W)).
        min_std: a frame of at least `MIN_PICTURE_PIXELS` pixels whose population std over all its values
            is below this is "near constant".
    Returns:
        B entries: None for a good frame, else the reason with the value found ("3 NaN values",
        "near constant: std 0.0000 < 0.01").
    """
    flat = images.detach().flatten(1).float()                                     # (B, P)
    picture = images.shape[-1] * images.shape[-2] >= MIN_PICTURE_PIXELS
    nan, inf = torch.isnan(flat).sum(1).tolist(), torch.isinf(flat).sum(1).tolist()
    std = torch.where(torch.isfinite(flat), flat, 0.0).std(1, correction=0).tolist()
    out: list[str | None] = []
    for k in range(flat.shape[0]):
        if nan[k] or inf[k]:
            out.append(", ".join(f"{n} {what} values" for n, what in ((nan[k], "NaN"), (inf[k], "Inf")) if n))
        elif picture and std[k] < min_std:
            out.append(f"near constant: std {std[k]:.4f} < {min_std} (values {flat[k].min().item():.4g}"
                       f"..{flat[k].max().item():.4g})")
        else:
            out.append(None)
    return out


def _check_range(images: torch.Tensor, rows: Sequence[int], who: str) -> None:
    """Values of the finite frames `rows` must lie in [0, 1] (a backend that maps pixels wrongly)."""
    if not rows:
        return
    sub = images if len(rows) == images.shape[0] else images[list(rows)]
    lo, hi = sub.min().item(), sub.max().item()
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"{who} returned values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1]")


def _check_adaptive(config: LoopConfig, corrector) -> None:
    thr = config.drift_threshold
    if isinstance(thr, bool) or not isinstance(thr, numbers.Real) or not np.isfinite(thr):
        raise ValueError(f"correct_frames='adaptive' needs drift_threshold, a finite number (a frame is corrected "
                         f"when its drift score is above it), got {thr!r}")
    if not isinstance(corrector, DriftScorer):
        raise ValueError(f"correct_frames='adaptive' needs a corrector with drift_score(images, prompts, ...) "
                         f"(acdc_lib.types.DriftScorer); {type(corrector).__name__} has none")


def _check_scores(scores, batch: int) -> list[float]:
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch,) or not scores.dtype.is_floating_point:
        what = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"corrector.drift_score must return a float tensor of shape ({batch},), got {what}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"corrector.drift_score returned non-finite scores {scores.tolist()}")
    return scores.detach().cpu().double().tolist()


def _check_common(config: LoopConfig | None) -> LoopConfig:
    config = LoopConfig() if config is None else config
    if not isinstance(config, LoopConfig):
        raise ValueError(f"config must be a LoopConfig, got {type(config).__name__}")
    if isinstance(config.guidance_scale, bool) or not isinstance(config.guidance_scale, numbers.Real):
        raise ValueError(f"guidance_scale must be a number, got {config.guidance_scale!r}")
    return replace(config)


def _prev(contexts: list[torch.Tensor], batch: int, n0: int, device) -> torch.Tensor:
    if contexts:
        return torch.stack(contexts, dim=1)                              # (B, i, n)
    return torch.empty((batch, 0, n0), dtype=torch.long, device=device)  # (B, 0, n)


# --------------------------------------------------------------------------------------------
# Stories: Eq. (1)-(3)
# --------------------------------------------------------------------------------------------
def _as_stories(stories) -> list[Story]:
    if isinstance(stories, (str, Story)) or len(stories) == 0:
        raise ValueError(f"stories must be a non-empty sequence of Story or of sentence lists, got {stories!r:.80}")
    out = []
    for b, s in enumerate(stories):
        if not isinstance(s, Story):
            if isinstance(s, str) or not all(isinstance(t, str) for t in s):
                raise ValueError(f"story {b} must be a Story or a list of sentences (str), got {s!r:.80}")
            s = Story(story_id=f"story-{b}", sentences=list(s), source="inline")
        if len(s) == 0:
            raise ValueError(f"story {s.story_id!r} has no sentences")
        out.append(s)
    return out


def run_stories(
    stories: Sequence[Story] | Sequence[Sequence[str]],
    arm: ARM,
    corrector: Corrector | None = None,
    memory: Memory | None = None,
    config: LoopConfig | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_bad_frame: str = "stop",
) -> LoopOutput:
    """Generate a batch of stories frame by frame with the ARM, correcting frames by SDEdit (ACDC).

    Args:
        stories: B stories (`Story` or lists of sentences), all with the same number of frames N.
        arm: the autoregressive model (generate / decode / encode). If it has an int attribute
            `tokens_per_frame`, the empty first-frame context is (B, 0, tokens_per_frame), else (B, 0, 0).
        corrector: the image DM used for Eq. (2); required when the policy corrects any frame.
        memory: refines each story's sentences into corrector prompts (Eq. 3); None -> raw sentences.
        config: policy, t', CFG scale, N steps, use_memory; None -> LoopConfig() (the paper's values).
            A copy is stored on the output, so later edits of `config` do not change the record.
        seeds: one non-negative int per story (default 0..B-1); see `story_generators`.
        device: where the generators live and which device to synchronise for timings.
        progress: show a tqdm bar over frames.
        on_bad_frame: what happens to a story whose corrected frame holds NaN or Inf or is (near) constant
            (`frame_faults`): "stop" ends the story before that frame (`StoryResult.stopped` says which and
            why), "uncorrected" goes on from the ARM's frame (`FrameResult.fault` says why). A decoded frame
            that went wrong always stops its story. Either way a `BadFrameWarning` names the story and frame,
            and the other stories of the batch are unaffected.
    Returns:
        LoopOutput with one StoryResult per story (every intermediate per frame) and stage timings.
    """
    # 1. Validate inputs: stories of equal length, seeds, policy, corrector and t' / N.
    config = _check_common(config)
    stories = _as_stories(stories)
    lengths = [len(s) for s in stories]
    if len(set(lengths)) != 1:
        raise ValueError(f"all stories in a batch need the same number of frames; got lengths "
                         f"{dict(zip([s.story_id for s in stories], lengths))} (batch stories by length)")
    B, N = len(stories), lengths[0]
    seeds = _check_seeds(seeds, B)
    if on_bad_frame not in ON_BAD_FRAME:
        raise ValueError(f"on_bad_frame must be one of {ON_BAD_FRAME}, got {on_bad_frame!r}")
    todo = frames_to_correct(config.correct_frames, N)
    if todo and corrector is None:
        raise ValueError(f"correct_frames={config.correct_frames!r} corrects frames {sorted(todo)} but corrector is "
                         f"None; pass a Corrector or use correct_frames='none'")
    adaptive = config.correct_frames == "adaptive"
    if adaptive:
        _check_adaptive(config, corrector)
    steps = steps_for_strength(config.num_inference_steps, config.strength) if todo else 0
    gens = [story_generators(s, device) for s in seeds]
    arm_gens, corr_gens = [g[0] for g in gens], [g[1] for g in gens]
    drift_gens = [drift_generator(s, device) for s in seeds] if adaptive else None
    clock = _Stopwatch(device)

    # 2. Memory (Eq. 3): one refine() per story, only if some frame is corrected with memory on.
    memory_out: list[MemoryOutput | None] = [None] * B
    prompts = [list(s.sentences) for s in stories]  # raw sentences u^i unless memory refines them
    if todo and config.use_memory and memory is not None:
        for b, s in enumerate(stories):
            with clock.stage("memory"):
                out = memory.refine(list(s.sentences))
            got = getattr(out, "prompts", None)
            if not isinstance(got, list) or len(got) != N or not all(isinstance(p, str) for p in got):
                n_got = len(got) if isinstance(got, list) else got
                raise ValueError(f"memory returned {n_got!r} prompts for story {s.story_id!r}; expected a list of "
                                 f"{N} strings, one per sentence")
            memory_out[b], prompts[b] = out, list(got)

    # 3. Frame loop (Eq. 1): v^i ~ p(v^i | v~^{1:i-1}, u^{1:i}), correct, re-encode.
    n0 = int(getattr(arm, "tokens_per_frame", 0) or 0)
    n: int | None = n0 or None
    contexts: list[torch.Tensor] = []  # per frame (B, n): what the ARM continues from
    frame_shape = None  # (B, C, H, W) of frame 0; later frames must match
    frames: list[list[FrameResult]] = [[] for _ in range(B)]
    stopped: dict[int, FrameFault] = {}  # story b -> the frame that went wrong and ended it
    for i in tqdm(range(N), desc="ACDC frames", disable=not progress):
        if len(stopped) == B:
            break
        texts = [s.sentences[: i + 1] for s in stories]                         # B lists of i+1 sentences
        prev = _prev(contexts, B, n0, device)                                   # (B, i, n)
        with clock.stage("arm"):
            tokens = arm.generate(texts, prev, arm_gens)                        # (B, n)
        n = _check_tokens(tokens, B, n, "arm.generate")
        with clock.stage("decode"):
            images = arm.decode(tokens)                                         # (B, C, H, W)  x_0^i = D(v^i)
        _check_images(images, frame_shape, 4, B, "arm.decode", values=False)
        frame_shape = images.shape
        # A decoded frame that went wrong ends its story: there is no frame of it to go on from. A stopped
        # story's row still rides along in the ARM's batch (its own generator), but nothing more of it is kept.
        for b, why in enumerate(frame_faults(images)):
            if why is not None and b not in stopped:
                stopped[b] = _fault(f"story {stories[b].story_id!r}", i, "decode", why, "stopped", images[b])
        live = [b for b in range(B) if b not in stopped]
        _check_range(images, live, "arm.decode")
        arm_images = _keep(images)                                              # (B, C, H, W) before correction
        context, rows, scores = tokens, [], None
        if i in todo:
            frame_prompts = [p[i] for p in prompts]
            rows = live
            if adaptive and live:  # correct only the rows whose frame drifted from its prompt (a run-time score)
                sub = images if len(live) == B else images[torch.tensor(live, device=images.device)]
                with clock.stage("drift"):
                    got = corrector.drift_score(sub, [frame_prompts[b] for b in live], strength=config.strength,
                                                num_inference_steps=config.num_inference_steps,
                                                generators=[drift_gens[b] for b in live])  # (b,)
                scores = dict(zip(live, _check_scores(got, len(live))))
                rows = [b for b in live if scores[b] > config.drift_threshold]
        corrected_rows: dict[int, torch.Tensor] = {}
        skipped: dict[int, FrameFault] = {}  # rows that go on from the ARM's frame (on_bad_frame="uncorrected")
        if rows:
            sel = torch.tensor(rows, device=images.device)
            sub = images if len(rows) == B else images[sel]
            with clock.stage("correction"):                                     # Eq. (2)/(3): SDEdit from t'
                corrected = corrector.correct(sub, [frame_prompts[b] for b in rows], strength=config.strength,
                                              guidance_scale=config.guidance_scale,
                                              num_inference_steps=config.num_inference_steps,
                                              generators=[corr_gens[b] for b in rows])  # (b, C, H, W)  x~_0^i
            _check_images(corrected, sub.shape, 4, len(rows), "corrector.correct", values=False)
            # A corrected frame that went wrong is never re-encoded: its story stops, or goes on uncorrected.
            bad = frame_faults(corrected)
            good = [k for k, why in enumerate(bad) if why is None]
            _check_range(corrected, good, "corrector.correct")
            action = "stopped" if on_bad_frame == "stop" else "uncorrected"
            for k, why in enumerate(bad):
                if why is not None:
                    fault = _fault(f"story {stories[rows[k]].story_id!r}", i, "correction", why, action, corrected[k])
                    (stopped if action == "stopped" else skipped)[rows[k]] = fault
            if len(good) < len(rows):
                rows = [rows[k] for k in good]
                corrected = corrected[torch.tensor(good, device=corrected.device)]
                sel = torch.tensor(rows, device=images.device)
        if rows:
            # v~^i = E(x~_0^i): the ARM continues from the corrected frame's tokens. The last frame
            # needs no re-encoding to continue; it is encoded anyway so context_tokens always holds
            # v~^i (what a continuation of the story would start from).
            with clock.stage("encode"):
                re = arm.encode(corrected)                                      # (b, n)
            _check_tokens(re, len(rows), n, "arm.encode")
            context = tokens.clone()
            context[sel] = re.to(tokens.device, tokens.dtype)
            corrected = _keep(corrected)
            corrected_rows = {b: corrected[k] for k, b in enumerate(rows)}
        contexts.append(context)
        for b in range(B):
            if b in stopped:  # its frames end before the one that went wrong
                continue
            done = b in corrected_rows
            frames[b].append(FrameResult(
                index=i, text=stories[b].sentences[i], arm_tokens=_keep(tokens[b]), arm_image=arm_images[b].clone(),
                corrected=done, prompt=prompts[b][i] if done else None,
                corrected_image=corrected_rows[b].clone() if done else None,
                context_tokens=_keep(context[b]), steps_run=steps if done else 0,
                drift_score=float(scores[b]) if scores is not None else None, fault=skipped.get(b)))

    # 4. Collect per-story results.
    results = [StoryResult(story_id=s.story_id, seed=seeds[b], frames=frames[b], memory=memory_out[b],
                           stopped=stopped.get(b)) for b, s in enumerate(stories)]
    return LoopOutput(stories=results, config=config, timings=clock.timings)


def _fault(who: str, i: int, stage: str, why: str, action: str, image: torch.Tensor) -> FrameFault:
    """The record of a frame that went wrong, announced with a `BadFrameWarning` ("story 's1'", "video 0")."""
    what = "the ARM's decoded frame" if stage == "decode" else "the corrected frame"
    if action == "uncorrected":
        then = "it goes on from the ARM's frame, uncorrected"
    else:
        then = "it stops here (its earlier frames are kept)" + (
            "" if stage == "decode" else "; pass on_bad_frame='uncorrected' to go on from the ARM's frame instead")
    warnings.warn(f"{who}, frame {i + 1}: {what} went wrong ({why}); {then}", BadFrameWarning, stacklevel=3)
    return FrameFault(frame=i, stage=stage, reason=why, action=action, image=_keep(image))


# --------------------------------------------------------------------------------------------
# Video: Eq. (4)-(6)
# --------------------------------------------------------------------------------------------
@dataclass
class VideoResult:
    """One video: the ARM's frames, the frames it shows, and what the ARM continued from.

    Args:
        prompt: the single text prompt u.
        seed: the video's seed (see `story_generators`).
        arm_tokens: (N, n) tokens the ARM sampled.
        arm_frames: (N, C, H, W) decoded ARM frames x_0^j in [0, 1].
        final_frames: (N, C, H, W) corrected frames where a chunk was corrected, else the ARM's.
        corrected: per frame, whether the video corrector produced it.
        context_tokens: (N, n) tokens the ARM continued from (v~^j = E(X~_0) in corrected chunks).
        steps_run: denoising steps each corrected chunk ran (int(N_steps * t')), 0 if none was corrected.
        stopped: the frame that went wrong and ended the video early (the tensors then hold the frames
            before it: before its chunk, for a corrected chunk), else None.
        faults: frames of corrected chunks that went wrong and were replaced by the ARM's chunk
            (`on_bad_frame="uncorrected"`).
    """

    prompt: str
    seed: int
    arm_tokens: torch.Tensor
    arm_frames: torch.Tensor
    final_frames: torch.Tensor
    corrected: list[bool]
    context_tokens: torch.Tensor
    steps_run: int = 0
    stopped: FrameFault | None = None
    faults: list[FrameFault] = field(default_factory=list)


@dataclass
class VideoOutput:
    """Results of one batched video call; timings (seconds, whole batch) use the story stages."""

    videos: list[VideoResult]
    config: LoopConfig
    num_frames: int
    chunk_length: int
    corrected_chunks: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    frame_seconds: list[float] = field(default_factory=list)


def run_video(
    prompts: Sequence[str],
    arm: ARM,
    video_corrector: VideoCorrector | None = None,
    num_frames: int = 32,
    chunk_length: int = 16,
    correct_chunks: str | int | set | frozenset | list | tuple = "first",
    config: LoopConfig | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    prefix_tokens: torch.Tensor | None = None,
    on_bad_frame: str = "stop",
) -> VideoOutput:
    """Generate B videos frame by frame from one prompt each, correcting chunks of L frames (Eq. 4-6).

    Args:
        prompts: B text prompts u, one per video; the ARM sees texts [[u]] for every frame.
        arm: the autoregressive model (generate / decode / encode), as in `run_stories`.
        video_corrector: the video DM of Eq. (5); required unless correct_chunks is "none".
        num_frames: N, frames per video (the paper: 32).
        chunk_length: L, frames the video DM takes (the paper: 16); 1 <= L <= N.
        correct_chunks: "first" (the paper: only frames 1..L), "all" (every complete chunk of L; a
            trailing partial chunk of N % L frames stays uncorrected, as a video DM takes exactly L),
            "none", an int k (first k chunks) or a collection of 0-based chunk indices.
        config: None -> LoopConfig(); only strength, guidance_scale and num_inference_steps are used here (the policy is
            `correct_chunks`; a single prompt per video has no memory).
        seeds: one non-negative int per video (default 0..B-1).
        device: where the generators live and which device to synchronise for timings.
        progress: show a tqdm bar over frames.
        prefix_tokens: (B, P, n) tokens of the first P < N frames, given instead of generated (a video
            continued from its opening frames, e.g. a true first frame); they count among the N frames,
            are decoded like the ARM's own, and are corrected with their chunk like any other frame.
        on_bad_frame: as in `run_stories`: a decoded frame that went wrong stops its video there; a corrected
            chunk holding one stops the video before the chunk ("stop") or keeps the ARM's chunk and goes on
            from it ("uncorrected"). The other videos of the batch are unaffected.
    Returns:
        `VideoOutput`; its `frame_seconds` holds the wall time of each frame (generation, decoding, and
        the chunk's correction and re-encoding on the frame that completes it).
    """
    # 1. Validate inputs.
    config = _check_common(config)
    if isinstance(prompts, str) or len(prompts) == 0 or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty sequence of strings, got {prompts!r:.80}")
    for name, v in (("num_frames", num_frames), ("chunk_length", chunk_length)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if chunk_length > num_frames:
        raise ValueError(f"chunk_length L={chunk_length} exceeds num_frames N={num_frames}; need 1 <= L <= N")
    B, N, L = len(prompts), int(num_frames), int(chunk_length)
    if on_bad_frame not in ON_BAD_FRAME:
        raise ValueError(f"on_bad_frame must be one of {ON_BAD_FRAME}, got {on_bad_frame!r}")
    P = 0
    if prefix_tokens is not None:
        if not isinstance(prefix_tokens, torch.Tensor) or prefix_tokens.ndim != 3 or prefix_tokens.shape[0] != B \
                or prefix_tokens.dtype.is_floating_point or not 1 <= prefix_tokens.shape[1] < N:
            what = tuple(prefix_tokens.shape) if isinstance(prefix_tokens, torch.Tensor) else type(prefix_tokens).__name__
            raise ValueError(f"prefix_tokens must be an integer tensor (B={B}, P, n) with 1 <= P < N={N}, got {what}")
        P = prefix_tokens.shape[1]
    n_chunks = N // L  # complete chunks only
    chunks = frozenset({0}) if correct_chunks == "first" else _indices_from_policy(correct_chunks, n_chunks, "chunk")
    if chunks and video_corrector is None:
        raise ValueError(f"correct_chunks={correct_chunks!r} corrects chunks {sorted(chunks)} but video_corrector is "
                         f"None; pass a VideoCorrector or use correct_chunks='none'")
    steps = steps_for_strength(config.num_inference_steps, config.strength) if chunks else 0
    seeds = _check_seeds(seeds, B)
    gens = [story_generators(s, device) for s in seeds]
    arm_gens, corr_gens = [g[0] for g in gens], [g[1] for g in gens]
    clock = _Stopwatch(device)
    texts = [[p] for p in prompts]  # Eq. (4): the same prompt u conditions every frame

    # 2. Frame loop (Eq. 4), with chunk correction (Eq. 5) and re-encoding (Eq. 6).
    n0 = int(getattr(arm, "tokens_per_frame", 0) or 0)
    n: int | None = n0 or None
    contexts: list[torch.Tensor] = []  # per frame (B, n)
    arm_tokens, arm_frames, finals, frame_seconds = [], [], [], []
    corrected = [[False] * N for _ in range(B)]
    stopped: dict[int, FrameFault] = {}  # video b -> the frame that went wrong and ended it
    stop_at: dict[int, int] = {}  # video b -> frames it keeps
    faults: list[list[FrameFault]] = [[] for _ in range(B)]
    for j in tqdm(range(N), desc="ACDC video frames", disable=not progress):
        if len(stopped) == B:
            break
        t_frame = clock.now()
        prev = _prev(contexts, B, n0, device)                                   # (B, j, n)
        if j < P:
            tokens = prefix_tokens[:, j].to(device)
        else:
            with clock.stage("arm"):
                tokens = arm.generate(texts, prev, arm_gens)                    # (B, n)
        n = _check_tokens(tokens, B, n, "prefix_tokens" if j < P else "arm.generate")
        with clock.stage("decode"):
            images = arm.decode(tokens)                                         # (B, C, H, W)  x_0^j
        _check_images(images, arm_frames[0].shape if arm_frames else None, 4, B, "arm.decode", values=False)
        for b, why in enumerate(frame_faults(images)):  # a bad decoded frame ends its video here
            if why is not None and b not in stopped:
                stopped[b], stop_at[b] = _fault(f"video {b}", j, "decode", why, "stopped", images[b]), j
        _check_range(images, [b for b in range(B) if b not in stopped], "arm.decode")
        arm_tokens.append(tokens)
        arm_frames.append(images)
        contexts.append(tokens)
        finals.append(images)
        start = j + 1 - L
        live = [b for b in range(B) if b not in stopped]
        if (j + 1) % L == 0 and j // L in chunks and live:
            chunk = torch.stack(arm_frames[start: j + 1], dim=1)                # (B, L, C, H, W)  X_0^{1:L}
            rows = live
            sub = chunk if len(rows) == B else chunk[torch.tensor(rows, device=chunk.device)]
            with clock.stage("correction"):                                     # Eq. (5)
                fixed = video_corrector.correct_video(sub, [prompts[b] for b in rows], strength=config.strength,
                                                      guidance_scale=config.guidance_scale,
                                                      num_inference_steps=config.num_inference_steps,
                                                      generators=[corr_gens[b] for b in rows])  # (b, L, C, H, W)
            _check_images(fixed, sub.shape, 5, len(rows), "video_corrector.correct_video", values=False)
            # A chunk holding a bad frame is never re-encoded: its video stops before the chunk, or keeps the
            # ARM's chunk (the frames were denoised jointly, so none of the chunk is trusted).
            bad = frame_faults(fixed.flatten(0, 1))                             # B*L entries
            good = []
            for k, b in enumerate(rows):
                first = next((l for l in range(L) if bad[k * L + l] is not None), None)
                if first is None:
                    good.append(k)
                    continue
                action = "stopped" if on_bad_frame == "stop" else "uncorrected"
                fault = _fault(f"video {b}", start + first, "correction", bad[k * L + first], action,
                               fixed[k, first])
                if action == "stopped":
                    stopped[b], stop_at[b] = fault, start
                else:
                    faults[b].append(fault)
            _check_range(fixed.flatten(0, 1), [k * L + l for k in good for l in range(L)],
                         "video_corrector.correct_video")
            if good:
                if len(good) < len(rows):
                    fixed = fixed[torch.tensor(good, device=fixed.device)]
                    rows = [rows[k] for k in good]
                # Eq. (6): v~ = E(X~_0), frame by frame; the ARM resumes from these tokens.
                with clock.stage("encode"):
                    re = arm.encode(fixed.flatten(0, 1))                        # (b*L, n)
                _check_tokens(re, len(rows) * L, n, "arm.encode")
                re = re.view(len(rows), L, n)                                   # (b, L, n)
                if len(rows) == B:
                    contexts[start: j + 1] = list(re.unbind(1))
                    finals[start: j + 1] = list(fixed.unbind(1))
                else:
                    sel = torch.tensor(rows, device=tokens.device)
                    for l in range(L):
                        contexts[start + l] = contexts[start + l].clone()
                        contexts[start + l][sel] = re[:, l].to(contexts[start + l].device, contexts[start + l].dtype)
                        finals[start + l] = finals[start + l].clone()
                        finals[start + l][sel.to(finals[start + l].device)] = fixed[:, l].to(finals[start + l].dtype)
                for b in rows:
                    corrected[b][start: j + 1] = [True] * L
        frame_seconds.append(clock.now() - t_frame)

    # 3. Collect per-video results (CPU copies).
    arm_tok = _keep(torch.stack(arm_tokens, dim=1))                             # (B, N, n)
    arm_img = _keep(torch.stack(arm_frames, dim=1))                             # (B, N, C, H, W)
    fin_img = _keep(torch.stack(finals, dim=1))                                 # (B, N, C, H, W)
    ctx_tok = _keep(torch.stack(contexts, dim=1))                               # (B, N, n)
    keep = [stop_at.get(b, N) for b in range(B)]
    videos = [VideoResult(prompt=prompts[b], seed=seeds[b], arm_tokens=arm_tok[b, :keep[b]].clone(),
                          arm_frames=arm_img[b, :keep[b]].clone(), final_frames=fin_img[b, :keep[b]].clone(),
                          corrected=corrected[b][:keep[b]], context_tokens=ctx_tok[b, :keep[b]].clone(),
                          steps_run=steps, stopped=stopped.get(b), faults=faults[b]) for b in range(B)]
    return VideoOutput(videos=videos, config=config, num_frames=N, chunk_length=L,
                       corrected_chunks=tuple(sorted(chunks)), timings=clock.timings, frame_seconds=frame_seconds)
