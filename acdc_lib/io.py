"""Small file helpers shared by every module: atomic writes and the repository's folders."""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURES_DIR = REPO_ROOT / "figures"
SMOKE_FIGURES_DIR = FIGURES_DIR / "smoke"  # git-ignored: notebooks run with defaults write here
DATA_DIR = REPO_ROOT / "data"
# The temporary file of `atomic_write_bytes(path)`: "." + path's name + "." + mkstemp's random part + ".tmp".
_LEFTOVER = re.compile(r"\.(.+)\.[A-Za-z0-9_]+\.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
    `path` (os.replace is atomic on POSIX within one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` of `text` encoded with `encoding`."""
    return atomic_write_bytes(path, text.encode(encoding))


def nan_as_null(obj: Any) -> Any:
    """A copy of `obj` (dicts, lists, tuples, floats) with every NaN or infinite float replaced by None, so
    that a value that is undefined (a metric of a story where it has no meaning) is written as JSON null
    instead of being refused."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nan_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_as_null(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """`atomic_write_text` of `json.dumps(obj)`; keys keep their order, NaN is refused."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False, default=_jsonable) + "\n")


def leftover_target(name: str) -> str | None:
    """The file name whose `atomic_write_bytes` left the temporary file `name` behind, else None.

    A write killed before its rename leaves ".<target>.<random>.tmp" beside <target>; that file was
    never <target> (the rename is what publishes it), so it holds no result and can be removed.

    Args:
        name: a file name (no folder), e.g. ".s1.npz.k2j4_x9q.tmp" (target "s1.npz").
    """
    m = _LEFTOVER.fullmatch(name)
    return m.group(1) if m else None


def move_aside(path: str | os.PathLike, suffix: str = ".damaged") -> Path:
    """Rename `path` to `<path><suffix>` (or `<path><suffix>.2`, `.3`, ... if taken) and return the new path.

    For a file that must make way for a rewrite but may still be worth a look: nothing is deleted,
    and an earlier file set aside under the same name is not overwritten.

    Args:
        path: an existing file.
        suffix: appended to its name.
    """
    path = Path(path)
    dest, k = path.with_name(path.name + suffix), 1
    while dest.exists():
        k += 1
        dest = path.with_name(f"{path.name}{suffix}.{k}")
    os.replace(path, dest)
    return dest


def _jsonable(x: Any) -> Any:
    # numpy / torch scalars and small arrays, Paths and sets, which json does not know.
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
