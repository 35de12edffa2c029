"""Atomic writes: whole files only, the usual permissions, nothing left behind on failure."""
import json
import os
import stat

import pytest

from acdc_lib.io import atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file_with_umask_mode(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert [q.name for q in p.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"a": float("nan")})  # NaN is refused, not written as invalid JSON
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"]


def test_nan_as_null_writes_undefined_values_as_null(tmp_path):
    from acdc_lib.io import atomic_write_json, nan_as_null

    obj = {"a": [1.0, float("nan"), (2, float("inf"))], "b": {"c": -float("inf"), "d": "x"}, "e": 3}
    out = nan_as_null(obj)
    assert out == {"a": [1.0, None, [2, None]], "b": {"c": None, "d": "x"}, "e": 3}
    assert obj["a"][1] != obj["a"][1]  # the input is not changed
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", obj)  # the writer itself still refuses NaN
    atomic_write_json(tmp_path / "x.json", out)
    assert json.loads((tmp_path / "x.json").read_text())["a"][1] is None
