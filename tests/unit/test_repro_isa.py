"""make reproduce pins the CPU kernels to AVX2 by default, and a setup line says when they are not pinned."""
import shutil
import subprocess

import pytest

from acdc_lib import envcheck
from acdc_lib.io import REPO_ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reproduce_pins_avx2_by_default():
    def dry(*extra):
        out = subprocess.run(["make", "-n", "reproduce", *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout
        return next(line for line in out.splitlines() if "acdc_lib.runs" in line)

    assert "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 " in dry()
    assert "ATEN_CPU_CAPABILITY" not in dry("REPRO_ISA=")


def test_the_setup_line_says_whether_the_kernels_are_pinned(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert "not pinned: figures may differ from the committed ones in the last digits" in envcheck.describe(seed=0)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    line = envcheck.describe(seed=0)
    assert "(pinned: ATEN_CPU_CAPABILITY=avx2)" in line and "may differ" not in line
