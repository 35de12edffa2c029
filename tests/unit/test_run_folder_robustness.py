"""A resume over a damaged or half-written run folder: each bad file is named, set aside and its story
recomputed, the result is byte for byte an uninterrupted run's, and scoring says which stories to rerun.

The world is robustness_driver's: dummy models drawing (1, 2, 2) frames, five rows, batches of 2.
The damage tests copy one healthy run and break one story of one row; the kill test SIGKILLs a
slowed-down run in a subprocess at seeded random moments and resumes it until it finishes.
"""
import io
import json
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from acdc_lib import experiment as E
from acdc_lib.experiment.rows import DamagedRunFileWarning, check_story_files
from acdc_lib.io import leftover_target, move_aside
from robustness_driver import N, run, stories

DRIVER = Path(__file__).resolve().parent / "robustness_driver.py"
ROW, SID, S = "acdc_rules", "s1", 4  # the damaged row and story; stories in the damage tests


def _files(root: Path) -> dict[str, bytes]:
    """{path under root: bytes} of every file but the ones set aside (*.damaged, *.damaged.2, ...)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".damaged" not in p.name}


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _npz(frames: np.ndarray, key: str = "frames") -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{key: frames})
    return buf.getvalue()


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    """An uninterrupted run of S stories."""
    root = tmp_path_factory.mktemp("healthy")
    run(root, S)
    return root


@pytest.fixture
def copy(healthy, tmp_path) -> Path:
    """A copy of the healthy run (file times kept), to damage."""
    return Path(shutil.copytree(healthy, tmp_path / "run"))


def _record_without_seed(d: Path) -> None:
    rec = json.loads((d / f"{SID}.json").read_text())
    del rec["seed"]
    (d / f"{SID}.json").write_text(json.dumps(rec))


# name of the damaged file the warning must name, and how to damage story SID of ROW
DAMAGES = {
    "empty json": (f"{SID}.json", lambda d: (d / f"{SID}.json").write_bytes(b"")),
    "truncated json": (f"{SID}.json", lambda d: _cut(d / f"{SID}.json")),
    "json list": (f"{SID}.json", lambda d: (d / f"{SID}.json").write_text("[]")),
    "json without seed": (f"{SID}.json", _record_without_seed),
    "json without its npz": (f"{SID}.npz", lambda d: (d / f"{SID}.npz").unlink()),
    "npz without its json": (f"{SID}.json", lambda d: (d / f"{SID}.json").unlink()),
    "truncated npz": (f"{SID}.npz", lambda d: _cut(d / f"{SID}.npz")),
    "npz of another story length": (f"{SID}.npz", lambda d: (d / f"{SID}.npz").write_bytes(
        _npz(np.zeros((N - 1, 1, 2, 2), np.uint8)))),
    "npz of another image size": (f"{SID}.npz", lambda d: (d / f"{SID}.npz").write_bytes(
        _npz(np.zeros((N, 1, 4, 4), np.uint8)))),
    "npz of another dtype": (f"{SID}.npz", lambda d: (d / f"{SID}.npz").write_bytes(
        _npz(np.zeros((N, 1, 2, 2), np.float32)))),
    "npz without frames": (f"{SID}.npz", lambda d: (d / f"{SID}.npz").write_bytes(
        _npz(np.zeros((N, 1, 2, 2), np.uint8), key="images"))),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_story_is_set_aside_and_recomputed_alone(copy, healthy, damage):
    name, breaks = DAMAGES[damage]
    row_dir = copy / ROW
    breaks(row_dir)
    left = {p.name: p.read_bytes() for p in row_dir.glob(f"{SID}.*")}        # what the damage left of SID
    stamps = _stamps(copy)
    assert check_story_files(row_dir, stories(S)[1], E.story_seed(0, 1), (1, 2, 2)) not in ("done", "missing")
    with pytest.warns(DamagedRunFileWarning, match=re.escape(name)) as rec:
        computed = run(copy, S)
    assert len(rec) == 1 and "moved" in str(rec[0].message)
    assert computed == {r: [SID] if r == ROW else [] for r in E.DEFAULT_ROWS}
    assert _files(copy) == _files(healthy)
    # every other file untouched; nothing of SID lost: each file the damage left is kept as .damaged
    others = lambda st: {k: v for k, v in st.items() if not k.startswith(f"{ROW}/{SID}.")}
    assert others(_stamps(copy)) == others(stamps)
    assert {p.name: p.read_bytes() for p in row_dir.glob(f"{SID}.*.damaged")} == \
        {f"{k}.damaged": v for k, v in left.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                        # healthy again: no warning
        assert run(copy, S) == {r: [] for r in E.DEFAULT_ROWS}
    assert check_story_files(row_dir, stories(S)[1], E.story_seed(0, 1)) == "done"


def test_another_image_size_is_found_by_the_first_computed_batch(copy, healthy):
    row_dir = copy / ROW
    (row_dir / f"{SID}.npz").write_bytes(_npz(np.zeros((N, 1, 4, 4), np.uint8)))
    for p in row_dir.glob("s3.*"):                                           # s3 still to compute
        p.unlink()
    assert check_story_files(row_dir, stories(S)[1]) == "done"               # alone it looks finished
    assert "holds uint8 frames of shape (6, 1, 4, 4)" in check_story_files(row_dir, stories(S)[1],
                                                                             frame_shape=(1, 2, 2))
    with pytest.warns(DamagedRunFileWarning, match=r"s1\.npz holds frames of size \(1, 4, 4\); this run's are "
                                                   r"\(1, 2, 2\)"):
        computed = run(copy, S)
    assert computed[ROW] == ["s3", SID]
    assert _files(copy) == _files(healthy)


def test_when_most_files_have_another_image_size_the_right_one_stays(copy, healthy):
    row_dir = copy / ROW
    for sid in ("s0", "s2", "s3"):
        (row_dir / f"{sid}.npz").write_bytes(_npz(np.zeros((N, 1, 4, 4), np.uint8)))
    s1 = (row_dir / f"{SID}.npz").stat().st_mtime_ns
    with pytest.warns(DamagedRunFileWarning) as rec:                        # s1 (the rarest size) is computed
        computed = run(copy, S)                                             # to learn the size, and kept
    assert computed[ROW] == ["s0", "s2", "s3"] and len(rec) == 3
    assert (row_dir / f"{SID}.npz").stat().st_mtime_ns == s1 and not list(row_dir.glob(f"{SID}.*.damaged"))
    assert _files(copy) == _files(healthy)


def test_leftover_temporary_files_are_removed_and_nothing_recomputed(copy, healthy):
    leftovers = [copy / ROW / ".s1.npz.ab12_x9z.tmp", copy / "arm" / ".s2.json.q0w9e8r7.tmp",
                 copy / ".config.json.k2j4_x9q.tmp"]
    others = [copy / ROW / ".s9.npz.ab12_x9z.tmp", copy / ROW / ".notes.tmp"]  # not a file of these stories
    for p in leftovers + others:
        p.write_bytes(b"half a write")
    stamps = _stamps(copy)
    with pytest.warns(DamagedRunFileWarning) as rec:
        computed = run(copy, S)
    assert computed == {r: [] for r in E.DEFAULT_ROWS}
    assert len(rec) == 3 and all(any(p.name in str(w.message) for w in rec) for p in leftovers)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in others)
    assert _stamps(copy) == {k: v for k, v in stamps.items() if not any(k.endswith(p.name) for p in leftovers)}
    for p in others:
        p.unlink()
    assert _files(copy) == _files(healthy)


def test_a_record_of_another_run_is_still_refused_and_nothing_moves(copy):
    row_dir = copy / ROW
    (row_dir / "s0.json").write_text("[]")                                   # damaged, before the foreign one
    rec = json.loads((row_dir / f"{SID}.json").read_text())
    (row_dir / f"{SID}.json").write_text(json.dumps({**rec, "seed": 99}))
    stamps = _stamps(copy)
    with pytest.raises(ValueError, match=r"s1\.json was written for seed 99.*same order"):
        run(copy, S)
    assert _stamps(copy) == stamps and not list(copy.rglob("*.damaged"))
    (row_dir / f"{SID}.json").write_text(json.dumps({**rec, "row": "arm"}))  # a file of another row
    with pytest.raises(ValueError, match=r"'row': \('arm', 'acdc_rules'\)"):
        run(copy, S)


def test_a_damaged_config_is_a_clear_error(copy):
    (copy / "config.json").write_bytes(b"")
    with pytest.raises(ValueError, match=r"config\.json is not readable JSON.*delete it"):
        run(copy, S)


class _Evaluator:
    """Just enough of the Evaluator protocol for summarise to reach its check of the folder."""

    name, fid_features, attributes = "stub", None, {}

    def embed_images(self, images):
        raise AssertionError("summarise scored an incomplete folder")

    def clip_model_fn(self):
        raise AssertionError("summarise scored an incomplete folder")

    def predict_attributes(self, images):
        raise AssertionError("summarise scored an incomplete folder")


def test_scoring_names_the_stories_to_rerun(copy):
    _cut(copy / ROW / f"{SID}.npz")
    for p in (copy / ROW).glob("s3.*"):
        p.unlink()
    config = E.ExperimentConfig(batch_size=2, num_inference_steps=10)
    msg = (r"row 'acdc_rules' .* lacks 2 of 4 stories \(s1: s1\.npz is not a readable frames file \(BadZipFile.*\); "
           r"s3: not run yet\); stories to rerun: \['s1', 's3'\]\. Run run_experiment again")
    with pytest.raises(ValueError, match=msg):
        E.summarise(copy, stories(S), _Evaluator(), config)
    with pytest.raises(ValueError, match=msg):
        E.load_frames(copy, ROW, stories(S))
    assert E.load_frames(copy, "arm", stories(S)).shape == (S, N, 1, 2, 2)


def test_frames_damaged_inside_the_zip_are_named_when_read(tmp_path):
    import zipfile

    # Frames large enough that their header sits in the first block read: the resume's header check
    # passes and only reading every frame (scoring) meets the damage, here a wrong checksum.
    st, row_dir = stories(1)[0], tmp_path / ROW
    row_dir.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (N, 3, 32, 32), dtype=np.uint8)
    path = row_dir / f"{st.story_id}.npz"
    path.write_bytes(_npz(frames))
    (row_dir / f"{st.story_id}.json").write_text(json.dumps({"seed": 0, "sentences": st.sentences}))
    assert E.load_frames(tmp_path, ROW, [st]).shape == (1, N, 3, 32, 32)
    with zipfile.ZipFile(path) as z:
        crc = z.getinfo("frames.npy").CRC.to_bytes(4, "little")
    data = path.read_bytes()
    assert data.count(crc) == 2                                             # local and central headers
    path.write_bytes(data.replace(crc, bytes(b ^ 0xFF for b in crc)))      # frames intact, checksum wrong
    assert check_story_files(row_dir, st) == "done"                         # the headers alone look fine
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} cannot be read \(BadZipFile: Bad CRC-32.*\); "
                                         rf"move it aside \(rename it to s0\.npz\.damaged\)"):
        E.load_frames(tmp_path, ROW, [st])


def test_check_story_files_and_the_io_helpers(copy, tmp_path):
    st, seed = stories(S)[1], E.story_seed(0, 1)
    assert check_story_files(copy / ROW, st, seed) == "done"
    assert check_story_files(copy / ROW, stories(S + 1)[S], 0) == "missing"
    (copy / ROW / f"{SID}.json").write_bytes(b"")
    assert check_story_files(copy / ROW, st, seed) == "s1.json is empty"
    (copy / ROW / f"{SID}.npz").unlink()
    assert check_story_files(copy / ROW, st, seed) == "s1.json is empty; s1.npz is missing"
    assert leftover_target(".s1.npz.ab_12.tmp") == "s1.npz" and leftover_target("s1.npz") is None
    p = tmp_path / "aside" / "a.json"
    p.parent.mkdir()
    for k in range(3):                                                       # an earlier one is never overwritten
        p.write_text(str(k))
        assert move_aside(p).read_text() == str(k)
    assert sorted(q.name for q in p.parent.iterdir()) == ["a.json.damaged", "a.json.damaged.2", "a.json.damaged.3"]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_files(tmp_path):
    # Writes slowed more than the models, so most kills land inside a write (a temporary file, or a
    # story's .npz without its .json).
    n_stories, model_sleep, write_sleep, kills = 6, 0.003, 0.02, 5
    run(tmp_path / "whole", n_stories)
    out, log = tmp_path / "killed", tmp_path / "stderr.txt"
    rng = random.Random(20240531)
    cmd = [sys.executable, str(DRIVER), str(out), str(n_stories), str(model_sleep), str(write_sleep)]
    with log.open("w") as err:
        for _ in range(kills):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                assert proc.stdout.readline().strip() == "ready", log.read_text()[-3000:]
                time.sleep(rng.uniform(0.1, 1.0))                              # a whole run: about 1.8 s
            finally:
                proc.kill()                                                    # SIGKILL: no cleanup of any kind
                proc.wait(timeout=60)
                proc.stdout.close()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["ready", "finished"], log.read_text()[-3000:]
    assert _files(out) == _files(tmp_path / "whole")
    assert not [p for p in out.rglob("*.tmp")]
    # what a kill set aside can only be frames whose record was never written: the same frames again
    for p in out.rglob("*.damaged*"):
        assert p.name.split(".")[1] == "npz" and p.read_bytes() == (p.parent / p.name.split(".damaged")[0]).read_bytes()
