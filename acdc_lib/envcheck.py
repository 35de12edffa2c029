"""Facts about the running environment: versions for notebook setup cells, and the CPU-only check.

    python -m acdc_lib.envcheck --cpu-only   # exit 1 if any nvidia-* distribution is installed
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import sys

KEY_PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics", "accelerate", "scipy", "numpy")


def cuda_distributions() -> list[str]:
    """Installed distributions that carry CUDA libraries (nvidia-*, triton pulled in for CUDA)."""
    names = sorted({(d.metadata["Name"] or "").lower() for d in md.distributions()})
    return [n for n in names if n.startswith("nvidia-") or n.startswith("nvidia_")]


def versions(packages: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    return out


def describe(seed: int | None = None, device: str | None = None) -> str:
    """One line for a notebook's setup cell: versions, seed, device and threads."""
    import torch

    v = versions()
    parts = [f"{k} {val}" for k, val in v.items()]
    parts.append(f"seed {seed}" if seed is not None else "seed -")
    parts.append(f"device {device or 'cpu'}")
    parts.append(f"threads {torch.get_num_threads()}")
    parts.append(cpu_kernels())
    return " | ".join(parts)


def cpu_kernels() -> str:
    """The CPU kernels' instruction set, and whether it is pinned.

    Kernels are chosen by instruction set (AVX2, AVX512 ...) and round differently, so the same seed gives
    the same bytes only with the same kernels: `make reproduce` pins them to AVX2 (ATEN_CPU_CAPABILITY,
    with oneDNN's and MKL's). Unpinned, the line says the figures may differ in the last digits.
    """
    import os

    import torch

    isa = torch.backends.cpu.get_cpu_capability()
    pinned = os.environ.get("ATEN_CPU_CAPABILITY")
    if pinned:
        return f"cpu kernels {isa} (pinned: ATEN_CPU_CAPABILITY={pinned})"
    return (f"cpu kernels {isa} (not pinned: figures may differ from the committed ones in the last digits; "
            "make reproduce pins avx2)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-only", action="store_true", help="fail if CUDA packages are installed")
    args = ap.parse_args(argv)
    print(describe())
    if args.cpu_only:
        bad = cuda_distributions()
        if bad:
            print(f"CUDA packages found on a CPU setup: {', '.join(bad)}", file=sys.stderr)
            return 1
        import torch

        if torch.version.cuda is not None:
            print(f"torch {torch.__version__} is a CUDA build on a CPU setup", file=sys.stderr)
            return 1
        print(f"cpu-only: ok (torch {torch.__version__}, cuda build: {torch.version.cuda is not None})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
