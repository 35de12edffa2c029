"""Long stories: time per frame and peak memory of ACDC over 6, 24, 48 and 96 frames with a windowed toy ARM.

Target: with the toy ARM's context window of 6 frames (`load_arm(context_frames=6)`) and ACDC on every
frame (rule memory, N = 20, t' = 0.5, CFG 7.5), a 96-frame story costs at most 1.2x the time per frame
of a 6-frame story, and its peak memory is flat (at most 1.2x the 6-frame story's), at batch 1 and 8.
For scale: StoryGPT-V reports that Story-LDM runs out of 80 GB of GPU memory at 42 frames.

    .venv/bin/python benchmarks/bench_long_stories.py [--lengths 6 24 48 96] [--batches 1 8] [--short-repeats 3]
        [--steps 20] [--strength 0.5] [--guidance 7.5] [--threads T] [--out benchmarks/results/bench_long_stories.json]

Stories: the first `batch` toy test stories, each one's sentences cycled to the length. Every length
runs in a fresh Python process, the batch sizes in turn, smallest first, so the peak resident memory
(getrusage's ru_maxrss: the process's high-water mark, which counts torch's allocations, unlike
tracemalloc) read after each is that batch's own (a larger batch's peak exceeds a smaller one's). The
child loads the models, warms them up with a 2-frame story at the batch, reads the high-water mark
(models, libraries, warm-up), times one run_stories call frame by frame and reads the mark again.
Reported per length: seconds per frame step of the whole batch (mean: wall / frames; and the median
frame, which the time ratio uses, since a slow spell of a shared machine lasting a few frames moves the
mean of one run but not the median), per story-frame, the loop's stage times, the peak RSS and its rise
over the post-warm-up mark (what the story itself added: its per-frame results are kept, so that part
grows with the length by design). A 6-frame story never fills the ARM's window (frames 1-6 see 0-5
earlier frames), so part of the ratio is the window filling, printed separately for the longest story.
The shortest length, the reference, runs `short-repeats` times (its frames pooled). Two controls for a
shared machine whose speed drifts: the ratio of the correction time per frame (work that does not
depend on the length) shows how far the machine's speed moved between the processes compared, and each
longer story's process runs the reference story once more right after it, which gives the ratio in
the same process and machine state.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import print_machine, ratio_line, verdict, write_results

TARGET_TIME_RATIO = 1.2
TARGET_MEMORY_RATIO = 1.2
CONTEXT_FRAMES = 6
STORY_LDM_OOM = "StoryGPT-V: Story-LDM runs out of 80 GB of GPU memory at 42 frames"


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(args) -> None:
    """Every batch size at one length in this fresh process (smallest batch first); prints one JSON line each."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from acdc_lib.loop import run_stories
    from acdc_lib.memory import RuleMemory
    from acdc_lib.toyworld.models import load_arm, load_dm
    from acdc_lib.toyworld.splits import load_split
    from acdc_lib.toyworld.vocabulary import toy_vocabulary
    from acdc_lib.types import LoopConfig

    arm, dm, memory = load_arm(context_frames=CONTEXT_FRAMES), load_dm(), RuleMemory(toy_vocabulary())
    cfg = LoopConfig(correct_frames="all", num_inference_steps=args.steps, strength=args.strength,
                     guidance_scale=args.guidance)
    starts: list[float] = []  # when each frame's ARM call begins: the frame boundaries
    generate = arm.generate

    def marked(*a, **kw):
        starts.append(time.perf_counter())
        return generate(*a, **kw)

    arm.generate = marked
    for batch in sorted(args.batches):
        base = load_split("test")[:batch]
        cycled = [[s.sentences[i % len(s.sentences)] for i in range(args.length)] for s in base]
        seeds = list(range(batch))
        run_stories([c[:2] for c in cycled], arm, dm, memory, cfg, seeds=seeds)  # warm-up at this batch
        rss_ready = max_rss_mib()
        walls, frame_s, stages = [], [], {}
        for _ in range(args.repeats):
            starts.clear()
            t0 = time.perf_counter()
            out = run_stories(cycled, arm, dm, memory, cfg, seeds=seeds)
            wall = time.perf_counter() - t0
            run_frames = [b - a for a, b in zip(starts, starts[1:] + [t0 + wall])]
            assert len(out.stories[0].frames) == args.length == len(run_frames)
            walls.append(wall)
            frame_s += run_frames
            for k, v in out.timings.items():
                stages[k] = stages.get(k, 0.0) + v / args.repeats
            del out
        rss_peak = max_rss_mib()
        wall = statistics.median(walls)
        ref = None
        if args.ref_length and args.ref_length < args.length:
            # The reference story again, right after the long one in this same process and machine state.
            starts.clear()
            t0 = time.perf_counter()
            out = run_stories([c[:args.ref_length] for c in cycled], arm, dm, memory, cfg, seeds=seeds)
            ref_wall = time.perf_counter() - t0
            ref_frames = [b - a for a, b in zip(starts, starts[1:] + [t0 + ref_wall])]
            ref = {"length": args.ref_length, "wall_s": ref_wall, "frame_s": ref_frames,
                   "median_frame_s": statistics.median(ref_frames), "stages_s": out.timings}
            del out
        print(json.dumps({
            "length": args.length, "batch": batch, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "wall_s": wall, "walls_s": walls, "s_per_frame_step": wall / args.length,
            "s_per_story_frame": wall / (args.length * batch), "median_frame_s": statistics.median(frame_s),
            "frame_s": frame_s, "stages_s": stages, "max_rss_mib_ready": rss_ready, "max_rss_mib_peak": rss_peak,
            "rss_rise_mib": rss_peak - rss_ready, "reference_after": ref}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[6, 24, 48, 96])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--ref-length", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--short-repeats", type=int, default=3,
                   help="runs of the shortest length (it is cheap and the reference of the ratios)")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    info = print_machine()
    print(f"toy ARM with context_frames={CONTEXT_FRAMES}, ACDC on every frame, rule memory, N={args.steps}, "
          f"t'={args.strength}, CFG {args.guidance}; one fresh process per length (batches {sorted(args.batches)} "
          f"in turn)")
    runs: dict[str, list[dict]] = {str(b): [] for b in sorted(args.batches)}
    for n in args.lengths:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--length", str(n),
               "--batches", *map(str, args.batches), "--steps", str(args.steps), "--strength", str(args.strength),
               "--guidance", str(args.guidance), "--repeats", str(args.short_repeats if n == min(args.lengths) else 1),
               "--ref-length", str(min(args.lengths))]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-4000:])
            raise SystemExit(f"the child for length {n} failed (exit {res.returncode})")
        for line in res.stdout.strip().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                runs[str(row["batch"])].append(row)

    summary: dict[str, dict] = {}
    for b, rows in runs.items():
        print(f"batch {b}:")
        for row in rows:
            n, st = row["length"], row["stages_s"]
            print(f"  {n:3d} frames: {row['wall_s']:6.2f} s; per frame step {row['s_per_frame_step'] * 1e3:6.1f} ms "
                  f"mean, {row['median_frame_s'] * 1e3:6.1f} ms median ({row['s_per_story_frame'] * 1e3:5.1f} ms per "
                  f"story-frame; arm {st['arm'] / n * 1e3:.1f}, correction {st['correction'] / n * 1e3:.1f}); peak RSS "
                  f"{row['max_rss_mib_peak']:.0f} MiB (+{row['rss_rise_mib']:.1f} MiB over the warmed-up process)")
        longest = rows[-1]
        if longest["length"] > CONTEXT_FRAMES:
            fs = longest["frame_s"]
            fill, steady = fs[:CONTEXT_FRAMES], fs[CONTEXT_FRAMES:]
            k = max(1, len(steady) // 10)
            print(f"  within the {longest['length']}-frame story (medians): frames 1-{CONTEXT_FRAMES} (the ARM's "
                  f"window "
                  f"filling) {1e3 * statistics.median(fill):.1f} ms, frames {CONTEXT_FRAMES + 1}-{len(fs)} (full "
                  f"window) {1e3 * statistics.median(steady):.1f} ms; their first and last tenth "
                  f"{1e3 * statistics.median(steady[:k]):.1f} and {1e3 * statistics.median(steady[-k:]):.1f} ms")
        first, last = rows[0], rows[-1]
        if first["length"] != last["length"]:
            t_ratio = last["median_frame_s"] / first["median_frame_s"]
            t_ratio_mean = last["s_per_frame_step"] / first["s_per_frame_step"]
            m_ratio = last["max_rss_mib_peak"] / first["max_rss_mib_peak"]
            label = f"batch {b}: {last['length']}-frame / {first['length']}-frame"
            print("  " + ratio_line(f"{label} time per frame (median frame)", t_ratio, TARGET_TIME_RATIO,
                                    higher_is_better=False) + f" (mean frame: {t_ratio_mean:.2f}x)")
            # Correction does the same work per frame at any length: its ratio gauges how far the machine's
            # speed moved between the two processes (1.0 on a steady machine).
            gauge = ((last["stages_s"]["correction"] / last["length"])
                     / (first["stages_s"]["correction"] / first["length"]))
            print(f"  control: correction time per frame (the same work at any length), {last['length']} / "
                  f"{first['length']} frames: {gauge:.2f}x (1.0 on a steady machine; the rest of the time ratio is the "
                  f"ARM's)")
            past = [r for r in rows if r["length"] >= 4 * CONTEXT_FRAMES]  # long enough to be mostly past the window
            past_ratio = last["median_frame_s"] / past[0]["median_frame_s"] if len(past) > 1 else None
            if past_ratio is not None:
                print(f"  past the window: {last['length']}-frame / {past[0]['length']}-frame time per frame (median "
                      f"frame): {past_ratio:.2f}x")
            same = last.get("reference_after")
            same_ratio = last["median_frame_s"] / same["median_frame_s"] if same else None
            if same:
                print(f"  same process: the {first['length']}-frame story run right after the {last['length']}-frame "
                      f"one "
                      f"took {same['median_frame_s'] * 1e3:.1f} ms per frame (median): {last['length']}-frame / "
                      f"{first['length']}-frame = {same_ratio:.2f}x in the same machine state")
            print("  " + ratio_line(f"{label} peak RSS", m_ratio, TARGET_MEMORY_RATIO, higher_is_better=False)
                  + f" ({first['max_rss_mib_peak']:.0f} -> {last['max_rss_mib_peak']:.0f} MiB; the story itself "
                  f"added {first['rss_rise_mib']:.1f} -> {last['rss_rise_mib']:.1f} MiB)")
            summary[b] = {
                "time_ratio": t_ratio, "time_ratio_mean": t_ratio_mean, "correction_per_frame_ratio": gauge,
                "time_ratio_same_process": same_ratio, "time_ratio_past_window": past_ratio,
                "time_pass": verdict(t_ratio, TARGET_TIME_RATIO, False)[1],
                "memory_ratio": m_ratio, "memory_pass": verdict(m_ratio, TARGET_MEMORY_RATIO, False)[1]}
    print(f"for comparison: {STORY_LDM_OOM}; here the peak stays flat because the ARM's window holds "
          f"{CONTEXT_FRAMES} frames and the loop keeps only CPU copies of each frame's results")
    write_results("bench_long_stories", {
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "length", "repeats")},
        "context_frames": CONTEXT_FRAMES,
        "target": {"time_ratio_max": TARGET_TIME_RATIO, "memory_ratio_max": TARGET_MEMORY_RATIO},
        "reference": STORY_LDM_OOM, "runs": runs, "summary": summary,
        "pass": all(s["time_pass"] and s["memory_pass"] for s in summary.values()) if summary else None,
    }, args.out)


if __name__ == "__main__":
    main()
