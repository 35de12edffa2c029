"""Run the experiment's ARM and ACDC rows on a few dummy stories into a folder, sharded when launched
with `accelerate launch` (used by test_sharding; dummies stand in for the models)."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from acdc_lib import experiment as E  # noqa: E402
from acdc_lib.types import Story  # noqa: E402
from dummies import DummyCorrector, DummyARM, DummyMemory  # noqa: E402

if __name__ == "__main__":
    out, n_stories, distributed = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    stories = [Story(f"s{j}", [f"story {j} sentence {i}" for i in range(4)]) for j in range(n_stories)]
    config = E.ExperimentConfig(rows=("arm", "acdc_rules"), batch_size=2, num_inference_steps=10)
    done = E.run_experiment(stories, out, arm=DummyARM(), corrector=DummyCorrector(), memory=DummyMemory(),
                            config=config, progress=False, distributed=distributed)
    share = out.parent / f"{out.name}-share-{os.environ.get('RANK', '0')}.txt"  # beside the run, not in it
    share.write_text(" ".join(sorted(done["arm"])))
