"""Batched ACDC on toy stories: stories/s at batch 1, 8, 16, 32 and the stage shares per correction policy.

Target: with ACDC on every frame (rule memory, N = 20, t' = 0.5, CFG 7.5), batch 32 generates at least
6x as many stories per second as batch 1; where it does not, the per-stage figures printed show why.

    .venv/bin/python benchmarks/bench_batching.py [--stories 32] [--batch1-stories 8] [--batches 1 8 16 32]
        [--policy-batch 16] [--steps 20] [--strength 0.5] [--guidance 7.5] [--repeats 1] [--threads T]
        [--compile] [--batched-encode] [--out benchmarks/results/bench_batching.json]

--compile samples with the toy ARM's compiled decode step (ToyARM(compile=True)) and --batched-encode
encodes each batch of frames in one VAE call (UNetCorrector(batched_encode=True)); both off by default, the
paths the committed results come from.

Stories: the first `stories` 6-frame stories of the toy test split, each with its own seed (its index),
so every batch size generates the same stories. Batch b runs them in chunks of b; batch 1 runs only the
first `batch1-stories` of them (it is the slowest) and its rate is per story, so the rates compare
directly. One untimed call warms the models first; with `repeats` > 1 the best rate is kept.

Where the time goes, per story at each batch size: the loop's stages (LoopOutput.timings: arm, decode,
memory, correction, encode), split further into the ARM's LM forwards (prefill of the context and one
step per code) against the rest of the ARM stage (building the context ids, the per-row sampling
loop), and the corrector's UNet forwards against the rest of correction. Where the ratio misses the target,
what would reach it: by Amdahl's law over those parts, the ratio if one part that batches below the target
batched at the target, and the fewest such parts that would have to. Then, at batch `policy-batch`,
the stage shares for the policies: every frame, the first 2, the first 4, none.
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import Timers, print_machine, ratio_line, verdict, write_results
from acdc_lib.loop import run_stories
from acdc_lib.memory import RuleMemory
from acdc_lib.toyworld.models import load_arm, load_dm
from acdc_lib.toyworld.splits import load_split
from acdc_lib.toyworld.vocabulary import toy_vocabulary
from acdc_lib.types import STAGES, LoopConfig

TARGET_SPEEDUP = 6.0  # stories/s at batch 32 over batch 1
POLICIES = (("every frame", "all"), ("first 2", 2), ("first 4", 4), ("none", "none"))
SUBPARTS = ("ARM: LM prefill", "ARM: LM steps", "UNet forwards")


def lm_part(*args, **kwargs) -> str:
    ids = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))  # (B, L[, D])
    return SUBPARTS[0] if ids is not None and ids.shape[1] > 1 else SUBPARTS[1]


def what_would_reach_it(gains: dict, speedup: float, target: float = TARGET_SPEEDUP) -> dict:
    """Amdahl's law over the measured parts: the ratio if one part that batches below the target batched at
    the target (the others as measured), and the fewest such parts, largest gain first, that would reach it.
    """
    parts = [k for k in gains if k not in ("arm", "correction")]  # those two stages are split into their sub-parts
    lo = {k: gains[k]["per_story_s_lo"] for k in parts}
    hi = {k: gains[k]["per_story_s_hi"] for k in parts}
    lo_total, hi_total = sum(lo.values()), sum(hi.values())  # the wall time per story at each batch size
    slow = [k for k in parts if hi[k] > 0 and lo[k] / hi[k] < target]
    each = {k: lo_total / (hi_total - hi[k] + lo[k] / target) for k in slow}
    print(f"\nwhat would reach {target:g}x (measured {speedup:.2f}x): the ratio if one part batched at {target:g}x, "
          "the others as measured:")
    for k in sorted(each, key=each.get, reverse=True):
        print(f"  {k:44s} {lo[k] / hi[k]:5.2f}x now -> ratio {each[k]:5.2f}x")
    needed, t = [], hi_total
    for k in sorted(each, key=each.get, reverse=True):
        if lo_total / t >= target:
            break
        needed.append(k)
        t += lo[k] / target - hi[k]
    print(f"  {target:g}x needs {len(needed)} part(s) at {target:g}x at once: " + ", ".join(needed))
    return {"if_one_part_at_target": each, "parts_needed": needed}


def run(stories, batch: int, arm, dm, memory, config: LoopConfig, timers: Timers) -> dict:
    """All `stories` in chunks of `batch`; wall seconds, summed stage timings and sub-parts."""
    stage = {s: 0.0 for s in STAGES}
    timers.reset()
    t0 = time.perf_counter()
    for start in range(0, len(stories), batch):
        chunk = stories[start:start + batch]
        out = run_stories(chunk, arm, dm, memory, config, seeds=list(range(start, start + len(chunk))))
        for s in STAGES:
            stage[s] += out.timings[s]
    wall = time.perf_counter() - t0
    return {"stories": len(stories), "wall_s": wall, "stories_per_s": len(stories) / wall, "stages_s": stage,
            "subparts_s": {k: timers.totals.get(k, 0.0) for k in SUBPARTS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stories", type=int, default=32)
    p.add_argument("--batch1-stories", type=int, default=8, help="stories run at batch 1 (rate scaled per story)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--policy-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="the ARM's compiled decode step")
    p.add_argument("--batched-encode", action="store_true", help="the corrector's batched VAE encode")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = print_machine()

    stories = load_split("test")[: args.stories]
    arm, dm = load_arm(compile=args.compile), load_dm(batched_encode=args.batched_encode)
    memory = RuleMemory(toy_vocabulary())
    timers = Timers()
    if not args.compile:  # a timer inside the compiled step would split its graph (its LM time stays in "arm")
        timers.wrap(arm.lm, "forward", lm_part)
    timers.wrap(dm.unet, "forward", SUBPARTS[2])
    cfg = LoopConfig(correct_frames="all", num_inference_steps=args.steps, strength=args.strength,
                     guidance_scale=args.guidance)
    run(stories[:2], 2, arm, dm, memory, cfg, timers)  # warm-up
    if args.compile:  # compile outside the timings: a second row count over 1 (torch specialises 1) makes
        run(stories[:3], 3, arm, dm, memory, cfg, timers)  # the step's rows dynamic,
        run(stories[:1], 1, arm, dm, memory, cfg, timers)  # and one row has a step of its own
    print(f"{len(stories)} toy test stories of {len(stories[0])} frames, ACDC on every frame, rule memory, "
          f"N={args.steps}, t'={args.strength}, CFG {args.guidance}; ARM {'compiled' if args.compile else 'eager'}, "
          f"VAE encode {'batched' if args.batched_encode else 'per row'}")

    by_batch: dict[int, dict] = {}
    for b in args.batches:
        subset = stories[: args.batch1_stories] if b == 1 else stories
        best = None
        for _ in range(args.repeats):
            r = run(subset, b, arm, dm, memory, cfg, timers)
            best = r if best is None or r["stories_per_s"] > best["stories_per_s"] else best
        by_batch[b] = best
        per = {s: v / best["stories"] for s, v in best["stages_s"].items()}
        print(f"batch {b:3d}: {best['stories']:3d} stories in {best['wall_s']:6.2f} s = "
              f"{best['stories_per_s']:6.2f} stories/s; per story: "
              + ", ".join(f"{s} {v:.3f}" for s, v in per.items() if s != "memory")
              + f", memory {per['memory'] * 1e3:.2f} ms")

    payload = {"machine": info, "settings": vars(args), "target": {"speedup_min": TARGET_SPEEDUP},
               "by_batch": {str(k): v for k, v in by_batch.items()}}
    lo, hi = min(by_batch), max(by_batch)
    if lo != hi:
        speedup = by_batch[hi]["stories_per_s"] / by_batch[lo]["stories_per_s"]
        print(ratio_line(f"stories/s at batch {hi} / batch {lo}", speedup, TARGET_SPEEDUP, higher_is_better=True))
        ratio, ok = verdict(speedup, TARGET_SPEEDUP, higher_is_better=True)
        payload.update(speedup=speedup, measured_over_target=ratio, **{"pass": ok})
        # Why: each part's time per story at batch lo over batch hi.
        print(f"\nper-story time at batch {lo} / batch {hi} (how much batching speeds each part up), and the share "
              f"of each part at batch {hi}:")
        gains = {}
        parts_lo = {**by_batch[lo]["stages_s"], **by_batch[lo]["subparts_s"]}
        parts_hi = {**by_batch[hi]["stages_s"], **by_batch[hi]["subparts_s"]}
        n_lo, n_hi = by_batch[lo]["stories"], by_batch[hi]["stories"]
        wall_hi = by_batch[hi]["wall_s"]
        # the compiled step is not timed from inside, so there the whole ARM stage is one part
        rest = ("ARM: compiled, not split (LM and sampling)" if args.compile
                else "ARM: rest (context ids, per-row sampling)")
        for parts in (parts_lo, parts_hi):
            parts[rest] = parts["arm"] - parts[SUBPARTS[0]] - parts[SUBPARTS[1]]
            if args.compile:
                del parts[SUBPARTS[0]], parts[SUBPARTS[1]]
        parts_lo["correction: rest (VQ, text, scheduler)"] = parts_lo["correction"] - parts_lo[SUBPARTS[2]]
        parts_hi["correction: rest (VQ, text, scheduler)"] = parts_hi["correction"] - parts_hi[SUBPARTS[2]]
        parts_lo["loop (outside the stages)"] = by_batch[lo]["wall_s"] - sum(by_batch[lo]["stages_s"].values())
        parts_hi["loop (outside the stages)"] = wall_hi - sum(by_batch[hi]["stages_s"].values())
        for k in parts_lo:
            a, c = parts_lo[k] / n_lo, parts_hi[k] / n_hi
            gains[k] = {"per_story_s_lo": a, "per_story_s_hi": c, "speedup": a / c if c > 0 else None,
                        "share_hi": parts_hi[k] / wall_hi}
            sp = f"{a / c:5.2f}x" if c > 0 else "   - "
            print(f"  {k:44s} {a * 1e3:8.1f} -> {c * 1e3:8.1f} ms/story  {sp}  share at batch {hi}: "
                  f"{100 * parts_hi[k] / wall_hi:5.1f} %")
        payload["per_part"] = gains
        if not ok:
            payload["what_would_reach_it"] = what_would_reach_it(gains, speedup)

    # Stage shares per policy at one batch size.
    pb = args.policy_batch
    print(f"\nstage shares at batch {pb} ({min(pb, len(stories))} stories) per correction policy:")
    print(f"  {'policy':12s} {'wall s':>7s} " + " ".join(f"{s:>10s}" for s in STAGES) + f" {'loop':>7s}")
    policies = {}
    for label, policy in POLICIES:
        c = LoopConfig(correct_frames=policy, num_inference_steps=args.steps, strength=args.strength,
                       guidance_scale=args.guidance)
        r = run(stories[:pb], pb, arm, dm, memory, c, timers)
        shares = {s: r["stages_s"][s] / r["wall_s"] for s in STAGES}
        shares["loop"] = 1.0 - sum(shares.values())
        policies[label] = {"policy": policy, **r, "shares": shares}
        print(f"  {label:12s} {r['wall_s']:7.2f} " + " ".join(f"{100 * shares[s]:9.1f}%" for s in STAGES)
              + f" {100 * shares['loop']:6.1f}%")
    payload["policies_at_batch"] = pb
    payload["policies"] = policies
    write_results("bench_batching", payload, args.out)


if __name__ == "__main__":
    main()
