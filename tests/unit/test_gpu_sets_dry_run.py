"""The GPU sets' real-model notebooks, run on CPU with tiny random stand-ins of every model they name.

Each run takes a set's own parameters for the notebook and swaps only what a CPU and no weights force: the
model ids become folders of tiny models (the tests' own), the frame sizes theirs, and the counts smoke-sized.
The ARM options the set gives (dtype bfloat16, the context window, the sampling settings) stay as written.
One notebook runs at a time. The sets' other notebooks (00-02, 04, 07) run the toy world, which the notebook
tests run with their defaults; notebook 08 reads the runs. About 4.5 minutes for the six on 2 shared CPU cores.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import tiny_diffusers as td
from acdc_lib.io import REPO_ROOT
from test_backends_evaluator import clip_processor, dino_processor, tiny_dino
from test_notebook03_real import ScriptableFeatures
from tiny_backends import save_tiny_emu3, save_tiny_janus

SETS = ("gpu-emu3-sd15", "gpu-janus-sd15")


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


def _entry(set_name: str, stem: str) -> dict:
    data = yaml.safe_load((REPO_ROOT / "papermill_runs" / f"{set_name}.yaml").read_text())
    return next(e["parameters"] for e in data["notebooks"] if Path(e["notebook"]).stem == stem)


def _tiny(params: dict, models: Path, out: Path) -> dict:
    p = dict(params)
    p.update(DEVICE="cpu", ARM_ID=str(models / p["ARM"]), EVALUATOR_ID=str(models / "clip"),
             EVALUATOR_OPTIONS={"dino_id": str(models / "dino"), "inception": str(models / "inception.pt")},
             OUT_DIR=str(out / "out"), FIG_DIR=str(out / "fig"))
    opts = dict(p["ARM_OPTIONS"])
    if "image_size" in opts:
        opts["image_size"] = 16  # the tiny Emu3's frames
    opts["context_frames"] = min(opts["context_frames"], 2)  # the tiny models' 1,024 positions
    p["ARM_OPTIONS"] = opts
    if "DM_ID" in p:
        p.update(DM_ID=str(models / "sd"), DM_RESOLUTION=None, STEPS=4, BATCH_SIZE=2, N_STORIES=2)
        p.pop("RUN_DIR", None)
        p.pop("SWEEP_STORIES", None)
    if "VIDEO_DM_ID" in p:
        p.update(VIDEO_DM_ID=str(models / "sd"), VIDEO_DM_OPTIONS={"motion_adapter": str(models / "adapter")},
                 N_CLIPS=2, N_FRAMES=4, CHUNK=2, STEPS=4, BATCH_SIZE=2, LONG_FRAMES=3,
                 PROMPTS=str(REPO_ROOT / p["PROMPTS"]))
    p["SMOKE"] = True
    return p


@pytest.mark.slow
@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("stem", ["03_acdc_story", "05_video_extension", "06_ablations"])
def test_a_gpu_sets_real_notebook_runs_to_the_end_on_tiny_models(models, tmp_path, set_name, stem):
    papermill = pytest.importorskip("papermill")
    params = _tiny(_entry(set_name, stem), models, tmp_path)
    assert params["ARM_OPTIONS"]["dtype"] == "bfloat16"  # the set's own ARM dtype, through ARM_OPTIONS
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / f"{stem}.ipynb"), str(tmp_path / "run.ipynb"),
                               parameters=params, kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res  # the last cell recorded its results
