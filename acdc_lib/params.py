"""Checks of a notebook's parameters, so a bad value fails at once with a message that says what is allowed.

Each notebook's setup cell calls

    check_params(globals(), NOTEBOOK_PARAMS["03_acdc_story"])

right after its `parameters` cell (and any cell papermill injects). A spec maps a parameter name to a
`Rule`; a tuple of names maps to a rule on their values together (e.g. STEPS with STRENGTH). Every
failure of one call is collected into one ValueError, one line per parameter:

    STEPS='20' is not allowed: a positive int

Papermill injects only the names a notebook's parameters cell defines, so a misspelt name cannot be
caught here; `acdc_lib.runs` refuses a parameter set naming one (`notebook_parameters` reads the cell).
"""
from __future__ import annotations

import ast
import functools
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

Describe = str | Callable[[], str]


@dataclass(frozen=True)
class Rule:
    """What one parameter (or a tuple of parameters, taken together) may be.

    Args:
        test: value -> whether it is allowed (for a tuple of names: the tuple of their values).
        allowed: the words for what is allowed, or a function giving them (for lists known only at run time).
    """

    test: Callable[[Any], bool]
    allowed: Describe

    def describe(self) -> str:
        """The words for what is allowed."""
        return self.allowed() if callable(self.allowed) else self.allowed

    def accepts(self, value: Any) -> bool:
        """Whether `value` is allowed; a test that raises counts as a refusal."""
        try:
            return bool(self.test(value))
        except Exception:  # e.g. a comparison between a str and an int inside a joint rule
            return False


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    # True and False are ints in Python; as a count or a seed they are a mistake.
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _bound(b: int | float | Callable[[], int | float | None] | None) -> int | float | None:
    return b() if callable(b) else b


def boolean() -> Rule:
    """True or False only (not 0, 1 or the string 'False', which is truthy)."""
    return Rule(lambda x: isinstance(x, bool), "True or False")


def integer(lo: int | None = None, hi: int | Callable[[], int | None] | None = None, why_hi: str = "") -> Rule:
    """An int (not a bool) in [lo, hi]; `hi` may be a function (None from it: no upper bound).

    Args:
        lo, hi: inclusive bounds (None: unbounded).
        why_hi: words after the upper bound, e.g. "(the test split's size)".
    """
    def test(x):
        top = _bound(hi)
        return _is_int(x) and (lo is None or x >= lo) and (top is None or x <= top)

    def words():
        top = _bound(hi)
        head = {1: "a positive int", 0: "an int >= 0"}.get(lo, "an int" if lo is None else f"an int >= {lo}")
        return head if top is None else f"{head} up to {top}" + (f" {why_hi}" if why_hi else "")

    return Rule(test, words)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite int or float (not a bool) between lo and hi (closed unless `lo_open` / `hi_open`)."""
    def test(x):
        if not _is_number(x) or not math.isfinite(x):
            return False
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return hi is None or (x < hi if hi_open else x <= hi)

    if lo is not None and hi is not None:
        words = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        words = f"a finite number {'<' if hi_open else '<='} {hi:g}"
    else:
        words = "a finite number"
    return Rule(test, words)


def one_of(options: Iterable[Any] | Callable[[], Iterable[Any]], what: str = "") -> Rule:
    """One of `options` (a function giving them is called at check time, e.g. the registered backends)."""
    def opts():
        return list(options() if callable(options) else options)

    def test(x):
        # True == 1: a bool never stands for an option
        return not isinstance(x, bool) and x in opts()

    return Rule(test, lambda: f"one of {opts()}" + (f" ({what})" if what else ""))


def text() -> Rule:
    """A non-empty str, e.g. a model name."""
    return Rule(lambda x: isinstance(x, str) and bool(x.strip()), "a non-empty str")


def url() -> Rule:
    """An http:// or https:// URL, e.g. an OpenAI-compatible server."""
    return Rule(lambda x: isinstance(x, str) and x.startswith(("http://", "https://")) and len(x) > 8,
                "an http:// or https:// URL (str), e.g. 'http://127.0.0.1:8000/v1'")


def path() -> Rule:
    """A non-empty str or os.PathLike; it need not exist yet (output folders are made when written)."""
    return Rule(lambda x: (isinstance(x, str) and bool(x.strip())) or isinstance(x, os.PathLike),
                "a path (a non-empty str)")


def device() -> Rule:
    """A device name torch.device accepts ("cpu", "cuda", "cuda:1", "mps", ...)."""
    def test(x):
        import torch  # only here: notebooks without a DEVICE need not import torch to check

        if isinstance(x, torch.device):
            return True
        if not isinstance(x, str):
            return False
        torch.device(x)  # raises for an unknown device type
        return True

    return Rule(test, "a device name torch.device accepts, e.g. 'cpu', 'cuda' or 'cuda:1'")


def options() -> Rule:
    """A dict of keyword options: str keys that are Python names (they become a builder's keyword arguments)."""
    return Rule(lambda x: isinstance(x, dict) and all(isinstance(k, str) and k.isidentifier() for k in x),
                "a dict of keyword options with str keys that are Python names, e.g. {'image_size': 256}")


def sequence(item: Rule, min_len: int = 1, unique: bool = False) -> Rule:
    """A list or tuple of at least `min_len` items, each allowed by `item` (papermill passes tuples as lists)."""
    def test(x):
        if not isinstance(x, list | tuple) or len(x) < min_len or not all(item.accepts(v) for v in x):
            return False
        return not unique or len(set(map(repr, x))) == len(x)

    def words():
        size = {0: "a list (or tuple)", 1: "a non-empty list (or tuple)"}.get(min_len, f"a list of at least {min_len} items")
        return f"{size}{' of distinct items' if unique else ''}, each {item.describe()}"

    return Rule(test, words)


def or_none(rule: Rule) -> Rule:
    """`rule`, or None."""
    return Rule(lambda x: x is None or rule.accepts(x), lambda: f"None or {rule.describe()}")


def together(test: Callable[..., bool], allowed: str) -> Rule:
    """A rule on several parameters at once; `test` takes their values as positional arguments."""
    return Rule(lambda values: test(*values), allowed)


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------
def check_params(namespace: Mapping[str, Any], spec: Mapping[str | tuple[str, ...], Rule]) -> dict[str, Any]:
    """Check a notebook's parameters against `spec`; returns {name: value} of the checked names.

    Args:
        namespace: where the parameters live (a notebook's `globals()`).
        spec: parameter name -> Rule, or a tuple of names -> Rule on their values together (checked only
            when each of them passed its own rule).

    Raises:
        ValueError with one line per refused parameter: its name, its value (repr) and what is allowed,
        e.g. "STEPS='20' is not allowed: a positive int". A name of the spec missing from `namespace`
        (the spec and the notebook disagree) is refused too.
    """
    problems: list[str] = []
    failed: set[str] = set()
    for name, rule in spec.items():
        if isinstance(name, tuple):
            continue
        if name not in namespace:
            problems.append(f"{name} is not defined: the parameters cell must define it ({rule.describe()})")
            failed.add(name)
        elif not rule.accepts(namespace[name]):
            problems.append(f"{name}={namespace[name]!r} is not allowed: {rule.describe()}")
            failed.add(name)
    for names, rule in spec.items():
        if not isinstance(names, tuple) or failed & set(names):
            continue
        values = tuple(namespace[n] for n in names)
        if not rule.accepts(values):
            shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, values))
            problems.append(f"{shown} are not allowed together: {rule.describe()}")
    if problems:
        raise ValueError("\n".join(problems) if len(problems) == 1 else
                         f"{len(problems)} problems with the parameters:\n" + "\n".join(problems))
    return {n: namespace[n] for n in spec if not isinstance(n, tuple)}


# --------------------------------------------------------------------------------------------
# A notebook's parameters cell
# --------------------------------------------------------------------------------------------
def parameters_cell(notebook: str | os.PathLike) -> str:
    """The source of the one code cell tagged `parameters` of a notebook file.

    Raises:
        ValueError naming the notebook when it has no such cell or several.
    """
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    src = cells[0].get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, ast.expr]:
    """{name: value expression} of every name its parameters cell assigns, in order (`ast.literal_eval` reads a literal)."""
    out: dict[str, ast.expr] = {}
    for node in ast.parse(parameters_cell(notebook)).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


def notebook_defaults(notebook: str | os.PathLike) -> dict[str, Any]:
    """{name: default value} of a notebook's parameters cell (each value a Python literal)."""
    return {name: ast.literal_eval(expr) for name, expr in notebook_parameters(notebook).items()}


# --------------------------------------------------------------------------------------------
# The notebooks' specs
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def stories_in_test_split() -> int | None:
    """Stories in the committed test split, from the stories' manifest (None when it cannot be read)."""
    from acdc_lib.stories import STORIES_DIR

    try:
        return int(json.loads((STORIES_DIR / "MANIFEST.json").read_text(encoding="utf-8"))["splits"]["test"]["n"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _available(kind: str) -> Callable[[], list[str]]:
    # The registered backends, read when checked: another package may add names, so none is hard-coded.
    def names() -> list[str]:
        from acdc_lib import components

        return sorted(components.available(kind))
    return names


def _memories() -> list[str]:
    from acdc_lib.components import MEMORIES

    return list(MEMORIES)


def _dtypes() -> list[str]:
    from acdc_lib.components import DTYPES

    return list(DTYPES)


def _llm_modes() -> list[str]:
    from acdc_lib.memory import LLMMemory

    return list(LLMMemory.MODES)


def _runs_a_step(steps: int, *strengths: float) -> bool:
    # SDEdit runs int(N * t') denoising steps (diffusers' img2img rule); zero of them would not correct at all.
    return all(int(steps * s) >= 1 for s in strengths)


SEED_RULE = integer(0)  # numpy's SeedSequence refuses negative seeds
TEST_STORIES = integer(1, stories_in_test_split, "(the test split's size)")
STRENGTH_RULE = number(0.0, 1.0, lo_open=True)  # t' in (0, 1], as steps_for_strength requires
COMMON = {"SEED": SEED_RULE, "SMOKE": boolean(), "OUT_DIR": or_none(path()), "FIG_DIR": or_none(path())}
LLM = {"LLM_MODEL": text(), "LLM_BASE_URL": or_none(url()), "LLM_CACHE": or_none(path())}
ENCODERS = ("minilm", "evaluator")  # the text encoders notebook 04 knows

NOTEBOOK_PARAMS: dict[str, dict[str | tuple[str, ...], Rule]] = {
    "00_diffusion_theory": {
        **COMMON,
        "BETA_MIN": number(0.0, lo_open=True),  # VPSDE needs 0 < beta_min <= beta_max < inf
        "BETA_MAX": number(0.0, lo_open=True),
        "DIMS": sequence(integer(1)),
        "N_T_PRIME": integer(1),
        "MC_MARGIN_SE": number(0.0),
        "T_PRIME_SHOW": STRENGTH_RULE,
        "INTERACTIVE": or_none(boolean()),
        ("BETA_MIN", "BETA_MAX"): together(lambda lo, hi: lo <= hi, "BETA_MIN <= BETA_MAX (a VP-SDE schedule)"),
    },
    "01_story_data": {
        **COMMON,
        "N_SAMPLE_STORIES": TEST_STORIES,  # drawn without replacement from the test split
        "BENCH_FRAMES": integer(1),
        **LLM,
        "N_LLM_STORIES": integer(0),
        "LLM_TIMEOUT": number(0.0, lo_open=True),
    },
    "02_toy_world_models": {
        **COMMON,
        "DEVICE": device(),
        "RETRAIN": boolean(),
        "CHECKPOINTS": or_none(path()),
        "ARM_STEPS": or_none(integer(1)),  # 0 would silently mean "no extra ARM"
        "N_TEST_STORIES": or_none(TEST_STORIES),
        "DM_FRAMES": or_none(integer(1)),
        "DM_STEPS": integer(1),
        "ARM_STORIES": or_none(TEST_STORIES),
    },
    "03_acdc_story": {
        **COMMON,
        "N_STORIES": or_none(TEST_STORIES),
        "DEVICE": device(),
        "DTYPE": one_of(_dtypes),
        "ARM": one_of(_available("arm"), "registered ARMs"),
        "ARM_ID": or_none(path()),
        "ARM_OPTIONS": or_none(options()),
        "DM": one_of(_available("corrector"), "registered correctors"),
        "DM_ID": or_none(path()),
        "DM_RESOLUTION": or_none(integer(1)),  # 0 would silently mean "the frames' own size"
        "EVALUATOR": one_of(_available("evaluator"), "registered evaluators"),  # the table needs one
        "EVALUATOR_ID": or_none(path()),
        "EVALUATOR_OPTIONS": or_none(options()),
        "GROUND_TRUTH": or_none(one_of(_available("ground_truth"), "registered ground truths")),
        "MEMORY": one_of(_memories),
        **LLM,
        "STRENGTH": STRENGTH_RULE,
        # every corrector takes a finite w >= 0; diffusers pipelines (the "sd" corrector) refuse w < 1 themselves
        "GUIDANCE": number(0.0),
        "STEPS": integer(1),
        "BATCH_SIZE": integer(1),
        "RUN_DIR": or_none(path()),
        "SWEEP_STORIES": TEST_STORIES,
        "SWEEP_STRENGTHS": sequence(STRENGTH_RULE),
        "STORY_GENERATOR": or_none(one_of(_available("story_generator"), "registered story generators")),
        "STORY_GENERATOR_ID": or_none(path()),
        ("STEPS", "STRENGTH"): together(_runs_a_step, "int(STEPS * STRENGTH) >= 1, so SDEdit runs at least one step"),
        ("SMOKE", "STEPS", "SWEEP_STRENGTHS"): together(lambda smoke, n, ts: smoke or _runs_a_step(n, *ts),
                                                        "int(STEPS * t') >= 1 for every t' of SWEEP_STRENGTHS "
                                                        "(the sweep runs when SMOKE is False)"),
    },
    "04_memory_module": {
        **COMMON,
        "N_SMOKE": TEST_STORIES,
        "DEVICE": device(),
        "ENCODERS": sequence(one_of(ENCODERS), min_len=0, unique=True),
        **LLM,
        "LLM_MODE": one_of(_llm_modes),
    },
}
_MODEL_PARAMS = ("DEVICE", "DTYPE", "ARM", "ARM_ID", "ARM_OPTIONS", "DM", "DM_ID", "DM_RESOLUTION", "EVALUATOR",
                 "EVALUATOR_ID", "EVALUATOR_OPTIONS", "GROUND_TRUTH", "MEMORY", *LLM, "STRENGTH", "GUIDANCE", "STEPS",
                 "BATCH_SIZE", "RUN_DIR")
NOTEBOOK_PARAMS["06_ablations"] = {
    **COMMON,
    "N_STORIES": or_none(TEST_STORIES),
    **{k: NOTEBOOK_PARAMS["03_acdc_story"][k] for k in _MODEL_PARAMS},
    "SWEEP_STORIES": or_none(TEST_STORIES),
    "T_PRIMES": or_none(sequence(STRENGTH_RULE, unique=True)),
    "CFG_SCALES": sequence(number(0.0), unique=True),
    "STEP_COUNTS": sequence(integer(1), unique=True),
    "CORRUPTION_RATES": sequence(number(0.0, 1.0), unique=True),
    "MEMORY_ERROR_RATES": sequence(number(0.0, 1.0), unique=True),
    "ADAPTIVE_SHARES": sequence(number(0.0, 1.0, lo_open=True, hi_open=True), unique=True),
    "CALIBRATION_STORIES": integer(1),
    "COST_REPEATS": integer(1),
    ("STEPS", "STRENGTH"): together(_runs_a_step, "int(STEPS * STRENGTH) >= 1, so SDEdit runs at least one step"),
    ("STEP_COUNTS", "STRENGTH"): together(lambda ns, t: all(_runs_a_step(n, t) for n in ns),
                                          "int(N * STRENGTH) >= 1 for every N of STEP_COUNTS"),
    ("STEPS", "T_PRIMES"): together(lambda n, ts: ts is None or _runs_a_step(n, *ts),
                                    "int(STEPS * t') >= 1 for every t' of T_PRIMES"),
}
NOTEBOOK_PARAMS["05_video_extension"] = {
    **COMMON,
    "N_CLIPS": or_none(integer(2)),  # bootstrap intervals need two videos
    "N_FRAMES": or_none(integer(2)),
    "CHUNK": or_none(integer(1)),
    "DEVICE": device(),
    "ARM": one_of(_available("arm"), "registered ARMs"),
    "ARM_ID": or_none(path()),
    "ARM_OPTIONS": or_none(options()),
    "VIDEO_DM": one_of(_available("video_corrector"), "registered video correctors"),
    "VIDEO_DM_ID": or_none(path()),
    "VIDEO_DM_OPTIONS": or_none(options()),
    "EVALUATOR": one_of(_available("evaluator"), "registered evaluators"),
    "EVALUATOR_ID": or_none(path()),
    "EVALUATOR_OPTIONS": or_none(options()),
    "TRUTH": or_none(one_of(_available("video_truth"), "registered video truths")),
    "PROMPTS": or_none(path()),
    "STRENGTH": STRENGTH_RULE,
    "GUIDANCE": number(0.0),
    "STEPS": integer(1),
    "BATCH_SIZE": integer(1),
    "LONG_FRAMES": or_none(integer(2)),
    "DTYPE": one_of(_dtypes),
    "RAFT_WEIGHTS": or_none(path()),
    "AESTHETIC_WEIGHTS": or_none(path()),
    # the t' = 0.4 row runs int(STEPS * 0.4) steps, the paper's rows int(STEPS * STRENGTH)
    ("STEPS", "STRENGTH"): together(lambda n, t: _runs_a_step(n, t, 0.4),
                                    "int(STEPS * t') >= 1 for STRENGTH and for the t' = 0.4 row"),
    ("N_FRAMES", "CHUNK"): together(lambda n, L: n is None or L is None or L < n,
                                    "CHUNK < N_FRAMES (Fig. 6 reads the frames after the first chunk)"),
    ("TRUTH", "PROMPTS"): together(lambda t, p: t is not None or p is not None,
                                   "TRUTH or PROMPTS: the videos need prompts"),
}
NOTEBOOK_PARAMS["07_physical_constraints"] = {
    **COMMON,
    "N_STORIES": or_none(integer(2, stories_in_test_split, "(the test split's size)")),  # intervals need two
    "N_FRAMES": or_none(integer(3)),  # frame 1 is given; the lift compares frames i and i+1 after it
    **{k: NOTEBOOK_PARAMS["03_acdc_story"][k] for k in ("DEVICE", "DTYPE", "ARM", "ARM_ID", "ARM_OPTIONS", "DM", "DM_ID")},
    "INPAINTER": one_of(_available("inpainter"), "registered inpainters"),
    "INPAINTER_ID": or_none(path()),
    "DETECTOR": or_none(one_of(_available("detector"), "registered detectors")),
    "DETECTOR_ID": or_none(path()),
    "EVALUATOR": one_of(_available("evaluator"), "registered evaluators"),
    "EVALUATOR_ID": or_none(path()),
    "TRUTH": one_of(_available("physical_truth"), "registered physical truths"),
    "MEMORY": one_of(("rules", "none")),
    "STRENGTH": STRENGTH_RULE,
    "GUIDANCE": number(0.0),
    "STEPS": integer(1),
    "INPAINT_STRENGTH": STRENGTH_RULE,
    "BATCH_SIZE": integer(1),
    "COMPARE_STORIES": or_none(integer(0)),  # 0: no comparison of inpainting methods
    ("STEPS", "STRENGTH"): together(_runs_a_step, "int(STEPS * STRENGTH) >= 1, so SDEdit runs at least one step"),
    ("STEPS", "INPAINT_STRENGTH"): together(_runs_a_step, "int(STEPS * INPAINT_STRENGTH) >= 1, so inpainting runs a step"),
}
NOTEBOOK_PARAMS["09_storygpt_v"] = {
    **COMMON,
    "N_STORIES": or_none(integer(2, stories_in_test_split, "(the test split's size)")),  # paired intervals need two
    "DEVICE": device(),
    "CHECKPOINTS": or_none(path()),
    "STRENGTH": STRENGTH_RULE,
    "GUIDANCE": number(0.0),
    "STEPS": integer(1),
    "STORYGPT_GUIDANCE": number(0.0),
    "STORYGPT_STEPS": integer(1),
    "BATCH_SIZE": integer(1),
    "RUN_DIR": or_none(path()),
    "LONG_FRAMES": or_none(sequence(integer(1, 96, "(the aligned LM's frame positions)"), unique=True)),
    "LONG_STORIES": or_none(integer(2, stories_in_test_split, "(the test split's size)")),
    "CONTEXT_FRAMES": integer(1),
    ("STEPS", "STRENGTH"): together(_runs_a_step, "int(STEPS * STRENGTH) >= 1, so SDEdit runs at least one step"),
}
NOTEBOOK_PARAMS["08_figures"] = {
    **COMMON,
    "RUN_SET": path(),
    "RUNS_ROOT": or_none(path()),
    "REPORT_PATH": or_none(path()),
}
"""Notebook stem -> its parameters' spec; a test keeps each spec's names equal to its notebook's parameters."""


__all__ = ["NOTEBOOK_PARAMS", "Rule", "boolean", "check_params", "device", "integer", "notebook_defaults",
           "notebook_parameters", "number", "one_of", "options", "or_none", "parameters_cell", "path", "sequence",
           "stories_in_test_split", "text", "together", "url"]
