"""A dry run of every GPU set (`papermill_runs/gpu-*.yaml`: gpu-emu3-sd15, gpu-janus-sd15, gpu-node) on CPU:
every notebook the set names, in its order, through `acdc_lib.runs` (each notebook in its own folder, as
`python -m acdc_lib.runs <set>` runs it), on tiny random stand-ins of its models.

Each set is rewritten into a dry-run set that keeps every notebook and the set's own parameters for it, and
swaps only what a CPU and missing weights force: DEVICE cpu; model ids become folders of tiny random models
(the tests' own), with their frame sizes and at most two frames of context (their 1,024 positions); counts the
fewest that reach every cell (`SMALL`: two stories or clips, four frames, four steps; SMOKE true); outputs
(OUT_DIR, FIG_DIR, "{out}") under the test's folder. The set's other ARM options (dtype bfloat16, the sampling
settings), its relative paths (PROMPTS) and RUN_DIRs stay as written, so a set that cannot run
(a path not found from the notebook's folder, a value a notebook refuses) fails here. Notebook 08 runs last,
on the runs its set's earlier notebooks left in the same dry run: each of them must be among the report's
sources with its results, and the report must be written.

The toy-world notebooks whose dry-run parameters are the same in several sets (00, 01, 02, 04, 07) run once;
their run folders are copied under the next sets' names, where `acdc_lib.runs` finds them as results present.
Wall time, OMP_NUM_THREADS=1, on 2 CPU cores shared with a training: the module about 8 min (gpu-emu3-sd15
220 s, running the shared toy notebooks; gpu-janus-sd15 84 s; gpu-node 158 s); one set alone up to 6 min.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import tiny_diffusers as td
from acdc_lib import runs
from acdc_lib.experiment.claims import Source
from acdc_lib.io import REPO_ROOT
from acdc_lib.params import notebook_parameters
from test_backends_evaluator import clip_processor, dino_processor, tiny_dino
from test_notebook03_real import ScriptableFeatures
from tiny_backends import save_tiny_emu3, save_tiny_janus

SETS = sorted(p.stem for p in (REPO_ROOT / "papermill_runs").glob("gpu-*.yaml"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_sets")
    torch.manual_seed(0)
    save_tiny_emu3(root / "emu3")
    save_tiny_janus(root / "janus")
    td.tiny_sd_img2img_pipeline().save_pretrained(root / "sd")
    td.tiny_animatediff_v2v_pipeline().motion_adapter.save_pretrained(root / "adapter")
    td.tiny_clip_model().save_pretrained(root / "clip")
    clip_processor().save_pretrained(root / "clip")
    tiny_dino().save_pretrained(root / "dino")
    dino_processor().save_pretrained(root / "dino")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(ScriptableFeatures().eval()), str(root / "inception.pt"))
    return root


@pytest.fixture(scope="module")
def shared_runs():
    """(notebook stem, dry-run parameters) -> the run folder of the first set that ran it."""
    return {}


# The fewest stories, clips, frames and steps that still reach every cell, for whichever notebook defines them
# (SMOKE is set too; these are below even its sizes, which the notebook tests run). N_TEST_STORIES 100: notebook
# 02's CLIP gate ranks one frame a story among 100.
SMALL = {"N_STORIES": 2, "SWEEP_STORIES": 2, "CALIBRATION_STORIES": 2, "COMPARE_STORIES": 2, "COST_REPEATS": 1,
         "STEPS": 4, "N_SMOKE": 4, "N_TEST_STORIES": 100, "ARM_STORIES": 4, "DM_FRAMES": 4, "DM_STEPS": 4,
         "BENCH_FRAMES": 50, "N_SAMPLE_STORIES": 2, "N_CLIPS": 2, "N_FRAMES": 4, "CHUNK": 2, "LONG_FRAMES": 3}
# Where a notebook gives one of those names another meaning: notebook 09's LONG_FRAMES are story lengths.
SMALL_BY_NOTEBOOK = {"09_storygpt_v": {"LONG_FRAMES": [6], "LONG_STORIES": 2, "STORYGPT_STEPS": 4}}


def _dry(stem: str, params: dict, models: Path, dry_set: Path, out_root: Path) -> dict:
    """A set entry's parameters with only what a CPU and missing weights force swapped."""
    defined = notebook_parameters(REPO_ROOT / "notebooks" / f"{stem}.ipynb")
    p = dict(params)
    p.update({k: v for k, v in SMALL.items() if k in defined})
    p.update(SMALL_BY_NOTEBOOK.get(stem, {}))
    if "DEVICE" in defined:
        p["DEVICE"] = "cpu"
    if p.get("ARM") in ("emu3", "janus"):
        p["ARM_ID"] = str(models / p["ARM"])
        opts = dict(p.get("ARM_OPTIONS") or {})
        if "image_size" in opts:
            opts["image_size"] = 16  # the tiny Emu3's frames
        if "context_frames" in opts:
            opts["context_frames"] = min(opts["context_frames"], 2)  # the tiny models' 1,024 positions
        p["ARM_OPTIONS"] = opts
    if p.get("EVALUATOR") == "real":
        p.update(EVALUATOR_ID=str(models / "clip"),
                 EVALUATOR_OPTIONS={"dino_id": str(models / "dino"), "inception": str(models / "inception.pt")})
    if "DM_ID" in p:
        p.update(DM_ID=str(models / "sd"), DM_RESOLUTION=None, BATCH_SIZE=2)
    if "VIDEO_DM_ID" in p:
        p.update(VIDEO_DM_ID=str(models / "sd"), VIDEO_DM_OPTIONS={"motion_adapter": str(models / "adapter")},
                 BATCH_SIZE=2)
    if stem == "08_figures":  # the report of this dry run, from its runs
        p.update(RUN_SET=str(dry_set), RUNS_ROOT=str(out_root), REPORT_PATH=str(out_root / f"REPORT-{dry_set.stem}.md"))
    if isinstance(p.get("RUN_DIR"), str):  # under the output root, so here under the test's folder
        assert p["RUN_DIR"].startswith(runs.OUT_PLACEHOLDER), f"RUN_DIR {p['RUN_DIR']!r} must start with {{out}}"
    return p


def _dry_set(set_name: str, models: Path, tmp: Path) -> Path:
    """The set rewritten for a dry run (`_dry` on every entry), written beside its outputs; its path."""
    data = yaml.safe_load((REPO_ROOT / "papermill_runs" / f"{set_name}.yaml").read_text())
    path = tmp / f"{set_name}.yaml"
    data["defaults"] = {**(data.get("defaults") or {}), "SMOKE": True}
    for e in data["notebooks"]:
        e["parameters"] = _dry(Path(e["notebook"]).stem, e.get("parameters") or {}, models, path, tmp / "out")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("set_name", SETS)
def test_a_gpu_set_runs_every_notebook_to_the_end_on_cpu_with_tiny_models(models, shared_runs, tmp_path,
                                                                            monkeypatch, set_name):
    pytest.importorskip("papermill")
    for k in ("OPENAI_API_KEY", "LLM_BASE_URL"):  # the memory notebook's LLM row is skipped, as without a key
        monkeypatch.delenv(k, raising=False)
    names = [Path(e["notebook"]).stem for e in yaml.safe_load((REPO_ROOT / "papermill_runs" / f"{set_name}.yaml")
                                                               .read_text())["notebooks"]]
    rs = runs.load_run_set(_dry_set(set_name, models, tmp_path))
    assert [r.stem for r in rs.runs] == names  # every notebook of the set, in its order
    out_root = tmp_path / "out"
    for r in rs.runs:
        if r.parameters.get("ARM") in ("emu3", "janus"):
            assert r.parameters["ARM_OPTIONS"]["dtype"] == "bfloat16"  # the set's own ARM dtype, kept
        key = (r.stem, json.dumps(r.parameters, sort_keys=True))
        if key in shared_runs:  # the same notebook with the same parameters ran for an earlier set
            shutil.copytree(shared_runs[key], runs.run_dir(rs.name, r, out_root))
    rows = runs.execute(rs, out_root=out_root, fig_dir=tmp_path / "fig")

    assert [r["notebook"] for r in rows] == names
    assert {r["status"] for r in rows} <= {"ran", "cached"}, rows
    for r in rs.runs:
        d = runs.run_dir(rs.name, r, out_root)
        assert json.loads((d / "results.json").read_text())  # its last cell recorded its results
        shared_runs.setdefault((r.stem, json.dumps(r.parameters, sort_keys=True)), d)
    report = json.loads((runs.run_dir(rs.name, rs.runs[-1], out_root) / "results.json").read_text())
    for r in rs.runs[:-1]:  # the report read every earlier notebook's results of this dry run
        label = Source(r.stem, None, None, r.parameters).label
        assert report["sources"][label] == runs.run_dir(rs.name, r, out_root).name, (label, report["sources"])
    assert (out_root / f"REPORT-{set_name}.md").read_text().startswith("#")
