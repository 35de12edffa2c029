"""SDEdit correction against its compute floor: UNetCorrector.correct() of 16 toy frames vs its UNet forwards alone.

Target: correct() of 16 toy frames at N = 20, t' = 0.5, CFG 7.5 takes at most 1.10x its compute floor,
the int(N t') = 10 UNet forwards that must run (CFG as one batch of 2 x 16 = 32), replayed alone on the
very latents, timesteps and text embeddings the call fed the UNet.

    .venv/bin/python benchmarks/bench_correction.py [--frames 16] [--steps 20] [--strength 0.5]
        [--guidance 7.5] [--repeats 9] [--threads T] [--out benchmarks/results/bench_correction.json]

Frames: the rendered first frames of the first `frames` test stories, prompted with their first
sentences; each row has its own generator (as in the loop). After two untimed calls, `repeats` pairs of
one timed correct() and one timed replay of the floor run back to back; the ratio is the median of the
pairs' ratios (a pair shares the machine's state, so a slow spell or a clock change moves both), with
the best and median of each printed beside it. A separate instrumented pass breaks correct() down into
text encoding (the prompts and the empty prompt), VQ encode, VQ decode, UNet forwards, scheduler calls
and the rest (input checks, the noise draw, CFG arithmetic, Python), each with its share. Finally it
measures the one candidate speed-up found (encoding the batch in one VQ call instead of one call per
row) and whether it would leave the outputs bitwise identical.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from _common import Timers, print_machine, ratio_line, stats, time_repeats, verdict, write_results
from acdc_lib.loop import story_generators
from acdc_lib.sdedit import count_unet_calls, steps_for_strength
from acdc_lib.toyworld.models import load_dm
from acdc_lib.toyworld.render import render_states
from acdc_lib.toyworld.splits import load_split

TARGET_RATIO = 1.10  # correct() / UNet-forward floor

PARTS = ("UNet forwards", "VQ decode (latents -> images)", "VQ encode (images -> latents)", "text: prompts",
         "text: empty prompt", "scheduler (set_timesteps, add_noise, scale, step)")
OTHER = "other (checks, noise draw, CFG arithmetic, Python)"


def frames_and_prompts(n: int) -> tuple[torch.Tensor, list[str]]:
    stories = load_split("test")[:n]
    if len(stories) < n:
        raise SystemExit(f"the test split has only {len(stories)} stories; ask for fewer frames")
    return render_states([s.states[0] for s in stories]).images, [s.sentences[0] for s in stories]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="N, the scheduler's full number of steps")
    p.add_argument("--strength", type=float, default=0.5, help="t'")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_correction.json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = print_machine()

    dm = load_dm()
    images, prompts = frames_and_prompts(args.frames)
    B, steps = len(prompts), steps_for_strength(args.steps, args.strength)

    def correct():
        gens = [story_generators(i)[1] for i in range(B)]
        return dm.correct(images, prompts, strength=args.strength, guidance_scale=args.guidance,
                          num_inference_steps=args.steps, generators=gens)

    # The floor's inputs: exactly what one correct() call feeds the UNet.
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def grab(mod, a, kw):
        sample = a[0] if a else kw["sample"]
        t = a[1] if len(a) > 1 else kw["timestep"]
        captured.append((sample.clone(), t.clone() if torch.is_tensor(t) else t, kw["encoder_hidden_states"].clone()))

    handle = dm.unet.register_forward_pre_hook(grab, with_kwargs=True)
    correct()
    handle.remove()
    shapes, counter = count_unet_calls(dm.unet)
    correct()  # second warm-up, counting UNet calls
    counter.remove()
    assert len(shapes) == len(captured) == steps, (len(shapes), len(captured), steps)
    print(f"correct(): {B} frames {tuple(images.shape[1:])}, N={args.steps}, t'={args.strength}, "
          f"CFG {args.guidance}: {len(shapes)} UNet forwards of batch {shapes[0][0]} on {tuple(shapes[0][1:])} latents")

    @torch.no_grad()
    def floor():
        for sample, t, emb in captured:
            dm.unet(sample, t, encoder_hidden_states=emb)

    floor()  # warm
    # Interleave the two measurements so a burst of background load hits both alike.
    t_correct, t_floor = [], []
    for _ in range(args.repeats):
        t_correct += time_repeats(correct, 1)
        t_floor += time_repeats(floor, 1)
    sc, sf = stats(t_correct), stats(t_floor)
    pair_ratios = [c / f for c, f in zip(t_correct, t_floor)]
    ratio = statistics.median(pair_ratios)
    ratio_best = sc["best"] / sf["best"]
    print(f"correct():           best {sc['best'] * 1e3:8.1f} ms, median {sc['median'] * 1e3:8.1f} ms "
          f"({args.repeats} runs)")
    print(f"floor ({steps} forwards): best {sf['best'] * 1e3:8.1f} ms, median {sf['median'] * 1e3:8.1f} ms")
    print(ratio_line("correct() / UNet floor (median of back-to-back pairs)", ratio, TARGET_RATIO,
                     higher_is_better=False))
    print(f"  (pairs from {min(pair_ratios):.3f}x to {max(pair_ratios):.3f}x; best of each: {ratio_best:.3f}x)")

    # Break-down: time the parts inside correct() (instrumented calls; the wrappers cost microseconds).
    timers = Timers(dm.device)
    undo = [
        timers.wrap(dm.unet, "forward", PARTS[0]),
        timers.wrap(dm, "_to_images", PARTS[1]),
        timers.wrap(dm, "_to_model_space", PARTS[2]),
        timers.wrap(dm, "encode_prompts", lambda prompts_: PARTS[4] if list(prompts_) == [""] else PARTS[3]),
    ]
    for attr in ("set_timesteps", "add_noise", "scale_model_input", "step", "set_begin_index"):
        if hasattr(dm.scheduler, attr):
            undo.append(timers.wrap(dm.scheduler, attr, PARTS[5]))
    per_part: dict[str, list[float]] = {k: [] for k in (*PARTS, OTHER)}
    totals = []
    for _ in range(args.repeats):
        timers.reset()
        with timers.part("total"):
            correct()
        total = timers.totals.pop("total")
        totals.append(total)
        for k in PARTS:
            per_part[k].append(timers.totals.get(k, 0.0))
        per_part[OTHER].append(total - sum(timers.totals.get(k, 0.0) for k in PARTS))
    for u in undo:
        u()
    total_med = statistics.median(totals)
    breakdown = {k: statistics.median(v) for k, v in per_part.items()}
    print(f"\nbreak-down of correct() (median of {args.repeats} instrumented calls, total {total_med * 1e3:.1f} ms):")
    for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"  {k:52s} {v * 1e3:8.1f} ms  {100 * v / total_med:5.1f} %")
    unet_loop = breakdown[PARTS[0]]
    beyond = {
        "UNet forwards inside correct() minus the floor": unet_loop - sf["median"],
        **{k: breakdown[k] for k in (*PARTS[1:], OTHER)},
    }
    excess = total_med - sf["median"]
    print(f"\ntime beyond the floor: {excess * 1e3:.1f} ms = {100 * excess / sf['median']:.1f} % of the floor "
          f"(median figures), of which:")
    for k, v in beyond.items():
        print(f"  {k:52s} {v * 1e3:8.1f} ms  {100 * v / sf['median']:5.1f} % of the floor")
    models = unet_loop + breakdown[PARTS[1]] + breakdown[PARTS[2]] + breakdown[PARTS[3]] + breakdown[PARTS[4]]
    print(f"correct() / all model compute (UNet + VQ encode/decode + text encoder): {total_med / models:.3f}x "
          f"(the rest is scheduler and Python: {100 * (total_med - models) / total_med:.1f} %)")
    vq_floor = sf["median"] + breakdown[PARTS[1]] + breakdown[PARTS[2]]
    print(f"lowest ratio reachable without faster VQ encode/decode: (floor + VQ encode + VQ decode) / floor = "
          f"{vq_floor / sf['median']:.3f}x")

    # The candidate speed-up: one batched VQ encode instead of B calls of one row.
    with torch.no_grad():
        x = images.to(dm.device, dm.dtype) * 2.0 - 1.0
        rows = lambda: torch.cat([dm.vae.encode(x[b:b + 1]).latents for b in range(B)])  # noqa: E731
        batched = lambda: dm.vae.encode(x).latents  # noqa: E731
        rows(), batched()
        same = torch.equal(rows(), batched())
        max_diff = (rows() - batched()).abs().max().item()
        t_rows, t_batched = stats(time_repeats(rows, args.repeats)), stats(time_repeats(batched, args.repeats))
    print(f"\ncandidate: VQ encode of the {B} frames in one batch instead of one call per row: "
          f"{t_rows['median'] * 1e3:.1f} -> {t_batched['median'] * 1e3:.1f} ms; bitwise identical: {same} "
          f"(max |diff| {max_diff:.3g}) -> {'safe' if same else 'NOT applied (it changes the outputs)'}")

    measured_over_target, ok = verdict(ratio, TARGET_RATIO, higher_is_better=False)
    write_results("bench_correction", {
        "machine": info,
        "settings": {"frames": B, "num_inference_steps": args.steps, "strength": args.strength,
                     "guidance_scale": args.guidance, "unet_calls": len(shapes), "unet_batch": shapes[0][0],
                     "repeats": args.repeats},
        "target": {"ratio_max": TARGET_RATIO},
        "correct_s": sc, "floor_s": sf,
        "ratio": ratio, "pair_ratios": pair_ratios, "ratio_best_of_each": ratio_best,
        "measured_over_target": measured_over_target, "pass": ok,
        "breakdown_s": breakdown, "breakdown_total_s": total_med,
        "breakdown_share": {k: v / total_med for k, v in breakdown.items()},
        "beyond_floor_s": beyond,
        "ratio_to_all_model_compute": total_med / models,
        "ratio_floor_plus_vq": vq_floor / sf["median"],
        "candidate_batched_vq_encode": {"rows_s": t_rows, "batched_s": t_batched, "bitwise_identical": same,
                                        "max_abs_diff": max_diff},
    }, args.out)


if __name__ == "__main__":
    main()
