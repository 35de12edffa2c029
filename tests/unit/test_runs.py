"""Parameter sets: validation, result folders with resolved parameters, and resume."""
import json
from pathlib import Path

import nbformat
import pytest

from acdc_lib import runs


def _tiny_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SEED = 0\nSMOKE = True\nOUT_DIR = None\nFIG_DIR = None\nX = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        params,
        nbformat.v4.new_code_cell("from acdc_lib.runs import record_results\nrecord_results(OUT_DIR, {'x2': X * 2, 'smoke': SMOKE})"),
    ]
    nbformat.write(nb, path)
    return path


def _write_set(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "set.yaml"
    p.write_text(body)
    return p


def test_bad_sets_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        runs.load_run_set(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        runs.load_run_set(_write_set(tmp_path, "name: a\ncolour: red\nnotebooks: [{notebook: x.ipynb}]\n"))
    with pytest.raises(ValueError, match="'notebooks' must be a non-empty list"):
        runs.load_run_set(_write_set(tmp_path, "name: a\nnotebooks: []\n"))
    with pytest.raises(ValueError, match=r"notebooks\[0\] has unknown keys \['params'\]"):
        runs.load_run_set(_write_set(tmp_path, "name: a\nnotebooks: [{notebook: x.ipynb, params: {}}]\n"))


def test_defaults_merge_and_hash_changes_with_parameters(tmp_path):
    rs = runs.load_run_set(_write_set(tmp_path, "name: a\ndefaults: {SEED: 3, X: 1}\nnotebooks:\n"
                                      "  - {notebook: n.ipynb, parameters: {X: 2}}\n  - {notebook: n.ipynb}\n"))
    assert rs.runs[0].parameters == {"SEED": 3, "X": 2}
    assert rs.runs[1].parameters == {"SEED": 3, "X": 1}
    assert runs.params_hash(rs.runs[0].parameters) != runs.params_hash(rs.runs[1].parameters)


def test_execute_writes_results_then_resumes(tmp_path):
    nb = _tiny_notebook(tmp_path / "07_tiny.ipynb")
    rs = runs.load_run_set(_write_set(tmp_path, f"name: t\nnotebooks:\n  - {{notebook: {nb}, parameters: {{X: 21, SMOKE: false}}}}\n"
                                      f"  - {{notebook: {tmp_path / 'missing.ipynb'}}}\n"))
    out = tmp_path / "out"
    rows = runs.execute(rs, out_root=out, fig_dir=None)
    assert [r["status"] for r in rows] == ["ran", "absent"]
    d = Path(rows[0]["out_dir"])
    assert json.loads((d / "results.json").read_text()) == {"x2": 42, "smoke": False}
    saved = json.loads((d / "params.json").read_text())
    assert saved["parameters"]["X"] == 21 and saved["parameters"]["OUT_DIR"] == str(d)
    assert (d / "07_tiny.ipynb").is_file()
    # A second call finds the results and does not execute again.
    rows2 = runs.execute(rs, out_root=out, fig_dir=None)
    assert rows2[0]["status"] == "cached"


def test_record_results_without_out_dir_writes_nothing(tmp_path):
    assert runs.record_results(None, {"a": 1}) is None
    p = runs.record_results(tmp_path / "r", {"a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2]}


def test_strip_keeps_numbered_outputs_only_on_check_cells():
    from acdc_lib import nbtools

    nb = nbformat.v4.new_notebook()
    plain = nbformat.v4.new_code_cell("print(1)", execution_count=4,
                                      outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")])
    check = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('ok')", execution_count=9,
                                      outputs=[nbformat.v4.new_output("stream", name="stdout", text="ok\n"),
                                               nbformat.v4.new_output("display_data", data={"image/png": "AAAA", "text/plain": "<Figure>"})])
    nb.cells = [plain, check]
    nbtools.strip_outputs(nb)
    assert plain.outputs == [] and plain.execution_count is None
    # nbval compares check cells: they keep their text output and an execution count.
    assert [o["output_type"] for o in check.outputs] == ["stream"] and check.execution_count == 1
