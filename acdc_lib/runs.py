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

Figures go to the set's own folder: `figures: <folder>` in the set (relative to the repository), else
`figures/<set>/`; the toy reproduction names `figures`, the committed figures. A notebook that runs with
its smoke settings (SMOKE true, from the set or its own default) writes to `figures/smoke/<set>/` instead
(git-ignored), so no smoke run touches a committed file. `--fig-dir` overrides the set's folder.

Two more entry keys let notebooks share work and run side by side:

      - notebook: notebooks/06_ablations.ipynb
        parameters: {RUN_DIR: "{out}/toy-cpu-story-rows"}   # "{out}": the output root (--out-root)
        after: [03_acdc_story]       # starts once these earlier notebooks are done; "all": every one

With `--jobs N`, N notebooks run at once, each in its own process, started in the set's order as soon
as the notebooks named in their `after` are done. On a CPU machine, N notebooks of one torch thread
each finish sooner than one after another on N threads, since the toy models' kernels are too small to
keep several threads busy. If a notebook fails, the ones running are let finish (their results are
kept), no other is started, and the failure is raised.

    python -m acdc_lib.runs papermill_runs/toy-cpu.yaml [--only 00_diffusion_theory] [--force] [--jobs 2] [--fig-dir DIR]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import FIGURES_DIR, REPO_ROOT, SMOKE_FIGURES_DIR, atomic_write_json, atomic_write_text, nan_as_null
from .params import NOTEBOOK_PARAMS, check_params, notebook_defaults, notebook_parameters

OUT_ROOT = REPO_ROOT / "papermill_runs" / "out"
ALLOWED_SET_KEYS = {"name", "description", "defaults", "notebooks", "figures"}
ALLOWED_ENTRY_KEYS = {"notebook", "parameters", "timeout_s", "after"}
OUT_PLACEHOLDER = "{out}"


@dataclass
class NotebookRun:
    notebook: Path
    parameters: dict[str, Any]
    timeout_s: int | None = None
    after: tuple[str, ...] = ()  # stems of earlier notebooks of the set that must be done first

    @property
    def stem(self) -> str:
        return self.notebook.stem


@dataclass
class RunSet:
    name: str
    runs: list[NotebookRun]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    figures: str | None = None  # the set's figure folder, relative to the repository (None: figures/<name>)


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
        nb = nb if nb.is_absolute() else REPO_ROOT / nb
        after = _after(path, k, nb.stem, entry.get("after"), [r.stem for r in runs])
        run = NotebookRun(nb, params, entry.get("timeout_s"), after)
        if run.notebook.is_file():  # a notebook not in the repository yet cannot be checked (execute skips it)
            check_run_parameters(path, run)
        runs.append(run)
    figures = data.get("figures")
    if figures is not None and (not isinstance(figures, str) or not figures.strip()):
        raise ValueError(f"{path}: 'figures' must be a folder path (relative to the repository), got {figures!r}")
    return RunSet(name=data.get("name", path.stem), runs=runs, description=data.get("description", ""), defaults=defaults,
                  figures=figures)


def _after(path: Path, k: int, stem: str, value: Any, earlier: list[str]) -> tuple[str, ...]:
    """The stems an entry's `after` names: "all" (every earlier notebook), or a list of stems or prefixes
    (such as 03) each matching at least one earlier notebook. Only earlier ones, so no cycle can form."""
    if value is None:
        return ()
    if value == "all":
        return tuple(earlier)
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        # YAML reads an unquoted 03 as the number 3, which would match notebook 3x: numbers are refused
        raise ValueError(f"{path}: notebooks[{k}] ({stem}): 'after' must be \"all\" or a list of notebook stems "
                         f"or quoted prefixes (such as \"03\"), got {value!r}")
    stems = []
    for v in value:
        match = [e for e in earlier if e == v or e.startswith(v)]
        if not match:
            raise ValueError(f"{path}: notebooks[{k}] ({stem}): 'after' names {v!r}, which matches no notebook "
                             f"before it; the notebooks before it: {earlier}")
        stems += match
    return tuple(dict.fromkeys(stems))


def resolve_parameters(params: dict[str, Any], out_root: Path) -> dict[str, Any]:
    """`params` with "{out}" in every str value replaced by the output root (a folder that notebooks of
    one set share, wherever --out-root puts the runs)."""
    return {k: v.replace(OUT_PLACEHOLDER, str(out_root)) if isinstance(v, str) else v for k, v in params.items()}


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


def runs_smoke(run: NotebookRun) -> bool:
    """Whether the notebook runs with its smoke settings: SMOKE from the set, else the notebook's default
    (a notebook without SMOKE has no smoke settings)."""
    defaults = notebook_defaults(run.notebook) if run.notebook.is_file() else {}
    return bool({**defaults, **run.parameters}.get("SMOKE", False))


def _inside(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def figure_folder(run_set: RunSet, run: NotebookRun, fig_dir: str | Path | None = None) -> Path:
    """The folder a notebook of the set writes its figures to (absolute).

    Args:
        run_set: the set; its `figures` key names its folder (default figures/<set name>/).
        run: one of its notebooks; with smoke settings it writes to figures/smoke/<set name>/ instead.
        fig_dir: a folder that replaces the set's (relative: to the working directory, as --out-root).
    Raises:
        ValueError when a smoke run's `fig_dir` lies among the committed figures (figures/ outside
        figures/smoke/): smoke figures would overwrite the reproduction's.
    """
    smoke = runs_smoke(run)
    if fig_dir is None:
        d = SMOKE_FIGURES_DIR / run_set.name if smoke else REPO_ROOT / (run_set.figures or f"figures/{run_set.name}")
    else:
        d = Path(fig_dir)
    d = Path(os.path.abspath(d))
    if smoke and _inside(d, FIGURES_DIR) and not _inside(d, SMOKE_FIGURES_DIR):
        raise ValueError(f"{run.stem} runs with SMOKE on, so its figures may not go to {_shown(d)}, among the committed "
                         f"figures; allowed: a folder under {_shown(SMOKE_FIGURES_DIR)}/ or outside {_shown(FIGURES_DIR)}/")
    return d


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


def _execute_one(notebook: str, out_dir: str, params: dict[str, Any], kernel_name: str,
                 timeout_s: int | None) -> float:
    """Execute one notebook into out_dir with papermill (in this process); returns its seconds."""
    import papermill as pm

    nb, d = Path(notebook), Path(out_dir)
    t0 = time.perf_counter()
    pm.execute_notebook(str(nb), str(d / nb.name), parameters=params, cwd=str(nb.parent), kernel_name=kernel_name,
                        language="python", execution_timeout=timeout_s, progress_bar=False)
    dt = time.perf_counter() - t0
    if not (d / "results.json").is_file():
        raise RuntimeError(f"{nb.stem} ran but wrote no results.json in {d}: its last cell must call record_results(OUT_DIR, ...)")
    print(f"[runs] {nb.stem}: done in {dt:.0f} s", flush=True)
    return dt


def execute(run_set: RunSet, only: list[str] | None = None, force: bool = False, out_root: Path = OUT_ROOT,
            kernel_name: str = "python3", fig_dir: str | Path | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    """Execute every notebook of the set that exists, `jobs` at once; returns one summary row per notebook
    (in the set's order). Each writes its figures where `figure_folder` says (`fig_dir` overrides the set's folder).

    A notebook waits for the notebooks its `after` names among those this call runs; one that is not
    run here (left out by `only`, absent, or with results present) is not waited for.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int (notebooks run at once), got {jobs!r}")
    # absolute: notebooks run in their own folder, so a relative OUT_DIR or "{out}" would land there
    out_root = Path(os.path.abspath(out_root))
    rows: list[dict[str, Any]] = []
    todo: list[tuple[int, NotebookRun, Path, dict[str, Any]]] = []
    for run in run_set.runs:
        if only and run.stem not in only and not any(run.stem.startswith(o) for o in only):
            continue
        row: dict[str, Any] = {"notebook": run.stem, "parameters": run.parameters}
        rows.append(row)
        if not run.notebook.is_file():
            # The set may name notebooks the repository does not have yet; say so rather than fail.
            print(f"[runs] {run.stem}: notebook not present yet, skipped")
            row["status"] = "absent"
            continue
        d = run_dir(run_set.name, run, out_root)
        params = {**resolve_parameters(run.parameters, out_root), "OUT_DIR": str(d),
                  "FIG_DIR": str(figure_folder(run_set, run, fig_dir))}
        if (d / "results.json").is_file() and not force:
            print(f"[runs] {run.stem}: results present in {_shown(d)}, skipped (use --force to rerun)")
            row.update(status="cached", out_dir=str(d))
            continue
        todo.append((len(rows) - 1, run, d, params))

    def start(run: NotebookRun, d: Path, params: dict[str, Any]) -> tuple:
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "params.json", {"set": run_set.name, "notebook": _shown(run.notebook), "parameters": params})
        print(f"[runs] {run.stem}: running -> {_shown(d)}", flush=True)
        return str(run.notebook), str(d), params, kernel_name, run.timeout_s

    if jobs == 1:  # in this process, in the set's order (every `after` names an earlier notebook)
        for i, run, d, params in todo:
            dt = _execute_one(*start(run, d, params))
            rows[i].update(status="ran", seconds=round(dt, 1), out_dir=str(d))
        return rows

    waiting = list(todo)
    to_run = {run.stem for _, run, _, _ in todo}
    done: set[str] = set()
    failed: dict[str, BaseException] = {}
    running: dict[cf.Future, tuple[int, NotebookRun, Path]] = {}
    # Each notebook in a fresh process: a kernel client per process, and nothing of one run leaks into another.
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                max_tasks_per_child=1) as pool:
        while waiting or running:
            while not failed and len(running) < jobs:
                ready = next((t for t in waiting if all(a in done or a not in to_run for a in t[1].after)), None)
                if ready is None:
                    break
                waiting.remove(ready)
                i, run, d, params = ready
                running[pool.submit(_execute_one, *start(run, d, params))] = (i, run, d)
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                i, run, d = running.pop(fut)
                try:
                    dt = fut.result()
                except Exception as e:  # let the others finish, then raise
                    print(f"[runs] {run.stem}: failed ({type(e).__name__}); no further notebook is started", flush=True)
                    failed[run.stem] = e
                    rows[i].update(status="failed", out_dir=str(d))
                    continue
                done.add(run.stem)
                rows[i].update(status="ran", seconds=round(dt, 1), out_dir=str(d))
    for i, run, d, _ in waiting:
        rows[i].update(status="not started")
    if failed:
        first = next(iter(failed.values()))
        raise RuntimeError(f"notebooks failed: {sorted(failed)}; not started: {[t[1].stem for t in waiting]}; the "
                           f"results of the others are kept (rerun to resume). First failure: {first}") from first
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_set", help="papermill_runs/<set>.yaml")
    ap.add_argument("--only", nargs="*", help="notebook stems (or prefixes such as 00) to run")
    ap.add_argument("--force", action="store_true", help="rerun notebooks whose results exist")
    ap.add_argument("--out-root", default=str(OUT_ROOT))
    ap.add_argument("--fig-dir", default=None, help="folder for the figures, instead of the set's own (its 'figures' "
                    "key, else figures/<set>/; smoke runs: figures/smoke/<set>/)")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks run at once, each in its own process (default 1)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    rs = load_run_set(args.run_set)
    if args.jobs > 1 and not os.environ.get("OMP_NUM_THREADS"):
        print(f"[runs] warning: {args.jobs} notebooks at once, each with torch's default threads (one per core), "
              f"compete for the cores; set OMP_NUM_THREADS (make reproduce sets REPRO_THREADS=1)", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        rows = execute(rs, only=args.only, force=args.force, out_root=Path(args.out_root), jobs=args.jobs,
                       fig_dir=args.fig_dir)
    except Exception as e:  # a model that is not on this machine: its one line, not the notebook's traceback
        cause = e if hasattr(e, "ename") else e.__cause__
        if getattr(cause, "ename", None) == "ModelNotAvailableError":
            print(f"[runs] error: {cause.evalue}", file=sys.stderr)
            return 2
        raise
    total = time.perf_counter() - t0
    lines = [f"# Run set `{rs.name}`", "", rs.description, "", "| notebook | status | seconds | folder |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['notebook']} | {r['status']} | {r.get('seconds', '')} | {Path(r['out_dir']).name if 'out_dir' in r else ''} |")
    lines += ["", f"total: {total:.0f} s ({args.jobs} notebook{'s' if args.jobs > 1 else ''} at once)"]
    atomic_write_text(Path(args.out_root) / f"{rs.name}-summary.md", "\n".join(lines) + "\n")
    atomic_write_json(Path(args.out_root) / f"{rs.name}-summary.json", {"set": rs.name, "rows": rows, "seconds": round(total, 1),
                                                                          "jobs": args.jobs})
    print("\n".join(lines))
    if not any(r["status"] in ("ran", "cached") for r in rows):
        print("[runs] warning: no notebook of this set exists yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
