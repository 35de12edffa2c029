"""Run the story experiment's rows from the command line, sharded across processes with accelerate.

On a node with K GPUs, each process takes its share of the stories onto its own GPU and writes its
per-story files into one folder; notebook 03, pointed at that folder (RUN_DIR) with the same settings,
then finds every row done and only scores it:

    accelerate launch --multi_gpu --num_processes 8 -m acdc_lib.experiment \\
        --stories data/stories/test.jsonl --first 200 --arm emu3 --arm-id BAAI/Emu3-Gen-hf --arm-option image_size=256 \\
        --dm sd --dm-id stable-diffusion-v1-5/stable-diffusion-v1-5 --dm-resolution 512 \\
        --no-ground-truth --steps 50 --dtype float16 --out papermill_runs/out/gpu-emu3-sd15-story-runs

One process (plain `python -m acdc_lib.experiment ...`) runs them all. Seeds follow each story's index
in the list, so the files do not depend on the number of processes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from acdc_lib.components import parse_options
from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH
from acdc_lib.experiment.parts import DTYPES, MEMORIES, build_parts
from acdc_lib.experiment.rows import ExperimentConfig, _process_state, run_experiment
from acdc_lib.stories import read_stories


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m acdc_lib.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--stories", required=True, help="a story file (JSONL, the repository's story format)")
    p.add_argument("--first", type=int, default=None, help="only the first K stories of the file")
    p.add_argument("--out", required=True, help="the run folder (notebook 03's RUN_DIR)")
    p.add_argument("--rows", nargs="+", default=None, help="rows to run (default: all these parts allow)")
    p.add_argument("--arm", default="toy")
    p.add_argument("--arm-id", default=None)
    p.add_argument("--arm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the ARM (repeatable), e.g. image_size=256 or top_k=1000; values are JSON")
    p.add_argument("--dm", default="toy")
    p.add_argument("--dm-id", default=None)
    p.add_argument("--dm-resolution", type=int, default=None)
    p.add_argument("--memory", default="rules", choices=MEMORIES)
    p.add_argument("--llm-model", default="gpt-4o-mini")
    p.add_argument("--llm-base-url", default=None)
    p.add_argument("--llm-cache", default=None)
    p.add_argument("--no-ground-truth", action="store_true", help="stories without true frames (no oracle row)")
    p.add_argument("--strength", type=float, default=PAPER_STRENGTH)
    p.add_argument("--guidance", type=float, default=PAPER_GUIDANCE_SCALE)
    p.add_argument("--steps", type=int, default=PAPER_NUM_INFERENCE_STEPS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: this process's accelerate device")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    args = p.parse_args(argv)
    try:
        args.arm_options = parse_options(args.arm_option)
    except ValueError as err:
        p.error(str(err))
    if args.first is not None and args.first < 1:
        p.error(f"--first must be a positive number of stories, got {args.first}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stories = read_stories(args.stories)[: args.first]
    state = _process_state()
    device = args.device or str(state.device)
    parts = build_parts(arm=args.arm, arm_id=args.arm_id, arm_options=args.arm_options, dm=args.dm, dm_id=args.dm_id,
                        dm_resolution=args.dm_resolution, evaluator=None, ground_truth=None if args.no_ground_truth
                        else "toy", memory=args.memory, device=device, dtype=args.dtype, llm_model=args.llm_model,
                        llm_base_url=args.llm_base_url, llm_cache=args.llm_cache, seed=args.seed)
    config = ExperimentConfig(rows=tuple(args.rows or parts.rows), strength=args.strength,
                              guidance_scale=args.guidance, num_inference_steps=args.steps,
                              batch_size=args.batch_size, base_seed=args.seed)
    done = run_experiment(stories, Path(args.out), arm=parts.arm, corrector=parts.corrector, memory=parts.memory,
                          reference=parts.reference, config=config, device=device,
                          distributed=state.num_processes > 1, progress=state.is_local_main_process)
    print(f"process {state.process_index}/{state.num_processes}: computed "
          + ", ".join(f"{r} {len(v)}" for r, v in done.items()) + f" stories into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
