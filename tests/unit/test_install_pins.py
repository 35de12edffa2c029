"""The GPU install keeps the torch pin: torchvision is pinned to the release built for the pinned torch, in
every place that names install packages (environment.yml, pyproject.toml, the README's commands)."""
import re
import tomllib

import yaml

from acdc_lib.io import REPO_ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([0-9][^\s;]*)$")


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = PIN.match(line.strip())
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    return _pins(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))


def _pyproject_pins() -> dict[str, str]:
    proj = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return _pins([*proj["dependencies"], *(p for extra in proj["optional-dependencies"].values() for p in extra)])


def torchvision_for(torch_version: str) -> str:
    """The torchvision release built for a torch 2.x release: 0.(x + 15).0 (torch 2.0 <-> 0.15 onwards;
    torchvision 0.28.0's wheel metadata reads `Requires-Dist: torch (==2.13.0)`)."""
    major, minor = (int(v) for v in torch_version.split(".")[:2])
    assert major == 2, f"the pairing rule holds for torch 2.x, got {torch_version}"
    return f"0.{minor + 15}.0"


def test_the_pairing_rule_matches_published_pairs():
    # pairs read from torchvision's wheels (Requires-Dist: torch==...)
    assert torchvision_for("2.13.0") == "0.28.0"
    assert torchvision_for("2.5.1") == "0.20.0"
    assert torchvision_for("2.0.0") == "0.15.0"


def test_the_gpu_install_pins_torchvision_to_the_pinned_torch():
    env = _environment_pins()
    for name in ("torch", "torchvision", "torch-fidelity"):
        assert name in env, f"environment.yml installs no pinned {name}"
    assert env["torchvision"] == torchvision_for(env["torch"]), (
        f"environment.yml pins torch {env['torch']} beside torchvision {env['torchvision']}; "
        f"the release built for that torch is {torchvision_for(env['torch'])}")
    proj = _pyproject_pins()
    assert {k: proj.get(k) for k in ("torch", "torchvision", "torch-fidelity")} == \
        {k: env[k] for k in ("torch", "torchvision", "torch-fidelity")}


def test_readme_install_commands_agree_with_the_pins():
    env = _environment_pins()
    text = (REPO_ROOT / "README.md").read_text()
    installs = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in block.splitlines() if re.search(r"\bpip install\b", line)]
    assert installs, "the README names no pip install command"
    for line in installs:
        named = dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][\w.]*)", line))
        for name, version in named.items():
            assert env.get(name.lower()) == version, f"README installs {name}=={version}; environment.yml: {env.get(name.lower())}"
        # a package that needs torchvision, installed without its pin, lets pip upgrade torch
        if re.search(r"torch-fidelity|torchvision", line):
            assert named.get("torchvision") == env["torchvision"], f"README installs without the torchvision pin: {line!r}"
