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


def _step_notebook(path: Path, body: str) -> Path:
    """A notebook with parameters SHARED and FAIL whose body runs between them and record_results."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SEED = 0\nOUT_DIR = None\nFIG_DIR = None\nSHARED = None\nFAIL = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("from pathlib import Path\nfrom acdc_lib.runs import record_results\n" + body)]
    nbformat.write(nb, path)
    return path


def _step_set(tmp_path: Path, name: str, steps: list[tuple[str, str, str]], defaults: str = "{}") -> "runs.RunSet":
    """A set of step notebooks: per step its stem, its body and the extra keys of its entry (YAML flow text)."""
    entries = "".join(f"  - {{notebook: {_step_notebook(tmp_path / (stem + '.ipynb'), body)}{extra}}}\n"
                      for stem, body, extra in steps)
    return runs.load_run_set(_write_set(tmp_path, f"name: {name}\ndefaults: {defaults}\nnotebooks:\n{entries}"))


def test_after_must_name_earlier_notebooks(tmp_path):
    body = "name: a\nnotebooks:\n  - {notebook: 00_x.ipynb}\n  - {notebook: 01_y.ipynb, after: %s}\n"
    assert runs.load_run_set(_write_set(tmp_path, body % "['00']")).runs[1].after == ("00_x",)
    assert runs.load_run_set(_write_set(tmp_path, body % "all")).runs[1].after == ("00_x",)
    with pytest.raises(ValueError, match=r"'after' names '02', which matches no notebook before it.*\['00_x'\]"):
        runs.load_run_set(_write_set(tmp_path, body % "['02']"))
    for bad in ("00_x", "[00]"):  # a bare stem; an unquoted number (YAML reads 00 as 0)
        with pytest.raises(ValueError, match=r"notebooks\[1\] \(01_y\): 'after' must be \"all\" or a list"):
            runs.load_run_set(_write_set(tmp_path, body % bad))
    # a later notebook cannot be waited for (no cycle can form)
    with pytest.raises(ValueError, match="matches no notebook before it"):
        runs.load_run_set(_write_set(tmp_path, "name: a\nnotebooks:\n  - {notebook: 00_x.ipynb, after: ['01']}\n"
                                                 "  - {notebook: 01_y.ipynb}\n"))
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        runs.execute(runs.load_run_set(_write_set(tmp_path, body % "all")), out_root=tmp_path, jobs=0)


def test_parallel_runs_wait_for_after_and_share_the_out_placeholder(tmp_path):
    # 00 writes a file that 02 reads from a folder under "{out}"; 01 waits for nothing. With two jobs,
    # 01 runs beside 00, and 02 would fail (no file) if it started before 00 ended.
    rs = _step_set(tmp_path, "p", [
        ("00_write", "import time\ntime.sleep(2)\nPath(SHARED).mkdir(parents=True)\n"
                     "(Path(SHARED) / 'rows.txt').write_text('six')\nrecord_results(OUT_DIR, {'wrote': SHARED})", ""),
        ("01_other", "record_results(OUT_DIR, {'x': 1})", ""),
        ("02_read", "record_results(OUT_DIR, {'read': (Path(SHARED) / 'rows.txt').read_text()})", ", after: [00_write]")],
        defaults="{SHARED: '{out}/shared'}")
    out = tmp_path / "out"
    rows = runs.execute(rs, out_root=out, fig_dir=None, jobs=2)
    assert [r["status"] for r in rows] == ["ran", "ran", "ran"]
    res = [json.loads((Path(r["out_dir"]) / "results.json").read_text()) for r in rows]
    assert res[0] == {"wrote": str(out / "shared")} and res[2] == {"read": "six"}
    # the placeholder is resolved for the notebook, and the folder's hash is the set's own text
    assert rows[0]["parameters"]["SHARED"] == "{out}/shared"
    assert Path(rows[0]["out_dir"]).name == f"p-00_write-{runs.params_hash({'SHARED': '{out}/shared'})}"


def test_a_failed_parallel_run_keeps_the_others_and_starts_no_dependent(tmp_path):
    rs = _step_set(tmp_path, "f", [
        ("00_bad", "if FAIL:\n    raise RuntimeError('broken on purpose')\nrecord_results(OUT_DIR, {})", ", parameters: {FAIL: true}"),
        ("01_good", "import time\ntime.sleep(3)\nrecord_results(OUT_DIR, {'ok': 1})", ""),
        ("02_after", "record_results(OUT_DIR, {})", ", after: all")])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"notebooks failed: \['00_bad'\]; not started: \['02_after'\]"):
        runs.execute(rs, out_root=out, fig_dir=None, jobs=2)
    # the notebook running beside the failed one finished and kept its results; a rerun resumes
    assert json.loads((runs.run_dir("f", rs.runs[1], out) / "results.json").read_text()) == {"ok": 1}
    assert not (runs.run_dir("f", rs.runs[2], out) / "results.json").exists()


def test_a_relative_out_root_is_taken_from_where_the_run_starts(tmp_path, monkeypatch):
    # the notebook runs in its own folder; its OUT_DIR and "{out}" must still name the caller's folder
    (tmp_path / "nbs").mkdir()
    rs = _step_set(tmp_path / "nbs", "r", [("00_rel", "record_results(OUT_DIR, {'shared': SHARED})",
                                            ", parameters: {SHARED: '{out}/s'}")])
    monkeypatch.chdir(tmp_path)
    rows = runs.execute(rs, out_root=Path("rel_out"), fig_dir=None)
    d = tmp_path / "rel_out" / f"r-00_rel-{runs.params_hash({'SHARED': '{out}/s'})}"
    assert Path(rows[0]["out_dir"]) == d
    assert json.loads((d / "results.json").read_text()) == {"shared": str(tmp_path / "rel_out" / "s")}
