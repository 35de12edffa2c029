"""Build the parts of an ACDC run from names: ARMs, correctors, evaluators, ground truths, vocabularies.

The core knows no backend by import. A backend is a module named in the `acdc_lib.backends` entry-point
group (pyproject.toml) holding a dict `COMPONENTS = {kind: {name: builder}}`; a builder takes keyword
options (`model_id`, `device`, `dtype`, ...) and returns the part. This package registers two: the
embedded toy world (`toy`) and the real models (`emu3`, `janus`, `sd`, `real`); another package can add
its own the same way, without changing this one.

    arm = build("arm", "toy", device="cpu")          # any object of the ARM protocol
    names = available("arm")                          # {name: the module that provides it}
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

ENTRY_POINT_GROUP = "acdc_lib.backends"
KINDS = ("arm", "corrector", "evaluator", "ground_truth", "vocabulary")
"""arm: the ARM protocol; corrector: Corrector (and TextToImage for the DM-only row where it can);
evaluator: Evaluator; ground_truth: GroundTruth; vocabulary: the rule memory's `Vocabulary`."""

_REGISTRY: dict[str, dict[str, tuple[str, Callable[..., Any]]]] = {}


def _load() -> dict[str, dict[str, tuple[str, Callable[..., Any]]]]:
    if _REGISTRY:
        return _REGISTRY
    found = {k: {} for k in KINDS}
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if not eps:
        raise RuntimeError(f"no backend is registered under the entry-point group {ENTRY_POINT_GROUP!r}: "
                           "install the package (pip install -e .) so its entry points exist")
    for ep in eps:
        module = importlib.import_module(ep.value)
        table = getattr(module, "COMPONENTS", None)
        if not isinstance(table, dict):
            raise RuntimeError(f"backend {ep.name!r} ({ep.value}) has no COMPONENTS dict")
        for kind, builders in table.items():
            if kind not in found:
                raise RuntimeError(f"backend {ep.name!r} offers unknown kind {kind!r}; kinds: {list(KINDS)}")
            for name, fn in builders.items():
                if name in found[kind]:
                    raise RuntimeError(f"{kind} {name!r} is offered by both {found[kind][name][0]} and {ep.value}")
                found[kind][name] = (ep.value, fn)
    _REGISTRY.update(found)
    return _REGISTRY


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {list(KINDS)}")


def available(kind: str) -> dict[str, str]:
    """{name: providing module} of every registered component of `kind`."""
    _check_kind(kind)
    return {name: mod for name, (mod, _) in sorted(_load()[kind].items())}


def build(kind: str, name: str, **options: Any) -> Any:
    """Build the component `name` of `kind` with the builder's keyword `options`.

    Raises:
        ValueError naming the kind, the name and what is available when `name` is unknown.
    """
    _check_kind(kind)
    table = _load()[kind]
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{kind} {name!r} is not available; available {kind}s: {sorted(table)}")
    return table[name][1](**options)


__all__ = ["ENTRY_POINT_GROUP", "KINDS", "available", "build"]
