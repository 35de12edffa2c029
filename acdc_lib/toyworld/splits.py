"""The fixed story splits of the toy world: a committed test split and a regenerated train split.

Splits (`make_splits`, or `python -m acdc_lib.toyworld.splits make-splits`): data/stories/test.jsonl,
1,000 grammar stories (stream seed 1) that no model trains on, committed; the train split (20,000
stories of stream seed 0, minus any whose sentences equal a test story's) is regenerated
deterministically on demand into the git-ignored data/stories/.cache/ and checked against the
SHA-256 in data/stories/MANIFEST.json. Both are `acdc_lib.stories` files whose states are
validated as toy scene states when read.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Collection, Iterable

from acdc_lib.io import atomic_write_json, atomic_write_text
from acdc_lib.stories import CACHE_DIR, SCHEMA_NAME, STORIES_DIR, format_stories
from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.stories import check_toy_state, read_toy_stories
from acdc_lib.toyworld.world import WORLD_VERSION
from acdc_lib.types import SCHEMA_VERSION, Story

MANIFEST_PATH = STORIES_DIR / "MANIFEST.json"
SPLITS: dict[str, dict[str, Any]] = {
    # name -> stream seed, size, where it lives, whether the file is committed.
    "test": {"seed": 1, "n": 1000, "path": STORIES_DIR / "test.jsonl", "committed": True},
    "train": {"seed": 0, "n": 20000, "path": CACHE_DIR / "train.jsonl", "committed": False},
}


def _split_stories(name: str, exclude: Collection[tuple[str, ...]] = ()) -> list[Story]:
    spec = SPLITS[name]
    out: list[Story] = []
    i = 0
    while len(out) < spec["n"]:
        chunk = generate_stories(min(4096, 2 * (spec["n"] - len(out))), seed=spec["seed"], start=i)
        i += len(chunk)
        out.extend(s for s in chunk if tuple(s.sentences) not in exclude)
    return out[: spec["n"]]


def build_splits() -> dict[str, str]:
    """The file texts of every split: test first, then train without any test story's sentences."""
    test = _split_stories("test")
    test_keys = {tuple(s.sentences) for s in test}
    train = _split_stories("train", exclude=test_keys)
    return {"test": format_stories(test, "grammar", check_state=check_toy_state),
            "train": format_stories(train, "grammar", check_state=check_toy_state)}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_splits(check: bool = False) -> dict[str, Any]:
    """Write (or with `check`, verify) the splits and data/stories/MANIFEST.json.

    Returns:
        the manifest: per split, its path (relative to data/stories), stream seed, size, SHA-256
        of the file and whether the file is committed to git.
    """
    texts = build_splits()
    manifest = {"schema": SCHEMA_NAME, "version": SCHEMA_VERSION, "world_version": WORLD_VERSION, "splits": {}}
    for name, text in texts.items():
        spec = SPLITS[name]
        manifest["splits"][name] = {
            "path": str(Path(spec["path"]).relative_to(STORIES_DIR)), "seed": spec["seed"], "n": spec["n"],
            "sha256": _sha(text), "committed": spec["committed"],
        }
    if check:
        old = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
        if old != manifest:
            raise RuntimeError(f"regenerated splits differ from {MANIFEST_PATH}: {old} != {manifest}")
        return manifest
    for name, text in texts.items():
        atomic_write_text(SPLITS[name]["path"], text)
    atomic_write_json(MANIFEST_PATH, manifest)
    return manifest


def load_split(name: str, regenerate: bool = True) -> list[Story]:
    """The stories of split `name` ("train" or "test"), checked against the manifest's SHA-256.

    The train split is not committed: it is regenerated (about 20 s on 2 cores) into
    data/stories/.cache/ the first time, when `regenerate`. States are validated as toy scene states.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; allowed: {list(SPLITS)}")
    manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    entry = manifest["splits"][name]
    path = STORIES_DIR / entry["path"]
    if not path.exists() or _sha(path.read_text(encoding="utf-8")) != entry["sha256"]:
        if SPLITS[name]["committed"] or not regenerate:
            raise FileNotFoundError(f"{path} is missing or does not match {MANIFEST_PATH}; "
                                    f"run `python -m acdc_lib.toyworld.splits make-splits`")
        text = build_splits()[name]
        if _sha(text) != entry["sha256"]:
            raise RuntimeError(f"regenerated {name} split does not match {MANIFEST_PATH} (grammar or numpy changed?)")
        atomic_write_text(path, text)
    return read_toy_stories(path)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acdc_lib.toyworld.splits", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-splits", help="write data/stories/{test.jsonl, MANIFEST.json} and the train cache")
    mk.add_argument("--check", action="store_true", help="verify the regenerated splits against the manifest")
    args = parser.parse_args(list(argv) if argv is not None else None)
    manifest = make_splits(check=args.check)
    for name, e in manifest["splits"].items():
        print(f"{name}: {e['n']} stories, seed {e['seed']}, {e['path']}, sha256 {e['sha256'][:16]}…"
              f"{' (checked)' if args.check else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
