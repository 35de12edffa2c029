"""Code, data and notebooks say the rule itself, never "issue N", which a reader of a clone cannot look up."""
import re

from acdc_lib.io import REPO_ROOT

POINTER = re.compile(r"\b" + "issue" + r"s?\s*#?\d+", re.IGNORECASE)
SUFFIXES = {".py", ".jsonl", ".ipynb", ".yaml", ".md", ".txt", ".json"}


def test_no_file_names_an_issue_number():
    found = []
    for folder in ("acdc_lib", "data", "tests", "notebooks"):
        for p in sorted((REPO_ROOT / folder).rglob("*")):
            if p.suffix not in SUFFIXES or "checkpoints" in p.parts or not p.is_file() or p.stat().st_size > 5_000_000:
                continue
            for no, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
                if POINTER.search(line):
                    found.append(f"{p.relative_to(REPO_ROOT)}:{no}: {POINTER.search(line).group(0)}")
    assert found == []
