"""Stories sharded across processes with accelerate write the same per-story files as one process."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acdc_lib import experiment as E

DRIVER = Path(__file__).resolve().parent / "shard_driver.py"
REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_accelerate_processes_write_the_files_of_one(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if accelerate is None:
        pytest.skip("the accelerate command is not installed beside this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "one"), "5", "0"], check=True, env=env,
                   capture_output=True, timeout=300)
    # accelerate's multi-GPU launcher is torchrun; on a machine without GPUs each process joins a CPU
    # (gloo) group, which is what `--cpu` alone would not start (it runs one process)
    run = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                          str(DRIVER), str(tmp_path / "two"), "5", "1"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    shares = [(tmp_path / f"two-share-{r}.txt").read_text() for r in (0, 1)]
    assert shares == ["s0 s1 s2 s3", "s4"]                            # each process its own batches (of 2)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 1 + 2 * 5 * 2 and one == two                               # config + (npz, json) x rows


def test_process_share_in_one_process_is_everything():
    assert E.process_share(["a", "b", "c"]) == ["a", "b", "c"]


def test_the_command_line_runner_writes_the_rows_notebook03_resumes(tmp_path, capsys):
    from acdc_lib.experiment.__main__ import main

    stories = str(REPO / "data" / "stories" / "test.jsonl")
    args = ["--stories", stories, "--first", "2", "--rows", "arm", "acdc_nomem", "--steps", "4",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "computed arm 2, acdc_nomem 2 stories" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "run" / "arm").iterdir()) == [
        "g1-000000.json", "g1-000000.npz", "g1-000001.json", "g1-000001.npz"]
    assert main(args) == 0 and "computed arm 0, acdc_nomem 0 stories" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--arm-option", "top_k"])
    with pytest.raises(SystemExit):
        main(args + ["--first", "0"])
