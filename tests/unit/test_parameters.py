"""Notebook parameters: each bad value fails at once with its name, its value and what is allowed.

The specs live in `acdc_lib.params.NOTEBOOK_PARAMS`; each notebook's setup cell calls `check_params` on
them, and `acdc_lib.runs` refuses a parameter set naming a parameter a notebook does not define.
"""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from acdc_lib import components, params, runs
from acdc_lib.io import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
STEMS = sorted(params.NOTEBOOK_PARAMS)
SETS = sorted((REPO_ROOT / "papermill_runs").glob("*.yaml"))


def _cell_defaults(stem: str) -> dict:
    """The parameters cell's defaults, read here from the notebook JSON (one literal per assignment)."""
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def _expected(fragment: str) -> str:
    # Lists that come from the registered backends are filled in here, not written into the test.
    for token, kind in (("<arms>", "arm"), ("<correctors>", "corrector"), ("<evaluators>", "evaluator"),
                        ("<ground_truths>", "ground_truth")):
        fragment = fragment.replace(token, str(sorted(components.available(kind))))
    return fragment


POS_SPLIT = "a positive int up to 1000 (the test split's size)"
DEVICE_WORDS = "a device name torch.device accepts"

# (notebook, parameters changed from the defaults, fragment of the message)
BAD = [
    # 00: the theory notebook
    ("00_diffusion_theory", {"SEED": -1}, "SEED=-1 is not allowed: an int >= 0"),
    ("00_diffusion_theory", {"SEED": True}, "SEED=True is not allowed: an int >= 0"),
    ("00_diffusion_theory", {"SEED": 0.5}, "SEED=0.5 is not allowed: an int >= 0"),
    ("00_diffusion_theory", {"SMOKE": "False"}, "SMOKE='False' is not allowed: True or False"),
    ("00_diffusion_theory", {"BETA_MIN": 0}, "BETA_MIN=0 is not allowed: a finite number > 0"),
    ("00_diffusion_theory", {"BETA_MAX": math.inf}, "BETA_MAX=inf is not allowed: a finite number > 0"),
    ("00_diffusion_theory", {"BETA_MIN": 30.0}, "BETA_MIN=30.0, BETA_MAX=20.0 are not allowed together: BETA_MIN <= BETA_MAX"),
    ("00_diffusion_theory", {"DIMS": []}, "DIMS=[] is not allowed: a non-empty list (or tuple), each a positive int"),
    ("00_diffusion_theory", {"DIMS": [2, 0]}, "DIMS=[2, 0] is not allowed: a non-empty list (or tuple), each a positive int"),
    ("00_diffusion_theory", {"DIMS": "2,16"}, "DIMS='2,16' is not allowed: a non-empty list"),
    ("00_diffusion_theory", {"N_T_PRIME": 0}, "N_T_PRIME=0 is not allowed: a positive int"),
    ("00_diffusion_theory", {"N_T_PRIME": 12.0}, "N_T_PRIME=12.0 is not allowed: a positive int"),
    ("00_diffusion_theory", {"MC_MARGIN_SE": -1}, "MC_MARGIN_SE=-1 is not allowed: a finite number >= 0"),
    ("00_diffusion_theory", {"T_PRIME_SHOW": 1.5}, "T_PRIME_SHOW=1.5 is not allowed: a number in (0, 1]"),
    ("00_diffusion_theory", {"INTERACTIVE": "yes"}, "INTERACTIVE='yes' is not allowed: None or True or False"),
    ("00_diffusion_theory", {"OUT_DIR": 5}, "OUT_DIR=5 is not allowed: None or a path"),
    ("00_diffusion_theory", {"FIG_DIR": ""}, "FIG_DIR='' is not allowed: None or a path"),
    # 01: the story data
    ("01_story_data", {"SMOKE": 1}, "SMOKE=1 is not allowed: True or False"),
    ("01_story_data", {"N_SAMPLE_STORIES": 0}, f"N_SAMPLE_STORIES=0 is not allowed: {POS_SPLIT}"),
    ("01_story_data", {"N_SAMPLE_STORIES": 1001}, f"N_SAMPLE_STORIES=1001 is not allowed: {POS_SPLIT}"),
    ("01_story_data", {"BENCH_FRAMES": "2000"}, "BENCH_FRAMES='2000' is not allowed: a positive int"),
    ("01_story_data", {"N_LLM_STORIES": -1}, "N_LLM_STORIES=-1 is not allowed: an int >= 0"),
    ("01_story_data", {"LLM_TIMEOUT": 0}, "LLM_TIMEOUT=0 is not allowed: a finite number > 0"),
    ("01_story_data", {"LLM_TIMEOUT": True}, "LLM_TIMEOUT=True is not allowed: a finite number > 0"),
    ("01_story_data", {"LLM_BASE_URL": "127.0.0.1:8000/v1"}, "LLM_BASE_URL='127.0.0.1:8000/v1' is not allowed: None or an http:// or https:// URL"),
    ("01_story_data", {"LLM_MODEL": ""}, "LLM_MODEL='' is not allowed: a non-empty str"),
    ("01_story_data", {"LLM_CACHE": 3}, "LLM_CACHE=3 is not allowed: None or a path"),
    # 02: the toy world's models
    ("02_toy_world_models", {"DEVICE": "gpu"}, f"DEVICE='gpu' is not allowed: {DEVICE_WORDS}"),
    ("02_toy_world_models", {"DEVICE": 0}, f"DEVICE=0 is not allowed: {DEVICE_WORDS}"),
    ("02_toy_world_models", {"RETRAIN": "no"}, "RETRAIN='no' is not allowed: True or False"),
    ("02_toy_world_models", {"CHECKPOINTS": ["a"]}, "CHECKPOINTS=['a'] is not allowed: None or a path"),
    ("02_toy_world_models", {"ARM_STEPS": 0}, "ARM_STEPS=0 is not allowed: None or a positive int"),
    ("02_toy_world_models", {"ARM_STEPS": True}, "ARM_STEPS=True is not allowed: None or a positive int"),
    ("02_toy_world_models", {"N_TEST_STORIES": 1001}, f"N_TEST_STORIES=1001 is not allowed: None or {POS_SPLIT}"),
    ("02_toy_world_models", {"DM_FRAMES": -5}, "DM_FRAMES=-5 is not allowed: None or a positive int"),
    ("02_toy_world_models", {"DM_STEPS": 2.5}, "DM_STEPS=2.5 is not allowed: a positive int"),
    ("02_toy_world_models", {"ARM_STORIES": "all"}, f"ARM_STORIES='all' is not allowed: None or {POS_SPLIT}"),
    # 03: the story experiment
    ("03_acdc_story", {"STEPS": "20"}, "STEPS='20' is not allowed: a positive int"),
    ("03_acdc_story", {"STEPS": True}, "STEPS=True is not allowed: a positive int"),
    ("03_acdc_story", {"STEPS": 0}, "STEPS=0 is not allowed: a positive int"),
    ("03_acdc_story", {"STRENGTH": 0}, "STRENGTH=0 is not allowed: a number in (0, 1]"),
    ("03_acdc_story", {"STRENGTH": 1.2}, "STRENGTH=1.2 is not allowed: a number in (0, 1]"),
    ("03_acdc_story", {"STRENGTH": "0.5"}, "STRENGTH='0.5' is not allowed: a number in (0, 1]"),
    ("03_acdc_story", {"GUIDANCE": -1}, "GUIDANCE=-1 is not allowed: a finite number >= 0"),
    ("03_acdc_story", {"GUIDANCE": math.nan}, "GUIDANCE=nan is not allowed: a finite number >= 0"),
    ("03_acdc_story", {"GUIDANCE": "7.5"}, "GUIDANCE='7.5' is not allowed: a finite number >= 0"),
    ("03_acdc_story", {"ARM": "emu4"}, "ARM='emu4' is not allowed: one of <arms> (registered ARMs)"),
    ("03_acdc_story", {"DM": "sdxl"}, "DM='sdxl' is not allowed: one of <correctors> (registered correctors)"),
    ("03_acdc_story", {"EVALUATOR": None}, "EVALUATOR=None is not allowed: one of <evaluators> (registered evaluators)"),
    ("03_acdc_story", {"GROUND_TRUTH": "real"}, "GROUND_TRUTH='real' is not allowed: None or one of <ground_truths>"),
    ("03_acdc_story", {"MEMORY": "rule"}, "MEMORY='rule' is not allowed: one of ['rules', 'llm', 'none']"),
    ("03_acdc_story", {"DTYPE": "fp16"}, "DTYPE='fp16' is not allowed: one of ['float32', 'float16', 'bfloat16']"),
    ("03_acdc_story", {"DEVICE": "cuda:x"}, f"DEVICE='cuda:x' is not allowed: {DEVICE_WORDS}"),
    ("03_acdc_story", {"N_STORIES": 0}, f"N_STORIES=0 is not allowed: None or {POS_SPLIT}"),
    ("03_acdc_story", {"N_STORIES": 5000}, f"N_STORIES=5000 is not allowed: None or {POS_SPLIT}"),
    ("03_acdc_story", {"N_STORIES": True}, f"N_STORIES=True is not allowed: None or {POS_SPLIT}"),
    ("03_acdc_story", {"BATCH_SIZE": 0}, "BATCH_SIZE=0 is not allowed: a positive int"),
    ("03_acdc_story", {"DM_RESOLUTION": 0}, "DM_RESOLUTION=0 is not allowed: None or a positive int"),
    ("03_acdc_story", {"ARM_OPTIONS": "image_size=256"}, "ARM_OPTIONS='image_size=256' is not allowed: None or a dict of keyword options"),
    ("03_acdc_story", {"EVALUATOR_OPTIONS": {"dino-id": "x"}}, "EVALUATOR_OPTIONS={'dino-id': 'x'} is not allowed: None or a dict of keyword options with str keys that are Python names"),
    ("03_acdc_story", {"ARM_ID": 7}, "ARM_ID=7 is not allowed: None or a path"),
    ("03_acdc_story", {"SWEEP_STORIES": None}, f"SWEEP_STORIES=None is not allowed: {POS_SPLIT}"),
    ("03_acdc_story", {"SWEEP_STRENGTHS": [0.5, 0]}, "SWEEP_STRENGTHS=[0.5, 0] is not allowed: a non-empty list (or tuple), each a number in (0, 1]"),
    ("03_acdc_story", {"SWEEP_STRENGTHS": 0.5}, "SWEEP_STRENGTHS=0.5 is not allowed: a non-empty list (or tuple), each a number in (0, 1]"),
    ("03_acdc_story", {"STEPS": 1}, "STEPS=1, STRENGTH=0.5 are not allowed together: int(STEPS * STRENGTH) >= 1"),
    ("03_acdc_story", {"SMOKE": False, "STEPS": 3},
     "SMOKE=False, STEPS=3, SWEEP_STRENGTHS=(0.3, 0.5, 0.7, 1.0) are not allowed together: int(STEPS * t') >= 1 for every t' of SWEEP_STRENGTHS"),
    # 04: the memory module
    ("04_memory_module", {"N_SMOKE": 0}, f"N_SMOKE=0 is not allowed: {POS_SPLIT}"),
    ("04_memory_module", {"ENCODERS": "minilm"}, "ENCODERS='minilm' is not allowed: a list (or tuple) of distinct items, each one of ['minilm', 'evaluator']"),
    ("04_memory_module", {"ENCODERS": ["minilm", "clip"]}, "ENCODERS=['minilm', 'clip'] is not allowed: a list (or tuple) of distinct items, each one of ['minilm', 'evaluator']"),
    ("04_memory_module", {"ENCODERS": ["minilm", "minilm"]}, "ENCODERS=['minilm', 'minilm'] is not allowed: a list (or tuple) of distinct items"),
    ("04_memory_module", {"LLM_MODE": "paragraph"}, "LLM_MODE='paragraph' is not allowed: one of ['story', 'frame']"),
    ("04_memory_module", {"DEVICE": "gpu"}, f"DEVICE='gpu' is not allowed: {DEVICE_WORDS}"),
]


def _case_id(case) -> str:
    stem, changed, _ = case
    return stem[:2] + "-" + ",".join(f"{k}={v!r}" for k, v in changed.items())


@pytest.mark.parametrize("stem, changed, fragment", BAD, ids=[_case_id(c) for c in BAD])
def test_a_bad_value_is_refused_with_its_name_and_what_is_allowed(stem, changed, fragment):
    namespace = {**_cell_defaults(stem), **changed}
    with pytest.raises(ValueError) as e:
        params.check_params(namespace, params.NOTEBOOK_PARAMS[stem])
    assert _expected(fragment) in str(e.value)
    # one line per problem: only the changed parameters are named, and the one-problem message is the line itself
    assert str(e.value).count("\n") == 0


# (file name, set body with {nb} for the notebooks folder, fragments of the message)
BAD_SETS = [
    ("typo.yaml", "name: t\nnotebooks:\n  - {notebook: '{nb}/03_acdc_story.ipynb', parameters: {STEP: 20}}\n",
     ["typo.yaml", "notebooks/03_acdc_story.ipynb has no parameters ['STEP']", "'STEPS'", "'STRENGTH'"]),
    ("defaults.yaml", "name: t\ndefaults: {LLM_MODE: frame}\nnotebooks:\n  - {notebook: '{nb}/00_diffusion_theory.ipynb'}\n",
     ["defaults.yaml", "00_diffusion_theory.ipynb has no parameters ['LLM_MODE']", "its parameters cell defines: ['BETA_MAX'"]),
    ("device.yaml", "name: t\nnotebooks:\n  - {notebook: '{nb}/01_story_data.ipynb', parameters: {DEVICE: cuda, SMOKE: false}}\n",
     ["device.yaml", "01_story_data.ipynb has no parameters ['DEVICE']", "'N_SAMPLE_STORIES'"]),
    ("quoted.yaml", "name: t\nnotebooks:\n  - {notebook: '{nb}/03_acdc_story.ipynb', parameters: {STEPS: '20'}}\n",
     ["quoted.yaml", "03_acdc_story.ipynb: STEPS='20' is not allowed: a positive int"]),
    ("smoke.yaml", "name: t\ndefaults: {SMOKE: 'false'}\nnotebooks:\n  - {notebook: '{nb}/04_memory_module.ipynb'}\n",
     ["smoke.yaml", "04_memory_module.ipynb: SMOKE='false' is not allowed: True or False"]),
]


@pytest.mark.parametrize("name, body, fragments", BAD_SETS, ids=[c[0] for c in BAD_SETS])
def test_a_parameter_set_is_refused_when_a_notebook_lacks_a_name_or_refuses_a_value(tmp_path, name, body, fragments):
    path = tmp_path / name
    path.write_text(body.replace("{nb}", str(NOTEBOOKS)))
    with pytest.raises(ValueError) as e:
        runs.load_run_set(path)
    for f in fragments:
        assert f in str(e.value)


def test_every_failure_of_one_call_is_in_one_message():
    namespace = {**_cell_defaults("03_acdc_story"), "STEPS": "20", "ARM": "emu4", "DTYPE": "fp16"}
    with pytest.raises(ValueError) as e:
        params.check_params(namespace, params.NOTEBOOK_PARAMS["03_acdc_story"])
    lines = str(e.value).splitlines()
    assert lines[0] == "3 problems with the parameters:"
    assert [line.split("=")[0] for line in lines[1:]] == ["DTYPE", "ARM", "STEPS"]  # in the spec's order


def test_a_name_missing_from_the_namespace_is_refused():
    with pytest.raises(ValueError, match=r"STEPS is not defined: the parameters cell must define it \(a positive int\)"):
        params.check_params({}, {"STEPS": params.integer(1)})


@pytest.mark.parametrize("stem", STEMS)
def test_the_defaults_of_every_notebook_pass_its_spec(stem):
    defaults = _cell_defaults(stem)
    assert params.notebook_defaults(NOTEBOOKS / f"{stem}.ipynb") == defaults
    checked = params.check_params(defaults, params.NOTEBOOK_PARAMS[stem])
    assert checked == defaults


@pytest.mark.parametrize("stem", STEMS)
def test_each_spec_names_exactly_its_notebooks_parameters(stem):
    spec = params.NOTEBOOK_PARAMS[stem]
    names = {n for n in spec if isinstance(n, str)}
    assert names == set(_cell_defaults(stem))
    assert all(set(n) <= names for n in spec if isinstance(n, tuple))


@pytest.mark.parametrize("stem", STEMS)
def test_the_setup_cell_checks_the_parameters_first(stem):
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    k = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    imports, setup = "".join(nb["cells"][k - 1]["source"]), "".join(nb["cells"][k + 1]["source"])
    assert "from acdc_lib.params import NOTEBOOK_PARAMS, check_params\n" in imports
    assert setup.startswith(f'check_params(globals(), NOTEBOOK_PARAMS["{stem}"])')


@pytest.mark.parametrize("set_path", SETS, ids=lambda p: p.stem)
def test_every_shipped_parameter_set_passes(set_path):
    rs = runs.load_run_set(set_path)  # refuses unknown names and bad values itself
    for run in rs.runs:
        stem = run.notebook.stem
        # as `runs.execute` runs it: the set's parameters and the output folders over the cell's defaults
        namespace = {**_cell_defaults(stem), **run.parameters, "OUT_DIR": "papermill_runs/out/x", "FIG_DIR": "figures"}
        params.check_params(namespace, params.NOTEBOOK_PARAMS[stem])


def test_values_the_notebooks_take_are_allowed():
    # papermill's and the tests' ways of passing values: lists for tuples, numpy ints, ints for floats
    spec = params.NOTEBOOK_PARAMS["03_acdc_story"]
    defaults = _cell_defaults("03_acdc_story")
    real = dict(ARM="emu3", ARM_ID="models/emu3", ARM_OPTIONS={"top_k": 8}, DM="sd", DM_ID="models/sd", EVALUATOR="real",
                EVALUATOR_ID="models/clip", EVALUATOR_OPTIONS={"dino_id": "models/dino", "inception": "models/inception.pt"},
                GROUND_TRUTH=None, MEMORY="rules", N_STORIES=2, STEPS=4, BATCH_SIZE=2, OUT_DIR="out", FIG_DIR=Path("fig"))
    params.check_params({**defaults, **real}, spec)
    params.check_params({**defaults, "STEPS": np.int64(50), "STRENGTH": 1, "GUIDANCE": 0, "SWEEP_STRENGTHS": [0.5, 1.0],
                         "DEVICE": "cuda:1", "DTYPE": "bfloat16", "MEMORY": "llm", "LLM_BASE_URL": "http://127.0.0.1:8000/v1",
                         "N_STORIES": 1000, "SMOKE": False}, spec)
    params.check_params({**_cell_defaults("04_memory_module"), "ENCODERS": [], "LLM_MODE": "frame"},
                        params.NOTEBOOK_PARAMS["04_memory_module"])
    # SMOKE skips the t' sweep, so its strengths need not run a step at few STEPS
    params.check_params({**defaults, "STEPS": 3, "STRENGTH": 0.5}, spec)
