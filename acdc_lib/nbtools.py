"""Keep notebooks clean and checkable.

    python -m acdc_lib.nbtools refresh notebooks/00_diffusion_theory.ipynb [...]

executes each notebook with its default (smoke) parameters, then keeps stored outputs only on the
check cells (`# NBVAL_CHECK_OUTPUT`), which `pytest --nbval-lax` compares on every run; every
other output is dropped so the notebook stays small and its diffs readable.

    python -m acdc_lib.nbtools check notebooks/*.ipynb

verifies the house structure: a title, one `parameters` cell defining SEED, SMOKE,
OUT_DIR and FIG_DIR, a last cell that records results, and a stored output on every check cell.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
REQUIRED_PARAMETERS = ("SEED", "SMOKE", "OUT_DIR", "FIG_DIR")


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and CHECK_MARK in cell.source


def strip_outputs(nb) -> None:
    """Drop outputs and execution counts of every cell but the check cells."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        if is_check_cell(cell):
            # Keep only text outputs: images and widget state change from run to run. nbval refuses a
            # reference cell with outputs but no execution count ("Unrun reference cell"), so check cells
            # are numbered 1, 2, ... in order.
            count += 1
            cell.execution_count = count
            cell.outputs = [o for o in cell.outputs if o.get("output_type") == "stream"
                            or ("text/plain" in o.get("data", {}) and len(o.get("data", {})) == 1)]
            for o in cell.outputs:
                if "execution_count" in o:
                    o["execution_count"] = count
        else:
            cell.outputs = []
    nb.metadata.pop("widgets", None)


def refresh(path: str | Path, timeout: int = 900) -> None:
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    strip_outputs(nb)
    nbformat.write(nb, path)


def check(path: str | Path) -> list[str]:
    """House-structure problems of one notebook (empty list when fine)."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    problems = []
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not nb.cells[0].source.lstrip().startswith("# "):
        problems.append("first cell must be a markdown title ('# ...')")
    pcells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(pcells) != 1:
        problems.append(f"expected one cell tagged 'parameters', found {len(pcells)}")
    else:
        for name in REQUIRED_PARAMETERS:
            if f"{name} =" not in pcells[0].source:
                problems.append(f"parameters cell does not define {name}")
        for line in pcells[0].source.splitlines():
            code, _, comment = line.partition("#")
            if code.strip() and "=" in comment:
                # papermill cannot parse such a line, so the parameter could not be overridden.
                problems.append(f"parameter line {line.strip()!r}: its comment contains '=', which papermill cannot parse")
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or "record_results" not in code[-1].source:
        problems.append("last code cell must call record_results(OUT_DIR, ...)")
    for k, c in enumerate(nb.cells):
        if is_check_cell(c) and not c.outputs:
            problems.append(f"check cell {k} has no stored output (run `python -m acdc_lib.nbtools refresh {path}`)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["refresh", "check", "strip"])
    ap.add_argument("notebooks", nargs="+")
    args = ap.parse_args(argv)
    bad = 0
    for p in args.notebooks:
        if args.command == "refresh":
            refresh(p)
            print(f"refreshed {p}")
        elif args.command == "strip":
            nb = nbformat.read(p, as_version=4)
            strip_outputs(nb)
            nbformat.write(nb, p)
        else:
            probs = check(p)
            for q in probs:
                print(f"{p}: {q}")
            bad += bool(probs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
