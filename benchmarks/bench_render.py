"""Render rate of the toy-world renderer: 10,000 grammar frames, frames/s and the ratio to the target.

Target: 10,000 frames in under 10 s on 2 CPU cores, i.e. >= 1,000 frames/s.

    .venv/bin/python benchmarks/bench_render.py [--frames 10000] [--size 32] [--repeats 3]

The states come from the story grammar (seed 0), so the mix of species, places, poses and counts is
the training data's. The first (untimed) call builds the cached backgrounds and tables; the best of
`repeats` timed runs is reported, with the median, since the machine may be shared.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import print_machine, ratio_line, write_results

from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.render import DEFAULT_SIZE, render_states
from acdc_lib.toyworld.world import SceneState

TARGET_FPS = 1000.0  # 10,000 frames in 10 s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)
    p.add_argument("--supersample", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    info = print_machine()

    n_stories = -(-args.frames // 6)
    states = [SceneState.from_dict(d) for s in generate_stories(n_stories, seed=0) for d in s.states][: args.frames]
    render_states(states[:64], size=args.size, supersample=args.supersample)  # warm the caches
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = render_states(states, size=args.size, supersample=args.supersample, batch_size=args.batch_size)
        times.append(time.perf_counter() - t0)
    best, med = min(times), statistics.median(times)
    fps = len(states) / best
    print(f"rendered {out.images.shape[0]} frames of {args.size}x{args.size} (supersample {args.supersample}) "
          f"on {torch.get_num_threads()} threads")
    print(f"best {best:.2f} s, median {med:.2f} s over {args.repeats} runs")
    print(ratio_line(f"frames rendered per second (median {len(states) / med:.0f})", fps, TARGET_FPS,
                     higher_is_better=True, unit=" frames/s"))
    write_results("bench_render", {"machine": info, "frames": len(states), "size": args.size,
                                   "supersample": args.supersample, "seconds": {"best": best, "median": med},
                                   "frames_per_s": fps, "target": {"frames_per_s_min": TARGET_FPS}})


if __name__ == "__main__":
    main()
