"""Shared helpers of the benchmark scripts: machine facts, repeat statistics, PASS/FAIL lines, JSON results.

Every benchmark prints the machine's core count and torch's thread count, times `repeats` runs and
reports the best (the least disturbed by other processes) with the median, prints `measured / target`
ratios with PASS or FAIL, and writes what it measured to benchmarks/results/<name>.json (git-ignored)
for the report notebook to plot.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Cores, torch threads, versions and the accelerator (if any) this run measured on."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
    }
    for pkg in ("diffusers", "transformers"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def print_machine(info: dict[str, Any] | None = None) -> dict[str, Any]:
    info = machine() if info is None else info
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    load = f", load average {info['load_average_1min']:.2f}" if "load_average_1min" in info else ""
    print(f"machine: {info['cpu_count']} CPU cores, torch {info['torch']} on {info['torch_threads']} threads"
          f"{gpu}{load}")
    if info.get("load_average_1min", 0.0) > 0.5 * (info["cpu_count"] or 1) + 0.5:
        print("  note: the machine is busy; timings are only meaningful on a quiet machine")
    return info


def sync(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work so a wall clock reading counts it (no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_repeats(fn: Callable[[], Any], repeats: int, device: str | torch.device | None = None) -> list[float]:
    """Wall seconds of `repeats` calls of fn (already warmed up by the caller)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def stats(times: list[float]) -> dict[str, Any]:
    return {"best": min(times), "median": statistics.median(times), "times": list(times)}


class Timers:
    """Accumulated wall time per named part, for break-downs (wrap methods of one instance)."""

    def __init__(self, device: str | torch.device | None = None):
        self.device = device
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
            self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, obj: Any, attr: str, name: str | Callable[..., str]) -> Callable[[], None]:
        """Time every call of obj.attr under `name` (or name(*args, **kwargs)); returns an undo function."""
        original = getattr(obj, attr)
        had_own = attr in getattr(obj, "__dict__", {})

        def timed(*args, **kwargs):
            with self.part(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(obj, attr, timed)

        def undo() -> None:
            if had_own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)
        return undo

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()


def verdict(measured: float, target: float, higher_is_better: bool) -> tuple[float, bool]:
    """(measured / target, passed)."""
    ratio = measured / target
    return ratio, (ratio >= 1.0) if higher_is_better else (ratio <= 1.0)


CHECKS: list[dict[str, Any]] = []  # every ratio_line of this process, written by write_results as "checks"


def ratio_line(label: str, measured: float, target: float, *, higher_is_better: bool, unit: str = "x") -> str:
    """The printed `measured / target` line of one target, also kept in CHECKS for the results file."""
    ratio, ok = verdict(measured, target, higher_is_better)
    CHECKS.append({"label": label, "measured": measured, "target": target, "unit": unit,
                   "higher_is_better": higher_is_better, "ratio": ratio, "pass": ok})
    sign = ">=" if higher_is_better else "<="
    return (f"{label}: {measured:.3g}{unit}; target {sign} {target:g}{unit}: measured / target = {ratio:.2f} -> "
            f"{'PASS' if ok else 'FAIL'}")


def write_results(name: str, payload: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Write payload (plus machine facts, the command line and a UTC time stamp) as JSON; returns the path."""
    out = Path(path) if path is not None else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "argv": sys.argv, **payload}
    doc.setdefault("machine", machine())
    doc.setdefault("checks", list(CHECKS))  # the targets this run printed, for the report notebook
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"results written to {out}")
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, (torch.dtype, torch.device, Path)):
        return str(x)
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")
