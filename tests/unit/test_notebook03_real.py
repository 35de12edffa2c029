"""Notebook 03 on the real path: Emu3 as the ARM, SD img2img as corrector and DM-only model, the real
evaluator, all tiny random models saved to folders and passed by id, as a GPU node would pass real ones."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tiny_diffusers as td
from acdc_lib.io import REPO_ROOT
from test_backends_evaluator import clip_processor, dino_processor, tiny_dino
from tiny_backends import save_tiny_emu3


class ScriptableFeatures(nn.Module):
    """An Inception-like stand-in that TorchScript can save (FID's feature network)."""

    def __init__(self):
        super().__init__()
        self.num_features = 6
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x * 2 - 1)), 1).flatten(1))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_path")
    torch.manual_seed(0)
    save_tiny_emu3(root / "emu3")
    td.tiny_sd_img2img_pipeline().save_pretrained(root / "sd")
    td.tiny_clip_model().save_pretrained(root / "clip")
    clip_processor().save_pretrained(root / "clip")
    tiny_dino().save_pretrained(root / "dino")
    dino_processor().save_pretrained(root / "dino")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(ScriptableFeatures().eval()), str(root / "inception.pt"))
    return root


@pytest.mark.slow
def test_notebook03_runs_emu3_with_sd_and_the_real_evaluator(models, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "out"
    params = dict(ARM="emu3", ARM_ID=str(models / "emu3"), ARM_OPTIONS={"top_k": 8}, DM="sd", DM_ID=str(models / "sd"), EVALUATOR="real",
                  EVALUATOR_ID=str(models / "clip"),
                  EVALUATOR_OPTIONS={"dino_id": str(models / "dino"), "inception": str(models / "inception.pt")},
                  GROUND_TRUTH=None, MEMORY="rules", N_STORIES=2, STEPS=4, BATCH_SIZE=2, OUT_DIR=str(out),
                  FIG_DIR=str(tmp_path / "fig"))
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "03_acdc_story.ipynb"), str(tmp_path / "run.ipynb"),
                               parameters=params, kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False)
    res = json.loads((out / "results.json").read_text())
    assert res["parts"]["arm"] == "emu3" and res["parts"]["evaluator"] == "real" and res["parts"]["dm"] == "sd"
    assert list(res["table"]) == ["dm_only", "arm", "acdc_rules", "acdc_nomem"]   # no oracle without true frames
    assert set(res["table"]["arm"]) == {"frame_consistency", "subject_consistency", "clip_score"}
    assert {"fid", "reference", "attribute_accuracy", "physical_validity", "identity_acc"} == set(res["not_measured"])
    table = json.loads((out / "table1_toy.json").read_text())
    assert table["n_stories"] == 2 and all(0 <= v["value"] <= 100 for v in table["rows"]["arm"].values())
    runs = out / "story_runs"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == sorted(res["table"])
