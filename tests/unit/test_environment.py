"""The setup installs a CPU-only torch and the notebooks keep the house structure."""
from pathlib import Path

import pytest
import torch

from acdc_lib import envcheck, nbtools
from acdc_lib.io import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_no_cuda_packages_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may carry CUDA packages")
    assert envcheck.cuda_distributions() == []
    assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"


def test_versions_match_pins():
    import tomllib

    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = dict(p.split("==") for p in pins)
    got = envcheck.versions(tuple(pinned))
    for name, want in pinned.items():
        assert got[name].split("+")[0] == want, f"{name}: installed {got[name]}, pinned {want}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_structure(path: Path):
    assert nbtools.check(path) == []


def test_environment_yml_has_the_same_pins():
    import tomllib

    import yaml

    proj = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = set(proj["dependencies"]) | {p for extra in proj["optional-dependencies"].values() for p in extra}
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(conda_pip) == pins
