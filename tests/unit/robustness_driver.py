"""Run the story experiment's five default rows on dummy models into a folder, optionally slowly enough
to be killed at any moment (used by test_run_folder_robustness; the dummies stand in for the models).

    python robustness_driver.py OUT_DIR N_STORIES MODEL_SLEEP_S WRITE_SLEEP_S

It sleeps MODEL_SLEEP_S in every model call and WRITE_SLEEP_S before every file rename (so a kill
often lands between a temporary file and its rename, or between a story's .npz and its .json), and
prints "ready" once the imports are done, so the caller times its kills from the start of the run.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from acdc_lib import experiment as E  # noqa: E402
from acdc_lib.types import Story  # noqa: E402
from dummies import DummyMemory  # noqa: E402
from test_experiment import N, MarkingCorrector, VisibleARM, reference  # noqa: E402  (the marker-pixel world)


class SlowARM(VisibleARM):
    """VisibleARM that sleeps `sleep` s in every call, so a kill can land anywhere in a run."""

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.sleep = sleep

    def generate(self, texts, prev_tokens, generators):
        time.sleep(self.sleep)
        return super().generate(texts, prev_tokens, generators)


class SlowCorrector(MarkingCorrector):
    """MarkingCorrector that sleeps `sleep` s in every call."""

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.sleep = sleep

    def correct(self, images, prompts, **kw):
        time.sleep(self.sleep)
        return super().correct(images, prompts, **kw)

    def generate(self, prompts, *args, **kw):
        time.sleep(self.sleep)
        return super().generate(prompts, *args, **kw)


def stories(k: int) -> list[Story]:
    """k stories of N sentences, ids s0..s{k-1}."""
    return [Story(story_id=f"s{j}", sentences=[f"story {j} sentence {i}" for i in range(N)]) for j in range(k)]


def run(out, n_stories: int, sleep: float = 0.0) -> dict[str, list[str]]:
    """`run_experiment` of the default rows on `n_stories` stories into `out`, batches of 2."""
    config = E.ExperimentConfig(batch_size=2, num_inference_steps=10)
    return E.run_experiment(stories(n_stories), out, arm=SlowARM(sleep), corrector=SlowCorrector(sleep),
                            memory=DummyMemory(), reference=reference, config=config, progress=False)


if __name__ == "__main__":
    out, n, model_sleep, write_sleep = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    torch.set_num_threads(1)
    if write_sleep > 0:
        replace = os.replace

        def slow_replace(src, dst):
            time.sleep(write_sleep)
            replace(src, dst)

        os.replace = slow_replace
    print("ready", flush=True)
    run(out, n, model_sleep)
    print("finished", flush=True)
