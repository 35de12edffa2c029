"""The ACDC loop (acdc_lib.loop) with the tiny deterministic components of tests/unit/dummies.py."""
import pytest
import torch

from acdc_lib.loop import draw_rows, frames_to_correct, run_stories, run_video, story_generators
from acdc_lib.types import STAGES, LoopConfig, Story
from dummies import SCALE, DummyARM, DummyCorrector, DummyMemory, DummyVideoCorrector, checksum

N = 6


def story(k: int, n: int = N) -> Story:
    return Story(story_id=f"s{k}", sentences=[f"story {k} sentence {i}" for i in range(n)])


def run(policy="all", stories=None, seeds=None, memory=None, arm=None, corrector="dummy", **cfg):
    arm = arm or DummyARM()
    corrector = DummyCorrector() if corrector == "dummy" else corrector
    out = run_stories(stories or [story(0), story(1)], arm, corrector, memory,
                      LoopConfig(correct_frames=policy, **cfg), seeds=seeds)
    return out, arm, corrector


def tensors(result):
    """Every tensor of a StoryResult, in a fixed order, for exact comparisons."""
    return [t for f in result.frames for t in (f.arm_tokens, f.arm_image, f.context_tokens, f.final_image)]


# ---------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize("policy, expected", [
    ("all", {0, 1, 2, 3, 4, 5}), ("none", set()), (2, {0, 1}), (0, set()), ({0, 3, 5}, {0, 3, 5}),
    ([5, 1], {1, 5}), ((2,), {2}),
])
def test_policy_selects_frames_and_steps(policy, expected):
    assert frames_to_correct(policy, N) == expected
    out, _, corr = run(policy, num_inference_steps=10, strength=0.3)
    for s in out.stories:
        assert {f.index for f in s.frames if f.corrected} == expected
        assert [f.steps_run for f in s.frames] == [3 if i in expected else 0 for i in range(N)]
        assert all((f.corrected_image is None) == (f.index not in expected) for f in s.frames)
    assert len(corr.calls) == len(expected)
    assert all(c["num_inference_steps"] == 10 and c["strength"] == 0.3 for c in corr.calls)


def test_defaults_are_the_papers():
    corr = DummyCorrector()
    out = run_stories([story(0).sentences], DummyARM(), corr)  # config=None, seeds=None
    assert out.stories[0].story_id == "story-0" and out.stories[0].seed == 0
    assert [f.steps_run for f in out.stories[0].frames] == [25] * N  # all frames, int(50 * 0.5)
    assert {(c["guidance_scale"], c["strength"], c["num_inference_steps"]) for c in corr.calls} == {(7.5, 0.5, 50)}


# ---------------------------------------------------------------------------------------- continuation
def test_arm_continues_from_reencoded_corrected_tokens():
    out, arm, _ = run({0, 3, 5})
    for b, s in enumerate(out.stories):
        ctx = torch.stack([f.context_tokens for f in s.frames])               # (N, 4)
        raw = torch.stack([f.arm_tokens for f in s.frames])                   # (N, 4)
        for f in s.frames:
            # the context is E(corrected frame): the corrector's marker came back as a token
            assert torch.equal(f.context_tokens, arm.encode(f.final_image[None])[0])
            assert (f.context_tokens[3] > 0) == f.corrected
            # the ARM was handed exactly the earlier contexts, and its checksum says so
            assert torch.equal(arm.calls[f.index]["prev"][b], ctx[: f.index])
            assert f.arm_tokens[2] == checksum(ctx[: f.index])
            if f.index >= 1:
                assert f.arm_tokens[2] != checksum(raw[: f.index])  # not the uncorrected tokens
    assert arm.calls[0]["prev"].shape == (2, 0, 4)
    assert arm.calls[2]["texts"][1] == story(1).sentences[:3]


# ---------------------------------------------------------------------------------------- memory
def test_memory_asked_once_per_story_and_its_prompts_used():
    mem = DummyMemory()
    out, _, corr = run({1, 4}, stories=[story(0), story(1), story(2)], memory=mem)
    assert mem.calls == [story(k).sentences for k in range(3)]
    for k, s in enumerate(out.stories):
        assert s.memory.prompts == ["MEM: " + t for t in story(k).sentences]
        assert [f.prompt for f in s.frames] == [("MEM: " + f.text) if f.index in (1, 4) else None
                                                 for f in s.frames]
    assert corr.calls[1]["prompts"] == [f"MEM: story {k} sentence 4" for k in range(3)]


@pytest.mark.parametrize("policy, use_memory", [("all", False), ("none", True)])
def test_memory_not_asked(policy, use_memory):
    mem = DummyMemory()
    out, _, corr = run(policy, memory=mem, use_memory=use_memory)
    assert mem.calls == [] and all(s.memory is None for s in out.stories)
    if policy == "all":  # raw sentences go to the corrector
        assert corr.calls[2]["prompts"] == ["story 0 sentence 2", "story 1 sentence 2"]
        assert out.stories[1].frames[5].prompt == "story 1 sentence 5"


# ---------------------------------------------------------------------------------------- randomness
def test_same_seeds_same_outputs_and_seeds_matter():
    a, b, c = (run("all", seeds=s)[0].stories[0] for s in ([4, 5], [4, 5], [6, 5]))
    assert all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b)))
    assert not torch.equal(a.frames[0].arm_tokens, c.frames[0].arm_tokens)


def test_story_independent_of_its_batch():
    alone = run({0, 2}, stories=[story(0)], seeds=[7])[0].stories[0]
    batched = run({0, 2}, stories=[story(1), story(0), story(2)], seeds=[3, 7, 11])[0].stories[1]
    assert alone.story_id == batched.story_id == "s0" and batched.seed == 7
    assert all(torch.equal(x, y) for x, y in zip(tensors(alone), tensors(batched)))


def test_arm_stream_does_not_shift_with_correction():
    plain, acdc = run("none")[0], run("all")[0]
    for p, a in zip(plain.stories, acdc.stories):
        assert torch.equal(p.frames[0].arm_tokens, a.frames[0].arm_tokens)
        assert [f.arm_tokens[1] for f in p.frames] == [f.arm_tokens[1] for f in a.frames]  # same draws
        assert p.frames[3].arm_tokens[2] != a.frames[3].arm_tokens[2]  # yet the context differed
    plain, acdc = (run(pol, arm=DummyARM(context_dependent=False))[0] for pol in ("none", "all"))
    for p, a in zip(plain.stories, acdc.stories):
        assert torch.equal(torch.stack([f.arm_tokens for f in p.frames]), torch.stack([f.arm_tokens for f in a.frames]))


def test_story_generators_are_distinct_and_deterministic():
    g1, g2 = story_generators(3)
    h1, _ = story_generators(3)
    x = torch.randint(0, SCALE, (4,), generator=g1)
    assert torch.equal(x, torch.randint(0, SCALE, (4,), generator=h1))
    assert not torch.equal(x, torch.randint(0, SCALE, (4,), generator=g2))


# ---------------------------------------------------------------------------------------- video
@pytest.mark.parametrize("n_frames, L, chunks, corrected", [
    (7, 3, "first", [1, 1, 1, 0, 0, 0, 0]), (7, 3, "all", [1, 1, 1, 1, 1, 1, 0]),
    (7, 3, "none", [0] * 7), (4, 4, "first", [1] * 4), (6, 2, {1}, [0, 0, 1, 1, 0, 0]),
])
def test_video_corrects_chunks_and_continues_from_them(n_frames, L, chunks, corrected):
    arm, vc = DummyARM(), DummyVideoCorrector()
    out = run_video(["a cat", "a dog"], arm, vc, num_frames=n_frames, chunk_length=L, correct_chunks=chunks,
                    seeds=[1, 2])
    assert len(vc.calls) == sum(corrected) // L
    assert all(c["shape"] == (2, L, 1, 2, 2) and c["prompts"] == ["a cat", "a dog"] for c in vc.calls)
    assert all(t == [["a cat"], ["a dog"]] for t in (c["texts"] for c in arm.calls))
    for b, v in enumerate(out.videos):
        assert v.corrected == [bool(c) for c in corrected]
        assert v.steps_run == (25 if any(corrected) else 0)
        marked = (v.context_tokens[:, 3] > 0).tolist()
        assert marked == v.corrected
        assert torch.equal(v.final_frames[~torch.tensor(v.corrected)], v.arm_frames[~torch.tensor(v.corrected)])
        for j in range(n_frames):  # frame j sees earlier chunks as corrected, its own chunk as sampled
            start = j // L * L
            seen = torch.cat([v.context_tokens[:start], v.arm_tokens[start:j]])
            assert torch.equal(arm.calls[j]["prev"][b], seen)
            assert v.arm_tokens[j, 2] == checksum(seen)
        if corrected[:L] == [1] * L and n_frames > L:  # the frame after the first chunk: from corrected tokens
            assert v.arm_tokens[L, 2] != checksum(v.arm_tokens[:L])


def test_video_independent_of_its_batch():
    def video(prompts, seeds):
        return run_video(prompts, DummyARM(), DummyVideoCorrector(), num_frames=5, chunk_length=2,
                         correct_chunks="all", seeds=seeds).videos
    alone, batched = video(["a cat"], [9])[0], video(["a dog", "a cat"], [4, 9])[1]
    for name in ("arm_tokens", "arm_frames", "final_frames", "context_tokens"):
        assert torch.equal(getattr(alone, name), getattr(batched, name)), name
    assert not torch.equal(alone.arm_tokens, video(["a cat"], [4])[0].arm_tokens)


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("policy, match", [
    ("some", "'some'"), (-1, "k=-1"), (7, "k=7"), ({0, 6}, r"\[6\]"), ([0, -2], r"\[-2\]"),
    (1.5, "1.5"), (True, "True"), ([0, "1"], "'1'"),
])
def test_bad_policy(policy, match):
    with pytest.raises(ValueError, match=match):
        frames_to_correct(policy, N)
    with pytest.raises(ValueError, match=match):
        run(policy)


@pytest.mark.parametrize("kwargs, match", [
    ({"stories": [story(0), story(1, n=5)]}, "'s1': 5"),
    ({"corrector": None}, "corrector is None"),
    ({"strength": 0}, "got 0"),
    ({"strength": 1.5}, "got 1.5"),
    ({"strength": 0.05, "num_inference_steps": 10}, r"int\(N\*t'\)=0"),
    ({"memory": DummyMemory(drop=1)}, "returned 5 prompts"),
    ({"arm": DummyARM(out_tokens=5)}, r"\(2, 5\)"),
    ({"arm": DummyARM(decode_offset=2.0)}, r"\[0, 1\]"),
    ({"seeds": [0]}, "1 seeds for a batch of 2"),
    ({"seeds": [0, -3]}, "-3"),
])
def test_story_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run("all", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"chunk_length": 8}, "L=8"), ({"chunk_length": 0}, "got 0"), ({"video_corrector": None}, "is None"),
    ({"correct_chunks": 3}, "k=3"), ({"config": LoopConfig(strength=1.5)}, "1.5"),
])
def test_video_validation_errors(kwargs, match):
    args = {"video_corrector": DummyVideoCorrector(), "num_frames": 6, "chunk_length": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        run_video(["a cat"], DummyARM(), **args)


# ---------------------------------------------------------------------------------------- timings
def test_timings_cover_all_stages():
    out = run("all", memory=DummyMemory())[0]
    assert set(out.timings) == set(STAGES)
    assert all(out.timings[s] > 0 for s in STAGES if s != "drift")
    assert out.timings["drift"] == 0.0  # only the adaptive policy scores drift
    assert run("none")[0].timings["correction"] == 0.0
    adaptive = run("adaptive", corrector=ScoredCorrector([[0.0, 1.0]] * N), drift_threshold=0.5)[0]
    assert adaptive.timings["drift"] > 0


# ---------------------------------------------------------------------------------------- periodic and adaptive
@pytest.mark.parametrize("policy, n, expected", [
    ("every1", 6, {0, 1, 2, 3, 4, 5}), ("every2", 6, {0, 2, 4}), ("every3", 6, {0, 3}), ("every4", 6, {0, 4}),
    ("every7", 6, {0}), ("adaptive", 3, {0, 1, 2}),
])
def test_periodic_policy_and_adaptive_candidates(policy, n, expected):
    assert frames_to_correct(policy, n) == expected


@pytest.mark.parametrize("policy", ["every0", "every", "everyx", "every-1", "Every2", "every 2"])
def test_bad_periodic_policy_is_refused(policy):
    with pytest.raises(ValueError, match="every<k>"):
        frames_to_correct(policy, N)


class ScoredCorrector(DummyCorrector):
    """A DummyCorrector whose drift score of row b at the i-th call is scores[i][b]; records the rows it saw."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.scored = scores, []

    def drift_score(self, images, prompts, *, strength=0.5, num_inference_steps=50, generators=None):
        assert len(generators) == images.shape[0] == len(prompts)
        self.scored.append(images.shape[0])
        return torch.tensor(self.scores[len(self.scored) - 1], dtype=torch.float32)


def test_adaptive_corrects_exactly_the_rows_above_the_threshold():
    scores = [[0.9, 0.1, 0.5], [0.2, 0.6, 0.7], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.51, 0.49], [0.3, 0.8, 0.3]]
    corr = ScoredCorrector(scores)
    out, _, _ = run("adaptive", stories=[story(0), story(1), story(2)], seeds=[3, 4, 5], corrector=corr,
                    drift_threshold=0.5, num_inference_steps=10, strength=0.3)
    for b, s in enumerate(out.stories):
        want = [scores[i][b] > 0.5 for i in range(N)]
        assert [f.corrected for f in s.frames] == want
        assert [f.drift_score for f in s.frames] == pytest.approx([scores[i][b] for i in range(N)])
        assert [f.steps_run for f in s.frames] == [3 if w else 0 for w in want]
        for f in s.frames:  # an uncorrected frame continues from its own tokens
            if not f.corrected:
                assert torch.equal(f.context_tokens, f.arm_tokens) and f.corrected_image is None
    # the corrector saw only the rows above the threshold (frame 2 none, so no call)
    assert [c["shape"][0] for c in corr.calls] == [sum(v > 0.5 for v in row) for row in scores if any(v > 0.5 for v in row)]


def test_adaptive_row_gets_its_own_correction_stream():
    """A row corrected alone draws what it draws when the whole batch is corrected (per-row generators)."""
    everyone = run("all", stories=[story(0), story(1)], seeds=[7, 8])[0]
    only_second = run("adaptive", stories=[story(0), story(1)], seeds=[7, 8],
                      corrector=ScoredCorrector([[0.0, 1.0]] + [[1.0, 1.0]] * (N - 1)), drift_threshold=0.5)[0]
    assert not only_second.stories[0].frames[0].corrected
    assert torch.equal(only_second.stories[1].frames[0].corrected_image, everyone.stories[1].frames[0].corrected_image)


def test_adaptive_leaves_the_arm_stream_alone():
    none = run("none", seeds=[1, 2])[0]
    adaptive = run("adaptive", seeds=[1, 2], corrector=ScoredCorrector([[0.0, 0.0]] * N), drift_threshold=0.5)[0]
    for a, b in zip(none.stories, adaptive.stories):  # nothing corrected: the same story, frame for frame
        assert all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b)))
        assert all(f.drift_score == 0.0 for f in b.frames)


@pytest.mark.parametrize("kwargs, match", [
    ({"drift_threshold": None}, "needs drift_threshold"), ({"drift_threshold": float("nan")}, "needs drift_threshold"),
    ({"drift_threshold": True}, "needs drift_threshold"), ({"corrector": "dummy", "drift_threshold": 0.5}, "drift_score"),
])
def test_adaptive_refuses_what_it_cannot_run(kwargs, match):
    kwargs = {"corrector": ScoredCorrector([[0.0, 0.0]] * N)} | kwargs
    with pytest.raises(ValueError, match=match):
        run("adaptive", **kwargs)


@pytest.mark.parametrize("scores, match", [([[0.0]] * N, r"shape \(2,\)"), ([[0.0, float("nan")]] * N, "non-finite")])
def test_adaptive_refuses_bad_scores(scores, match):
    with pytest.raises(ValueError, match=match):
        run("adaptive", corrector=ScoredCorrector(scores), drift_threshold=0.5)


def test_video_refuses_adaptive_chunks():
    with pytest.raises(ValueError, match="unknown correction policy 'adaptive'"):
        run_video(["a cat"], DummyARM(), DummyVideoCorrector(), num_frames=6, chunk_length=3, correct_chunks="adaptive")


def test_draw_rows_matches_the_distribution_and_skips_zero_probabilities():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]])
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    draws = draw_rows(probs.expand(len(u), -1), u)
    freq = torch.bincount(draws, minlength=6).double() / len(u)
    assert freq[[0, 2, 5]].sum() == 0  # codes cut by top-k are never drawn
    assert torch.allclose(freq, probs[0].double(), atol=0.015)
    # the edges: u = 0 draws the first code of positive probability, u just below 1 the last one
    edge = draw_rows(probs.expand(2, -1), torch.tensor([0.0, 1 - 2 ** -24]))
    assert edge.tolist() == [1, 4]
    # rows draw from their own distributions
    rows = draw_rows(torch.eye(3), torch.tensor([0.9, 0.1, 0.5]))
    assert rows.tolist() == [0, 1, 2]
