"""Where a parameter set's notebooks write their figures: the set's own folder, never the committed
figures from a smoke run."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from acdc_lib import runs
from acdc_lib.io import FIGURES_DIR, REPO_ROOT, SMOKE_FIGURES_DIR

NOTEBOOKS = REPO_ROOT / "notebooks"


def _set(tmp_path: Path, body: str) -> runs.RunSet:
    p = tmp_path / "set.yaml"
    p.write_text(body)
    return runs.load_run_set(p)


def test_each_set_has_its_own_figure_folder(tmp_path):
    toy = runs.load_run_set(REPO_ROOT / "papermill_runs" / "toy-cpu.yaml")
    # the toy reproduction writes the committed figures, every notebook of it with SMOKE off (08 included)
    assert {runs.figure_folder(toy, r) for r in toy.runs} == {FIGURES_DIR}
    for name in ("gpu-emu3-sd15", "gpu-janus-sd15", "gpu-node"):
        rs = runs.load_run_set(REPO_ROOT / "papermill_runs" / f"{name}.yaml")
        assert {runs.figure_folder(rs, r) for r in rs.runs} == {FIGURES_DIR / name}
    nb = NOTEBOOKS / "00_diffusion_theory.ipynb"
    rs = _set(tmp_path, f"name: mine\nfigures: plots/mine\nnotebooks:\n  - {{notebook: {nb}, parameters: {{SMOKE: false}}}}\n"
                        f"  - {{notebook: {nb}}}\n")
    assert runs.figure_folder(rs, rs.runs[0]) == REPO_ROOT / "plots" / "mine"  # a set names its own
    assert runs.figure_folder(rs, rs.runs[1]) == SMOKE_FIGURES_DIR / "mine"  # the notebook's default: SMOKE True
    assert runs.figure_folder(rs, rs.runs[0], tmp_path / "elsewhere") == tmp_path / "elsewhere"
    with pytest.raises(ValueError, match=r"00_diffusion_theory runs with SMOKE on, so its figures may not go to figures"):
        runs.figure_folder(rs, rs.runs[1], FIGURES_DIR)
    assert runs.figure_folder(rs, rs.runs[1], SMOKE_FIGURES_DIR / "x") == SMOKE_FIGURES_DIR / "x"
    with pytest.raises(ValueError, match=r"'figures' must be a folder path .* got 3"):
        _set(tmp_path, f"name: bad\nfigures: 3\nnotebooks: [{{notebook: {nb}}}]\n")


def _committed_figures() -> dict[str, tuple[str, int]]:
    """git's view of figures/ (porcelain status lines) and each tracked file's modification time."""
    status = subprocess.run(["git", "status", "--porcelain", "--", "figures"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout
    tracked = subprocess.run(["git", "ls-files", "figures"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return {"status": status, "mtimes": {f: os.stat(REPO_ROOT / f).st_mtime_ns for f in tracked if (REPO_ROOT / f).exists()}}


def test_a_smoke_run_leaves_the_committed_figures_untouched(tmp_path):
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs the repository's git checkout")
    name = f"smoke-figures-{os.getpid()}"
    rs = _set(tmp_path, f"name: {name}\nnotebooks:\n  - notebook: {NOTEBOOKS / '01_story_data.ipynb'}\n"
                        "    parameters: {N_SAMPLE_STORIES: 2, BENCH_FRAMES: 50}\n")  # SMOKE: the notebook's default
    before = _committed_figures()
    assert before["mtimes"], "no committed figures found"
    try:
        rows = runs.execute(rs, out_root=tmp_path / "out")
        assert [r["status"] for r in rows] == ["ran"]
        params = json.loads((Path(rows[0]["out_dir"]) / "params.json").read_text())["parameters"]
        assert params["FIG_DIR"] == str(SMOKE_FIGURES_DIR / name)
        written = sorted(p.name for p in (SMOKE_FIGURES_DIR / name).glob("*.png"))
        assert "01_sample_stories.png" in written  # the figures went to the smoke folder ...
        assert _committed_figures() == before  # ... and git sees no committed figure changed or rewritten
    finally:
        shutil.rmtree(SMOKE_FIGURES_DIR / name, ignore_errors=True)
