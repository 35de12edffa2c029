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
from dummies import DummyARM, DummyCorrector, DummyMemory  # noqa: E402

N = 6  # frames per story


class VisibleARM(DummyARM):
    """DummyARM whose tokens are drawn as multiples of 1/255 (they survive the uint8 files); `sleep` s per call."""

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.sleep = sleep

    def generate(self, texts, prev_tokens, generators):
        time.sleep(self.sleep)
        return super().generate(texts, prev_tokens, generators)

    def decode(self, tokens):
        return (tokens % 256).float().div(255).view(-1, 1, 2, 2)

    def encode(self, images):
        return (images * 255).round().long().reshape(images.shape[0], 4)


class MarkingCorrector(DummyCorrector):
    """DummyCorrector that also sets the marker pixel to 1 and draws (1, 2, 2) frames from "... sentence i"."""

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.sleep = sleep

    def correct(self, images, prompts, **kw):
        out = super().correct(images, prompts, **kw)
        out[:, 0, 1, 1] = 1.0
        return out

    def generate(self, prompts, height=None, width=None, *, guidance_scale=7.5, num_inference_steps=50,
                 generators=None):
        time.sleep(self.sleep)
        rows = []
        for p, g in zip(prompts, generators):
            i = int(p.split()[-1])
            rows.append([i / 255, int(torch.randint(0, 256, (1,), generator=g)) / 255, 0.0, 1.0])
        return torch.tensor(rows).view(-1, 1, 2, 2)


def reference(story):
    """(N, 1, 2, 2) "true" frames of a story (row arm_true_ctx)."""
    ref = torch.zeros(N, 1, 2, 2)
    ref[:, 0, 0, 0] = torch.arange(N) / 255
    ref[:, 0, 1, 1] = 1.0
    return ref


def stories(k: int) -> list[Story]:
    """k stories of N sentences, ids s0..s{k-1}."""
    return [Story(story_id=f"s{j}", sentences=[f"story {j} sentence {i}" for i in range(N)]) for j in range(k)]


def run(out, n_stories: int, sleep: float = 0.0) -> dict[str, list[str]]:
    """`run_experiment` of the default rows on `n_stories` stories into `out`, batches of 2."""
    config = E.ExperimentConfig(batch_size=2, num_inference_steps=10)
    return E.run_experiment(stories(n_stories), out, arm=VisibleARM(sleep), corrector=MarkingCorrector(sleep),
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
