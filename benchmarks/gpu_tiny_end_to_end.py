"""The real path end to end on tiny random models, on CPU (float32) and CUDA (float32 and float16).

Tiny Emu3 and Janus ARMs (random, built from configs as the unit tests build them) and a tiny Stable
Diffusion img2img corrector run ACDC (`run_stories`, every frame corrected) on the same toy stories
with the same seeds on each device and dtype; the script records how far the runs drift apart: the
share of ARM tokens that agree with the CPU float32 run and the largest pixel difference of the
final frames. A tiny random model says nothing about quality; it checks that the CUDA and half-
precision paths run and how much precision alone moves a sampled story.

    python benchmarks/gpu_tiny_end_to_end.py [--out results.json] [--frames 3] [--stories 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit")]

import tiny_diffusers as td  # noqa: E402
from tiny_backends import tiny_emu3, tiny_janus  # noqa: E402

from acdc_lib.backends.arms import Emu3ARM, JanusARM  # noqa: E402
from acdc_lib.loop import run_stories  # noqa: E402
from acdc_lib.memory import NoMemory  # noqa: E402
from acdc_lib.sdedit import PipelineCorrector  # noqa: E402
from acdc_lib.stories import read_stories  # noqa: E402
from acdc_lib.types import LoopConfig  # noqa: E402


def run(kind: str, device: str, dtype: torch.dtype, stories, seeds) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(S, N, n) ARM tokens, (S, N, 3, H, W) final frames and seconds of one ACDC run."""
    model, tok = (tiny_emu3 if kind == "emu3" else tiny_janus)(seed=0)
    arm = (Emu3ARM if kind == "emu3" else JanusARM)(model, tok, device=device, dtype=dtype, top_k=8)
    corrector = PipelineCorrector(td.tiny_sd_img2img_pipeline(seed=0).to(device, dtype))
    t0 = time.perf_counter()
    out = run_stories(stories, arm, corrector, NoMemory(), LoopConfig(num_inference_steps=10), seeds=seeds,
                      device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = torch.stack([torch.stack([f.arm_tokens.cpu() for f in r.frames]) for r in out.stories])
    frames = torch.stack([r.final_images().float().cpu() for r in out.stories])
    return tokens, frames, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_tiny_end_to_end.json"))
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--stories", type=int, default=2)
    args = p.parse_args()
    stories = [s for s in read_stories(ROOT / "data" / "stories" / "test.jsonl")[: args.stories]]
    stories = [type(s)(s.story_id, s.sentences[: args.frames]) for s in stories]
    seeds = list(range(len(stories)))
    settings = [("cpu", torch.float32)] + ([("cuda", torch.float32), ("cuda", torch.float16)]
                                           if torch.cuda.is_available() else [])
    report = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "torch": torch.__version__, "stories": len(stories), "frames": args.frames, "runs": {}}
    for kind in ("emu3", "janus"):
        ref_tokens = ref_frames = None
        dev_ref: dict[str, tuple] = {}  # per device, its float32 run (CUDA draws other random numbers than CPU)
        for device, dtype in settings:
            name = f"{kind} {device} {str(dtype).removeprefix('torch.')}"
            try:
                tokens, frames, seconds = run(kind, device, dtype, stories, seeds)
            except Exception as e:  # record and go on: one failing path must not hide the others
                report["runs"][name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name}: FAILED {type(e).__name__}: {e}")
                continue
            if ref_tokens is None:
                ref_tokens, ref_frames = tokens, frames
            dev_tokens, dev_frames = dev_ref.setdefault(device, (tokens, frames))
            same = (tokens == ref_tokens).float()
            rec = {"seconds": round(seconds, 3), "tokens_equal_to_cpu_fp32": round(float(same.mean()), 4),
                   "first_frame_tokens_equal": round(float(same[:, 0].mean()), 4),
                   "max_pixel_diff": round(float((frames - ref_frames).abs().max()), 5),
                   "tokens_equal_to_same_device_fp32": round(float((tokens == dev_tokens).float().mean()), 4),
                   "max_pixel_diff_to_same_device_fp32": round(float((frames - dev_frames).abs().max()), 5),
                   "mean_pixel_diff_to_same_device_fp32": round(float((frames - dev_frames).abs().mean()), 5),
                   "frames_finite_in_range": bool(torch.isfinite(frames).all() and frames.min() >= 0
                                                  and frames.max() <= 1)}
            report["runs"][name] = rec
            print(f"{name}: {rec}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
