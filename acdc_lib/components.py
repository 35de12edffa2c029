"""Build the parts of an ACDC run from names: ARMs, correctors, evaluators, ground truths, vocabularies.

The core knows no backend by import. A backend is a module named in the `acdc_lib.backends` entry-point
group (pyproject.toml) holding a dict `COMPONENTS = {kind: {name: builder}}`; a builder takes keyword
options (`model_id`, `device`, `dtype`, ...) and returns the part. This package registers two: the
embedded toy world (`toy`) and the real models (`emu3`, `janus`, `sd`, `real`); another package can add
its own the same way, without changing this one.

    arm = build("arm", "toy", device="cpu")          # any object of the ARM protocol
    names = available("arm")                          # {name: the module that provides it}
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any, Callable

import torch

from acdc_lib.memory import LLMMemory, NoMemory, RuleMemory

ENTRY_POINT_GROUP = "acdc_lib.backends"
KINDS = ("arm", "corrector", "evaluator", "ground_truth", "vocabulary", "video_corrector", "video_truth", "inpainter",
         "detector", "physical_truth", "story_generator")
"""arm: the ARM protocol; corrector: Corrector (and TextToImage for the DM-only row where it can);
evaluator: Evaluator; ground_truth: GroundTruth; vocabulary: the rule memory's `Vocabulary`;
video_corrector: VideoCorrector (Eq. 5); video_truth: prompts and true frames of a set of videos
(`prompts`, `frames`, `labels`, `physics`, `tokens(arm)`), where a world has them; inpainter: an object with
`inpaint(images, masks, prompts, ...)` (InpaintCorrector's interface); detector: `detect(images) -> masks` of
physically wrong regions; physical_truth: first frames with a physical error and the user's masks of them
(`kinds`, `first_frames(stories, kind)`), where a world can draw them; story_generator: a whole-story generator
that is neither ARM nor corrector (StoryGPT-V), `generate(stories, generators, first_frames=None)` -> one
(n, C, H, W) tensor of frames in [0, 1] per story, story b drawing from generators[b] only."""

_REGISTRY: dict[str, dict[str, tuple[str, Callable[..., Any]]]] = {}


def _load() -> dict[str, dict[str, tuple[str, Callable[..., Any]]]]:
    if _REGISTRY:
        return _REGISTRY
    found = {k: {} for k in KINDS}
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if not eps:
        raise RuntimeError(f"no backend is registered under the entry-point group {ENTRY_POINT_GROUP!r}: "
                           "install the package (pip install -e .) so its entry points exist")
    for ep in eps:
        module = importlib.import_module(ep.value)
        table = getattr(module, "COMPONENTS", None)
        if not isinstance(table, dict):
            raise RuntimeError(f"backend {ep.name!r} ({ep.value}) has no COMPONENTS dict")
        for kind, builders in table.items():
            if kind not in found:
                raise RuntimeError(f"backend {ep.name!r} offers unknown kind {kind!r}; kinds: {list(KINDS)}")
            for name, fn in builders.items():
                if name in found[kind]:
                    raise RuntimeError(f"{kind} {name!r} is offered by both {found[kind][name][0]} and {ep.value}")
                found[kind][name] = (ep.value, fn)
    _REGISTRY.update(found)
    return _REGISTRY


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {list(KINDS)}")


def available(kind: str) -> dict[str, str]:
    """{name: providing module} of every registered component of `kind`."""
    _check_kind(kind)
    return {name: mod for name, (mod, _) in sorted(_load()[kind].items())}


def build(kind: str, name: str, **options: Any) -> Any:
    """Build the component `name` of `kind` with the builder's keyword `options`.

    Raises:
        ValueError naming the kind, the name and what is available when `name` is unknown.
    """
    _check_kind(kind)
    table = _load()[kind]
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{kind} {name!r} is not available; available {kind}s: {sorted(table)}")
    return table[name][1](**options)


# --------------------------------------------------------------------------------------------
# What every entry point shares: dtypes and memory modules by name
# --------------------------------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MEMORIES = ("rules", "llm", "none")
def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from its name ("float32", "float16", "bfloat16") or itself; None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"DTYPE {dtype!r} is not supported; allowed: {list(DTYPES)}")


def build_memory(memory: str, *, vocabulary: str | None = "toy", llm_model: str = "gpt-4o-mini",
                 llm_base_url: str | None = None, llm_cache: str | os.PathLike | None = None, llm_mode: str = "story",
                 seed: int = 0):
    """The memory module by name: "rules" (a vocabulary by name), "llm" (an OpenAI-compatible chat model;
    the key comes from OPENAI_API_KEY, a server from `llm_base_url`, recorded answers from `llm_cache`)
    or "none"."""
    if memory not in MEMORIES:
        raise ValueError(f"MEMORY {memory!r} is not available; allowed: {list(MEMORIES)}")
    if memory == "none":
        return NoMemory()
    if memory == "rules":
        if vocabulary is None:
            raise ValueError("MEMORY 'rules' needs a vocabulary; available: "
                             f"{sorted(available('vocabulary'))}")
        return RuleMemory(build("vocabulary", vocabulary))
    from acdc_lib.llm import LLMClient

    if not (os.environ.get("OPENAI_API_KEY") or llm_base_url or llm_cache):
        raise ValueError("MEMORY 'llm' needs OPENAI_API_KEY in the environment, an LLM_BASE_URL (an "
                         "OpenAI-compatible server) or an LLM_CACHE of recorded answers")
    # as in the paper's setting, a story whose answer is unusable falls back to the rules (with a vocabulary)
    fallback = {"vocabulary": build("vocabulary", vocabulary)} if vocabulary else {"fallback": None}
    return LLMMemory(LLMClient(model=llm_model, base_url=llm_base_url, cache_path=llm_cache), mode=llm_mode, seed=seed,
                     **fallback)


def parse_options(items: list[str] | tuple[str, ...], flag: str = "--arm-option") -> dict[str, Any]:
    """{key: value} from command-line items "KEY=VALUE" (values read as JSON where they parse, else strings).

    Raises:
        ValueError naming the item and the flag when it is not KEY=VALUE with KEY a keyword name.
    """
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} {item!r} is not KEY=VALUE with KEY a keyword name (e.g. image_size=256)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a plain string, e.g. a prompt template
    return out


__all__ = ["ENTRY_POINT_GROUP", "KINDS", "available", "build", "DTYPES", "MEMORIES", "build_memory", "parse_dtype",
           "parse_options"]
