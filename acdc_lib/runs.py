"""Batch runs of the notebooks through papermill.

A parameter set `papermill_runs/<set>.yaml` names notebooks and their parameters:

    name: toy-cpu
    description: full toy settings on CPU
    defaults: {SEED: 0}                # merged into every notebook's parameters
    notebooks:
      - notebook: notebooks/00_diffusion_theory.ipynb
        parameters: {N_SAMPLES: 2000}

Each executed notebook gets `papermill_runs/out/<set>-<notebook>-<params hash>/` holding
`params.json` (the resolved parameters), `<notebook>.ipynb` (executed) and `results.json` (written by
the notebook's last cell through `record_results`). A run whose results.json exists for the same
parameters is skipped, so a killed batch resumes where it stopped; `--force` reruns.

    python -m acdc_lib.runs papermill_runs/toy-cpu.yaml [--only 00_diffusion_theory] [--force]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import REPO_ROOT, atomic_write_json, atomic_write_text, nan_as_null
from .params import NOTEBOOK_PARAMS, check_params, notebook_defaults, notebook_parameters

OUT_ROOT = REPO_ROOT / "papermill_runs" / "out"
ALLOWED_SET_KEYS = {"name", "description", "defaults", "notebooks"}
ALLOWED_ENTRY_KEYS = {"notebook", "parameters", "timeout_s"}


@dataclass
class NotebookRun:
    notebook: Path
    parameters: dict[str, Any]
    timeout_s: int | None = None

    @property
    def stem(self) -> str:
        return self.notebook.stem


@dataclass
class RunSet:
    name: str
    runs: list[NotebookRun]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


def params_hash(params: dict[str, Any]) -> str:
    """8 hex digits of the SHA-256 of the parameters as canonical JSON."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


def load_run_set(path: str | Path) -> RunSet:
    """Read and validate a parameter set; errors name the file and the bad key, parameter or value.

    A notebook present on disk is checked with `check_run_parameters`: every parameter must be one its
    parameters cell defines, and its value one the notebook accepts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter set {path} not found (sets: {sorted(p.name for p in (REPO_ROOT / 'papermill_runs').glob('*.yaml'))})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    unknown = set(data) - ALLOWED_SET_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(ALLOWED_SET_KEYS)}")
    if not isinstance(data.get("notebooks"), list) or not data["notebooks"]:
        raise ValueError(f"{path}: 'notebooks' must be a non-empty list")
    defaults = data.get("defaults") or {}
    runs = []
    for k, entry in enumerate(data["notebooks"]):
        if not isinstance(entry, dict) or "notebook" not in entry:
            raise ValueError(f"{path}: notebooks[{k}] must be a mapping with a 'notebook' key, got {entry!r}")
        unknown = set(entry) - ALLOWED_ENTRY_KEYS
        if unknown:
            raise ValueError(f"{path}: notebooks[{k}] has unknown keys {sorted(unknown)}; allowed: {sorted(ALLOWED_ENTRY_KEYS)}")
        params = {**defaults, **(entry.get("parameters") or {})}
        nb = Path(entry["notebook"])
        run = NotebookRun(nb if nb.is_absolute() else REPO_ROOT / nb, params, entry.get("timeout_s"))
        if run.notebook.is_file():  # a notebook a later issue adds cannot be checked yet (execute skips it)
            check_run_parameters(path, run)
        runs.append(run)
    return RunSet(name=data.get("name", path.stem), runs=runs, description=data.get("description", ""), defaults=defaults)


def check_run_parameters(set_path: str | Path, run: NotebookRun) -> None:
    """Refuse parameters that the notebook's parameters cell does not define, or values its spec refuses.

    Papermill would inject an unknown name silently and the notebook would run as if it were absent, so
    it is refused here; the values are checked as the notebook itself checks them (`acdc_lib.params`),
    over its defaults, so a bad value fails before a batch spends hours on the notebooks before it.

    Args:
        set_path: the parameter set's file (for messages).
        run: one notebook of the set, its file present.

    Raises:
        ValueError naming the set, the notebook, the unknown names and the names it defines; or the
        set, the notebook and each refused value with what is allowed.
    """
    defined = notebook_parameters(run.notebook)
    unknown = sorted(set(run.parameters) - set(defined))
    if unknown:
        raise ValueError(f"{set_path}: {_shown(run.notebook)} has no parameters {unknown}; "
                         f"its parameters cell defines: {sorted(defined)}")
    spec = NOTEBOOK_PARAMS.get(run.stem)
    if spec is None:
        return
    try:
        check_params({**notebook_defaults(run.notebook), **run.parameters}, spec)
    except ValueError as e:
        raise ValueError(f"{set_path}: {_shown(run.notebook)}: {e}") from None


def _shown(p: Path) -> str:
    """`p` relative to the repository when inside it, else as is (for messages and params.json)."""
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def run_dir(set_name: str, run: NotebookRun, out_root: Path = OUT_ROOT) -> Path:
    return out_root / f"{set_name}-{run.stem}-{params_hash(run.parameters)}"


def record_results(out_dir: str | Path | None, results: dict[str, Any], name: str = "results.json") -> Path | None:
    """Called by a notebook's last cell: write `results` atomically to out_dir/results.json.

    With out_dir None (interactive or nbval use) nothing is written and None is returned. A value that
    is undefined (NaN, e.g. a metric no story defines at some frame) is written as null.
    """
    if out_dir is None:
        return None
    return atomic_write_json(Path(out_dir) / name, nan_as_null(results))


def execute(run_set: RunSet, only: list[str] | None = None, force: bool = False, out_root: Path = OUT_ROOT,
            kernel_name: str = "python3", fig_dir: str | None = "figures") -> list[dict[str, Any]]:
    """Execute every notebook of the set that exists; returns one summary row per notebook."""
    import papermill as pm

    rows = []
    for run in run_set.runs:
        if only and run.stem not in only and not any(run.stem.startswith(o) for o in only):
            continue
        row: dict[str, Any] = {"notebook": run.stem, "parameters": run.parameters}
        if not run.notebook.is_file():
            # The set may name notebooks that later issues add; say so rather than fail.
            print(f"[runs] {run.stem}: notebook not present yet, skipped")
            rows.append({**row, "status": "absent"})
            continue
        d = run_dir(run_set.name, run, out_root)
        params = {**run.parameters, "OUT_DIR": str(d), "FIG_DIR": fig_dir}
        if (d / "results.json").is_file() and not force:
            print(f"[runs] {run.stem}: results present in {_shown(d)}, skipped (use --force to rerun)")
            rows.append({**row, "status": "cached", "out_dir": str(d)})
            continue
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "params.json", {"set": run_set.name, "notebook": _shown(run.notebook), "parameters": params})
        t0 = time.perf_counter()
        print(f"[runs] {run.stem}: running -> {_shown(d)}", flush=True)
        pm.execute_notebook(str(run.notebook), str(d / run.notebook.name), parameters=params,
                            cwd=str(run.notebook.parent), kernel_name=kernel_name, language="python",
                            execution_timeout=run.timeout_s, progress_bar=False)
        dt = time.perf_counter() - t0
        if not (d / "results.json").is_file():
            raise RuntimeError(f"{run.stem} ran but wrote no results.json in {d}: its last cell must call record_results(OUT_DIR, ...)")
        print(f"[runs] {run.stem}: done in {dt:.0f} s")
        rows.append({**row, "status": "ran", "seconds": round(dt, 1), "out_dir": str(d)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_set", help="papermill_runs/<set>.yaml")
    ap.add_argument("--only", nargs="*", help="notebook stems (or prefixes such as 00) to run")
    ap.add_argument("--force", action="store_true", help="rerun notebooks whose results exist")
    ap.add_argument("--out-root", default=str(OUT_ROOT))
    args = ap.parse_args(argv)
    rs = load_run_set(args.run_set)
    t0 = time.perf_counter()
    rows = execute(rs, only=args.only, force=args.force, out_root=Path(args.out_root))
    total = time.perf_counter() - t0
    lines = [f"# Run set `{rs.name}`", "", rs.description, "", "| notebook | status | seconds | folder |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['notebook']} | {r['status']} | {r.get('seconds', '')} | {Path(r['out_dir']).name if 'out_dir' in r else ''} |")
    lines += ["", f"total: {total:.0f} s"]
    atomic_write_text(Path(args.out_root) / f"{rs.name}-summary.md", "\n".join(lines) + "\n")
    atomic_write_json(Path(args.out_root) / f"{rs.name}-summary.json", {"set": rs.name, "rows": rows, "seconds": round(total, 1)})
    print("\n".join(lines))
    if not any(r["status"] in ("ran", "cached") for r in rows):
        print("[runs] warning: no notebook of this set exists yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
