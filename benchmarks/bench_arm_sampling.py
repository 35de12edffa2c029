"""The toy ARM's sampling, compiled (compile=True) against eager, on the same stories with the same generators.

Target: at batch 32, the compiled decode step samples every frame of the stories at least 2x as fast as the
eager loop, and draws the same codes.

    .venv/bin/python benchmarks/bench_arm_sampling.py [--stories 32] [--batch 32] [--repeats 2] [--threads T]
        [--profile-batches 1 8 32] [--out benchmarks/results/bench_arm_sampling.json]

Both ARMs sample the 6 frames of the first `stories` toy test stories in chunks of `batch`, each frame
conditioned on their own earlier frames (no correction in between, so the ARM alone is timed), story k
drawing from a generator seeded k. One untimed run first compiles the step (its time is printed apart).
Where the time goes (eager, at each of `profile-batches`): the LM's prefill of the context, its one-code
decode steps, the slot embeddings, the inverse-CDF draw and the rest (context ids, CFG, top-k, the
history of ids); then the VQ encode of one frame, batched as the ARM does it and one row at a time as
the toy corrector does it.
"""
from __future__ import annotations

import argparse
import time

import torch

import acdc_lib.toyworld.models as M
from _common import Timers, print_machine, ratio_line, stats, write_results
from acdc_lib.toyworld.splits import load_split

TARGET_SPEEDUP = 2.0  # compiled over eager, toy ARM sampling at batch 32
PARTS = ("LM prefill", "LM decode step", "slot embeddings", "draw", "rest")


def sample(arm, stories, batch: int, timers: Timers | None = None) -> torch.LongTensor:
    """(stories, frames, 64) codes of every frame of `stories`, in chunks of `batch`, story k seeded k."""
    out = []
    for start in range(0, len(stories), batch):
        chunk = stories[start:start + batch]
        gens = [torch.Generator().manual_seed(start + k) for k in range(len(chunk))]
        prev = torch.empty(len(chunk), 0, arm.tokens_per_frame, dtype=torch.long)
        for i in range(len(chunk[0].sentences)):
            if timers is None:
                tok = arm.generate([s.sentences[:i + 1] for s in chunk], prev, gens)
            else:
                with timers.part("generate"):
                    tok = arm.generate([s.sentences[:i + 1] for s in chunk], prev, gens)
            prev = torch.cat([prev, tok[:, None]], 1)
        out.append(prev)
    return torch.cat(out)


def profile(arm, corrector, stories, batches) -> dict:
    """Eager time per generated frame of one story, split by part, at each batch size."""
    timers = Timers()
    undo = [timers.wrap(arm.lm, "forward", lambda *a, **k: PARTS[0] if (
        k.get("input_ids", k.get("inputs_embeds"))).shape[1] > 1 else PARTS[1])]
    if arm.slots is not None:
        undo.append(timers.wrap(arm.slots, "forward", PARTS[2]))
    draw = M.draw_rows

    def timed_draw(*args):
        with timers.part(PARTS[3]):
            return draw(*args)
    M.draw_rows = timed_draw
    rows = {}
    try:
        for b in batches:
            timers.reset()
            subset = stories[:max(b, 4)]
            codes = sample(arm, subset, b, timers)
            t = dict(timers.totals)
            t[PARTS[4]] = t["generate"] - sum(t.get(p, 0.0) for p in PARTS[:4])
            frames = codes.shape[0] * codes.shape[1]
            img = arm.decode(codes[:b, -1])
            t0 = time.perf_counter()
            arm.encode(img)
            enc_batched = (time.perf_counter() - t0) / img.shape[0]
            t0 = time.perf_counter()
            corrector._to_model_space(img, None)
            enc_rows = (time.perf_counter() - t0) / img.shape[0]
            rows[b] = {"per_frame_ms": {p: 1e3 * t.get(p, 0.0) / frames for p in ("generate", *PARTS)},
                       "decode_step_ms": 1e3 * t.get(PARTS[1], 0.0) / max(timers.calls.get(PARTS[1], 1), 1),
                       "vq_encode_ms_per_frame": {"arm, batched": 1e3 * enc_batched,
                                                  "corrector, per row": 1e3 * enc_rows}}
    finally:
        M.draw_rows = draw
        for u in undo:
            u()
    print("eager toy ARM, ms per generated frame of one story (share of generate):")
    print(f"  {'batch':>5s} {'generate':>9s} " + " ".join(f"{p:>16s}" for p in PARTS)
          + f" {'step call':>10s} {'VQ enc batched':>15s} {'VQ enc per row':>15s}")
    for b, r in rows.items():
        pf = r["per_frame_ms"]
        print(f"  {b:5d} {pf['generate']:9.2f} " + " ".join(
            f"{pf[p]:7.2f} ({100 * pf[p] / pf['generate']:4.1f}%)" for p in PARTS)
            + f" {r['decode_step_ms']:8.2f}ms {r['vq_encode_ms_per_frame']['arm, batched']:13.2f}ms"
            f" {r['vq_encode_ms_per_frame']['corrector, per row']:13.2f}ms")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stories", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch1-stories", type=int, default=4, help="stories also sampled at batch 1 (0: none)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--profile-batches", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = print_machine()
    stories = load_split("test")[: args.stories]
    eager, compiled = M.load_arm(), M.load_arm(compile=True)
    print(f"{len(stories)} toy test stories of {len(stories[0])} frames at batch {args.batch}, the shipped ARM "
          f"(CFG {eager.guidance_scale:g}, top-k {eager.top_k})")

    t0 = time.perf_counter()
    sample(compiled, stories[:args.batch], args.batch)  # compiles the step for this batch's row count
    if len(stories) % args.batch:  # and for the last, smaller chunk's
        sample(compiled, stories[:len(stories) % args.batch], args.batch)
    compile_s = time.perf_counter() - t0
    sample(eager, stories[:2], 2)
    times, codes = {}, {}
    for name, arm in (("eager", eager), ("compiled", compiled)):
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            codes[name] = sample(arm, stories, args.batch)
            runs.append(time.perf_counter() - t0)
        times[name] = stats(runs)
        n_frames = codes[name].shape[0] * codes[name].shape[1]
        print(f"{name:9s}: {times[name]['best']:7.2f} s best of {args.repeats} "
              f"({1e3 * times[name]['best'] / n_frames:6.2f} ms per frame of one story)")
    print(f"compile (first run at batch {args.batch}, included nowhere else): {compile_s:.1f} s")
    differ = int((codes["compiled"] != codes["eager"]).sum())
    frames_differ = int((codes["compiled"] != codes["eager"]).any(-1).sum())
    print(f"codes that differ, compiled vs eager: {differ} of {codes['eager'].numel()} "
          f"({frames_differ} of {codes['eager'].shape[0] * codes['eager'].shape[1]} frames)")
    speedup = times["eager"]["best"] / times["compiled"]["best"]
    print(ratio_line(f"toy ARM sampling at batch {args.batch}, compiled / eager speed (same codes: "
                     f"{'yes' if differ == 0 else 'NO'})", speedup, TARGET_SPEEDUP, higher_is_better=True))
    payload = {"machine": info, "settings": vars(args), "target": {"speedup_min": TARGET_SPEEDUP},
               "times_s": times, "compile_s": compile_s, "codes_differ": differ, "frames_differ": frames_differ,
               "speedup": speedup}
    if args.batch1_stories:  # reported, no target: at batch 1 the eager loop is bound by per-op overhead
        one = stories[:args.batch1_stories]
        sample(compiled, one[:1], 1)  # the step for one row
        t1 = {}
        for name, arm in (("eager", eager), ("compiled", compiled)):
            t0 = time.perf_counter()
            sample(arm, one, 1)
            t1[name] = time.perf_counter() - t0
        payload["batch1_s"] = t1
        print(f"toy ARM sampling at batch 1 ({len(one)} stories), compiled / eager speed: "
              f"{t1['eager'] / t1['compiled']:.2f}x (reported; eager {1e3 * t1['eager'] / (6 * len(one)):.1f} ms, "
              f"compiled {1e3 * t1['compiled'] / (6 * len(one)):.1f} ms per frame)")
    if args.profile_batches:
        payload["profile"] = profile(eager, M.load_dm(), stories, args.profile_batches)
    write_results("bench_arm_sampling", payload, args.out)


if __name__ == "__main__":
    main()
