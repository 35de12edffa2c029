"""The parts of a story experiment from names, as notebook 03 and the command line take them.

    parts = build_parts(arm="emu3", arm_id="BAAI/Emu3-Gen-hf", dm="sd", dm_id="<an SD v1.5 id or folder>",
                        evaluator="real", ground_truth=None, memory="rules", device="cuda", dtype="float16")
    run_experiment(stories, out, arm=parts.arm, corrector=parts.corrector, memory=parts.memory,
                   reference=parts.reference, config=ExperimentConfig(rows=parts.rows, ...))

Every part comes through `acdc_lib.components`, so the names are whatever the installed backends offer
(this package: the toy world's "toy" parts, and "emu3" / "janus" ARMs, the "sd" corrector and the
"real" evaluator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from acdc_lib import components
from acdc_lib.components import DTYPES, MEMORIES, build_memory, parse_dtype

# the memory row of the table for each memory (no memory: only the no-memory ACDC row)
MEMORY_ROWS = {"rules": "acdc_rules", "llm": "acdc_llm", "none": None}


@dataclass
class Parts:
    """What `run_experiment` and `summarise` need, built from names.

    Args:
        arm, corrector, evaluator: the ARM, Corrector (also the DM-only row's TextToImage) and Evaluator.
        ground_truth: a GroundTruth or None (stories without true frames).
        memory: the memory of the memory row, or None.
        rows: the table's rows these parts can run, in order.
        names: the names and ids they were built from (for the results file).
        generator_rows: {row: story generator} of the whole-story generator rows (`run_experiment`'s
            `generator_rows`), e.g. {"storygpt_v": StoryGPT-V-toy}; empty without one.
    """

    arm: Any
    corrector: Any
    evaluator: Any
    ground_truth: Any
    memory: Any
    rows: tuple[str, ...]
    names: dict[str, Any]
    generator_rows: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> Callable | None:
        """story -> its true frames, for the oracle row (None without a ground truth)."""
        return self.ground_truth.reference_images if self.ground_truth is not None else None


def experiment_rows(memory: str, ground_truth: bool) -> tuple[str, ...]:
    """The table's rows: DM only, ARM, ACDC with the memory (unless "none"), ACDC without, and the
    oracle-context ARM when true frames exist."""
    if memory not in MEMORIES:
        raise ValueError(f"MEMORY {memory!r} is not available; allowed: {list(MEMORIES)}")
    rows = ["dm_only", "arm"] + ([MEMORY_ROWS[memory]] if MEMORY_ROWS[memory] else []) + ["acdc_nomem"]
    return tuple(rows + (["arm_true_ctx"] if ground_truth else []))


def build_arm(name: str, model_id: str | None = None, options: dict | None = None, *, device: str = "cpu",
              dtype: str | torch.dtype | None = "float32") -> Any:
    """The ARM `name` with its builder's keyword `options`; an "dtype" among them (a name or a torch dtype) sets
    the ARM's dtype in place of `dtype`, so an ARM can run in bfloat16 (as Emu3's and Janus-Pro's authors run
    them) beside a corrector in float16."""
    kw = dict(options or {})
    arm_dtype = parse_dtype(kw.pop("dtype")) if "dtype" in kw else parse_dtype(dtype)
    return components.build("arm", name, model_id=model_id, device=device, dtype=arm_dtype, **kw)


def build_parts(*, arm: str = "toy", arm_id: str | None = None, arm_options: dict | None = None, dm: str = "toy", dm_id: str | None = None,
                dm_resolution: int | None = None, evaluator: str | None = "toy", evaluator_id: str | None = None,
                evaluator_options: dict | None = None,
                ground_truth: str | None = "toy", memory: str = "rules", vocabulary: str | None = "toy",
                device: str = "cpu", dtype: str | torch.dtype | None = "float32", story_generator: str | None = None,
                story_generator_id: str | None = None, story_generator_options: dict | None = None, **llm: Any) -> Parts:
    """Build the ARM, corrector, evaluator, ground truth and memory of a story experiment from names.

    Args:
        arm, arm_id: ARM name (`components.available("arm")`) and its model id or folder (None: the
            backend's default, e.g. the shipped toy checkpoints); arm_options: more keyword options of
            its builder (sampling settings, `context_frames`, Emu3's `image_size`); its "dtype" (a name
            or a torch dtype) sets the ARM's dtype alone, as the authors run their ARMs in bfloat16
            beside a float16 Stable Diffusion; without it the ARM takes `dtype`.
        dm, dm_id, dm_resolution: the corrector (and DM-only row's text-to-image model), its id or folder,
            and the side it runs at (e.g. 512 for SD v1.5; None: the input's size).
        evaluator, evaluator_id: the scoring models and their id (the real evaluator's CLIP); None: none
            (a run that only generates); evaluator_options: more keyword options of its builder (the
            real evaluator's `dino_id`, `inception`).
        ground_truth: "toy" (renders of the stories' states) or None (no true frames: no FID, accuracies
            or oracle row).
        memory: "rules", "llm" or "none" (see `build_memory`); vocabulary: the rule memory's words.
        device, dtype: where and in which precision the models run (the toy models: float32 only).
        story_generator, story_generator_id, story_generator_options: a whole-story generator
            (`components.available("story_generator")`, e.g. "storygpt_v") added as the table's row of that name,
            its checkpoint folder and builder options; None: no such row.
        **llm: llm_model, llm_base_url, llm_cache, llm_mode, seed for the LLM memory.
    """
    torch_dtype = parse_dtype(dtype)
    kw = dict(device=device, dtype=torch_dtype)
    arm_dtype = parse_dtype((arm_options or {}).get("dtype", torch_dtype))
    built_memory = build_memory(memory, vocabulary=vocabulary, **llm) if memory != "none" else None
    generator_rows = {}
    if story_generator is not None:
        from acdc_lib.experiment.rows import ROWS

        if story_generator not in ROWS or ROWS[story_generator].kind != "generator":
            raise ValueError(f"story generator {story_generator!r} has no row of its own; generator rows: "
                             f"{[r for r, spec in ROWS.items() if spec.kind == 'generator']}")
        generator_rows[story_generator] = components.build("story_generator", story_generator,
                                                           model_id=story_generator_id, **kw,
                                                           **(story_generator_options or {}))
    parts = Parts(
        arm=build_arm(arm, arm_id, arm_options, device=device, dtype=torch_dtype),
        corrector=components.build("corrector", dm, model_id=dm_id, **kw,
                                   **({"resolution": dm_resolution} if dm_resolution else {})),
        evaluator=(components.build("evaluator", evaluator, model_id=evaluator_id, device=device,
                                    **(evaluator_options or {}))
                   if evaluator is not None else None),
        ground_truth=components.build("ground_truth", ground_truth) if ground_truth is not None else None,
        memory=built_memory, rows=experiment_rows(memory, ground_truth is not None) + tuple(generator_rows),
        names={"arm": arm, "arm_id": arm_id, "arm_options": arm_options, "dm": dm, "dm_id": dm_id, "dm_resolution": dm_resolution,
               "evaluator": evaluator, "evaluator_id": evaluator_id, "ground_truth": ground_truth,
               "memory": memory, "device": str(device), "dtype": str(torch_dtype).removeprefix("torch."),
               "arm_dtype": str(arm_dtype).removeprefix("torch."), "story_generator": story_generator,
               "story_generator_id": story_generator_id}, generator_rows=generator_rows)
    return parts


__all__ = ["DTYPES", "MEMORIES", "MEMORY_ROWS", "Parts", "build_arm", "build_memory", "build_parts", "experiment_rows",
           "parse_dtype"]
