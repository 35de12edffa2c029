"""The story experiment (acdc_lib.experiment) with the dummies and a fake evaluator that reads marker pixels.

Frames are (1, 2, 2): pixel (0, 0) holds the frame index i / 255, (0, 1) a random draw, (1, 0) the
context checksum and (1, 1) a correction marker (1 where the corrector ran, or the DM drew the
frame). All are multiples of 1/255, so the uint8 files keep them exactly. The fake evaluator reads
species = marker, place = i mod 2, and counts that are normal only for marked frames before frame 4;
ground truth is species 1, place 0. Every number of the table is then known by hand.
"""
import json
import math

import numpy as np
import pytest
import torch

from acdc_lib import experiment as E
from acdc_lib import metrics as M
from acdc_lib.types import Story
from dummies import DummyARM, DummyCorrector, DummyMemory, checksum
from tiny_diffusers import tiny_clip_model, tiny_tokenizer


def load_test_stories():
    from acdc_lib.stories import read_stories
    from acdc_lib.io import DATA_DIR

    return read_stories(DATA_DIR / "stories" / "test.jsonl")

N = 6


class VisibleARM(DummyARM):
    """DummyARM whose tokens are drawn as multiples of 1/255 (they survive the uint8 files)."""

    def decode(self, tokens):
        return (tokens % 256).float().div(255).view(-1, 1, 2, 2)

    def encode(self, images):
        return (images * 255).round().long().reshape(images.shape[0], 4)


class MarkingCorrector(DummyCorrector):
    """DummyCorrector that also sets the marker pixel to 1 (white) and can draw frames from text."""

    def correct(self, images, prompts, **kw):
        out = super().correct(images, prompts, **kw)
        out[:, 0, 1, 1] = 1.0
        return out

    def generate(self, prompts, height=None, width=None, *, guidance_scale=7.5, num_inference_steps=50,
                 generators=None):
        rows = []
        for p, g in zip(prompts, generators):
            i = int(p.split()[-1])                                                # "story k sentence i"
            rows.append([i / 255, int(torch.randint(0, 256, (1,), generator=g)) / 255, 0.0, 1.0])
        return torch.tensor(rows).view(-1, 1, 2, 2)


def stories(k: int) -> list[Story]:
    return [Story(story_id=f"s{j}", sentences=[f"story {j} sentence {i}" for i in range(N)]) for j in range(k)]


def _marks(x):
    return (x[:, 0, 0, 0] * 255).round().long(), x[:, 0, 1, 1] > 0.5


def reference(story):
    ref = torch.zeros(N, 1, 2, 2)
    ref[:, 0, 0, 0] = torch.arange(N) / 255
    ref[:, 0, 1, 1] = 1.0
    ref[:, 0, 0, 1] = torch.tensor([10, 200, 30, 120, 90, 60]) / 255
    return ref


class FakeEvaluator:
    """Evaluator protocol over 2x2 frames: char = the marker pixel, bg = frame index mod 2, valid = marked and i < 4."""

    name = "fake"
    attributes = {"char": 2, "bg": 2}

    def __init__(self):
        clip = tiny_clip_model(image_size=4, patch_size=2, num_channels=1)
        self._clip = M.clipscore_from_clip_model(clip, tiny_tokenizer(), mean=(0.5,), std=(0.5,))
        self.fid_features = M.FeatureModule(lambda x: x.flatten(1), 4)

    def embed_images(self, x):
        return torch.stack([torch.ones(len(x)), (x[:, 0, 0, 0] * 255).round()], 1)   # (1, i)

    def clip_model_fn(self):
        return self._clip()

    def predict_attributes(self, x):
        idx, marked = _marks(x)
        return {"char": marked.long(), "bg": idx % 2}

    def physically_valid(self, x):
        idx, marked = _marks(x)
        return marked & (idx < 4)


class FakeTruth:
    label = "Ground truth"

    def reference_images(self, story):
        return reference(story)

    def true_attributes(self, story):
        return {"char": torch.ones(N, dtype=torch.long), "bg": torch.zeros(N, dtype=torch.long)}


@pytest.fixture(scope="module")
def evaluator():
    return FakeEvaluator()


@pytest.fixture(scope="module")
def truth():
    return FakeTruth()


def run(out, sts, **cfg):
    config = E.ExperimentConfig(batch_size=2, num_inference_steps=10, n_bootstrap=200, n_bootstrap_set=20, **cfg)
    return E.run_experiment(sts, out, arm=VisibleARM(), corrector=MarkingCorrector(), memory=DummyMemory(),
                            reference=reference, config=config, progress=False), config


def test_rows_run_and_write_one_record_per_story(tmp_path):
    computed, _ = run(tmp_path, stories(3))
    assert computed == {r: ["s0", "s1", "s2"] for r in E.DEFAULT_ROWS}
    rec = {r: json.loads((tmp_path / r / "s1.json").read_text()) for r in E.DEFAULT_ROWS}
    assert rec["acdc_rules"]["prompts"] == ["MEM: " + s for s in stories(3)[1].sentences]
    assert rec["acdc_nomem"]["prompts"] == stories(3)[1].sentences and rec["arm"]["prompts"] == [None] * N
    assert rec["dm_only"]["seed"] == rec["arm"]["seed"] == E.story_seed(0, 1)
    frames = {r: E.load_frames(tmp_path, r, stories(3)) for r in E.DEFAULT_ROWS}
    assert frames["arm"].shape == (3, N, 1, 2, 2)
    assert (frames["arm"][:, :, 0, 1, 1] == 0).all() and (frames["acdc_nomem"][:, :, 0, 1, 1] == 1).all()
    # Paired randomness: the ARM's first draw is the same whether correction runs or not.
    assert torch.equal(frames["arm"][:, 0, 0, 0, 1], frames["acdc_rules"][:, 0, 0, 0, 1])
    # Correction feeds back: the context checksum of frame 1 differs between ARM and ACDC.
    assert not torch.equal(frames["arm"][:, 1, 0, 1, 0], frames["acdc_rules"][:, 1, 0, 1, 0])


def test_the_true_context_row_continues_from_the_true_frames_with_the_arm_rows_draws(tmp_path, evaluator, truth):
    sts = stories(3)
    _, config = run(tmp_path, sts)
    arm, oracle = (E.load_frames(tmp_path, r, sts) for r in ("arm", "arm_true_ctx"))
    assert torch.equal(arm[:, 0], oracle[:, 0])                          # frame 1: same (empty) context, same draw
    assert torch.equal(arm[:, :, 0, 0, 1], oracle[:, :, 0, 0, 1])        # every frame: the same draws
    true_codes = VisibleARM().encode(reference(sts[0]))                  # (N, 4) codes of the true frames
    for i in range(1, N):                                                # context checksum: the true frames'
        want = (checksum(true_codes[:i]) % 256) / 255
        assert oracle[:, i, 0, 1, 0].tolist() == pytest.approx([want] * 3, abs=1e-6)
        assert not torch.equal(arm[:, i, 0, 1, 0], oracle[:, i, 0, 1, 0])
    with pytest.raises(ValueError, match=r"row 'arm_true_ctx' needs \['reference'\]"):
        E.run_experiment(sts, tmp_path / "x", arm=VisibleARM(), config=E.ExperimentConfig(rows=("arm_true_ctx",)),
                         progress=False)
    # Per-frame paired gaps: place = i mod 2 in every row, so no gap; species = marker, 1 only where corrected.
    table = E.summarise(tmp_path, sts, evaluator, config, ground_truth=truth)
    assert table.per_frame["arm"]["bg_acc"] == [[1.0, 0.0] * 3] * 3
    g = E.frame_gaps(table, "arm", "arm_true_ctx", "bg_acc")
    assert [v.value for v in g["per_frame"]] == [0.0] * N and g["later"] == M.Interval(0.0, 0.0, 0.0)
    g = E.frame_gaps(table, "arm", "acdc_rules", "char_acc")
    assert [v.value for v in g["per_frame"]] == [1.0] * N and g["later"].value == 1.0
    md, recs = E.frame_gaps_markdown(table, curves=("char_acc", "bg_acc"))
    assert len(recs) == 3 * 2 and md.count("\n") == 2 + 6
    assert [r["later_excludes_0"] for r in recs if r["curve"] == "char_acc"] == [False, True, True]
    claims = E.accumulation_claims(recs, N)
    assert claims[0].startswith("char_acc: the ARM alone inherits +0.000") and "nothing inherited" in claims[0]
    assert "ACDC (rule memory) is above the oracle (+1.000" in claims[0]
    assert "level with the oracle" in claims[1]
    assert E.accumulation_claims([r for r in recs if r["new"] != "arm_true_ctx"], N) == []
    with pytest.raises(ValueError, match="per-frame 'clip_score'"):
        E.frame_gaps(table, "arm", "acdc_rules", "clip_score")


def test_an_interrupted_run_resumes_and_gives_the_uninterrupted_table(tmp_path, evaluator, truth):
    sts = stories(4)
    run(tmp_path / "a", sts[:2])                                                  # "killed" after two stories
    computed, config = run(tmp_path / "a", sts)
    assert computed == {r: ["s2", "s3"] for r in E.DEFAULT_ROWS}                          # only the missing ones
    run(tmp_path / "b", sts)
    for r in E.DEFAULT_ROWS:
        assert torch.equal(E.load_frames(tmp_path / "a", r, sts), E.load_frames(tmp_path / "b", r, sts))
    ta = E.summarise(tmp_path / "a", sts, evaluator, config, ground_truth=truth).to_dict()
    tb = E.summarise(tmp_path / "b", sts, evaluator, config, ground_truth=truth).to_dict()
    assert ta == tb
    assert run(tmp_path / "a", sts)[0] == {r: [] for r in E.DEFAULT_ROWS}


def test_a_resumed_run_computes_whole_batches_as_the_uninterrupted_run_did(tmp_path):
    class RecordingARM(VisibleARM):
        batches: list = []

        def generate(self, texts, prev_tokens, generators):
            if prev_tokens.shape[1] == 0:                                          # once per batch and row
                RecordingARM.batches.append([t[0] for t in texts])
            return super().generate(texts, prev_tokens, generators)

    sts, config = stories(5), E.ExperimentConfig(rows=("arm",), batch_size=2)
    E.run_experiment(sts, tmp_path, arm=RecordingARM(), config=config, progress=False)
    whole = RecordingARM.batches[:]
    assert [len(b) for b in whole] == [2, 2, 1]
    for ext in ("json", "npz"):                                                   # a kill after s0, s1, s3
        (tmp_path / "arm" / f"s2.{ext}").unlink()
        (tmp_path / "arm" / f"s4.{ext}").unlink()
    before = (tmp_path / "arm" / "s3.npz").stat().st_mtime_ns
    RecordingARM.batches = []
    computed = E.run_experiment(sts, tmp_path, arm=RecordingARM(), config=config, progress=False)
    assert computed == {"arm": ["s2", "s4"]}
    assert RecordingARM.batches == [whole[1], whole[2]]                           # s2 beside s3, as before
    assert (tmp_path / "arm" / "s3.npz").stat().st_mtime_ns == before             # s3 recomputed, not rewritten


def test_a_run_refuses_files_of_other_settings_or_stories(tmp_path, evaluator):
    _, config = run(tmp_path, stories(2))
    with pytest.raises(ValueError, match="lacks 1 of 3 stories"):
        E.summarise(tmp_path, stories(3), evaluator, config)
    with pytest.raises(ValueError, match="strength"):
        run(tmp_path, stories(2), strength=0.3)
    with pytest.raises(ValueError, match="same order"):
        run(tmp_path, stories(2)[::-1])
    with pytest.raises(ValueError, match="unknown rows"):
        E.ExperimentConfig(rows=("arm", "sd"))
    with pytest.raises(ValueError, match=r"row 'acdc_rules' needs \['memory'\]"):
        E.run_experiment(stories(2), tmp_path / "y", arm=VisibleARM(), corrector=MarkingCorrector(), progress=False)
    with pytest.raises(ValueError, match="one length"):
        E.run_experiment(stories(2) + [Story("short", ["a"])], tmp_path / "z", arm=VisibleARM(),
                         config=E.ExperimentConfig(rows=("arm",)), progress=False)
    with pytest.raises(ValueError, match=r"row 'dm_only' needs \['text_to_image'\]"):
        E.run_experiment(stories(2), tmp_path / "x", corrector=DummyCorrector(),
                         config=E.ExperimentConfig(rows=("dm_only",)), progress=False)


def test_table_numbers_equal_hand_computed_values(tmp_path, evaluator, truth):
    sts = stories(3)
    _, config = run(tmp_path, sts)
    table = E.summarise(tmp_path, sts, evaluator, config, ground_truth=truth)
    rows = table.rows
    assert list(rows) == ["reference", *E.DEFAULT_ROWS]
    # species = marker: never drawn by the ARM alone, always where the DM drew or corrected.
    for r, acc in {"arm": 0.0, "acdc_rules": 1.0, "acdc_nomem": 1.0, "dm_only": 1.0, "reference": 1.0}.items():
        assert rows[r]["char_acc"].value == acc
    assert rows["arm"]["char_f1"].value == 0.0 and rows["acdc_rules"]["char_f1"].value == 1.0
    # place = i mod 2 against truth 0: frames 0, 2, 4 right; macro-F1 = (2*3/(2*3+3) + 0) / 2.
    for r in rows:
        assert rows[r]["bg_acc"].value == pytest.approx(0.5)
        assert rows[r]["bg_f1"].value == pytest.approx((6 / 9 + 0) / 2)
    assert [c.value for c in table.curves["arm"]["bg_acc"]] == [1, 0, 1, 0, 1, 0]
    # valid = marked and i < 4.
    assert rows["arm"]["physical_validity"].value == 0.0
    assert rows["acdc_rules"]["physical_validity"].value == pytest.approx(4 / 6)
    assert [c.value for c in table.curves["acdc_nomem"]["physical_validity"]] == [1, 1, 1, 1, 0, 0]
    # embeddings (1, i): consistency is the mean over i of cos((1, i), (1, i + 1)); every story the same.
    pairs = [(1 + i * (i + 1)) / math.sqrt((1 + i * i) * (1 + (i + 1) ** 2)) for i in range(N - 1)]
    assert rows["arm"]["frame_consistency"].value == pytest.approx(np.mean(pairs))
    assert rows["arm"]["frame_consistency"].low == rows["arm"]["frame_consistency"].high
    assert [c.value for c in table.curves["arm"]["consistency"]] == pytest.approx(pairs)
    # FID and CLIPScore: the library functions on the saved frames.
    ref = torch.stack([truth.reference_images(s) for s in sts])
    arm = E.load_frames(tmp_path, "arm", sts)
    assert rows["reference"]["fid"].value == pytest.approx(0.0, abs=1e-6)
    assert rows["arm"]["fid"].value == pytest.approx(
        M.fid(ref.flatten(0, 1), arm.flatten(0, 1), evaluator.fid_features), rel=1e-6)
    assert rows["arm"]["clip_score"].value == pytest.approx(
        M.clip_score(arm, [s.sentences for s in sts], evaluator.clip_model_fn).mean().item())
    # Paired per-story changes, and the comparison with the paper on every pair of rows.
    assert E.paired_difference(table, "arm", "acdc_rules", "char_acc") == M.Interval(1.0, 1.0, 1.0)
    assert E.paired_difference(table, "arm", "acdc_nomem", "physical_validity").value == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="per-story"):
        E.paired_difference(table, "arm", "acdc_rules", "fid")
    comp = E.compare_with_paper(table)
    assert len(comp) == (2 + 1 + 2) * 3                                            # paper sources x metrics
    fc = [r for r in comp if r["metric"] == "frame_consistency"]
    assert all(r["ours_rel_change_pct"] == 0 and r["ours_diff_ci"]["value"] == 0 for r in fc)
    assert not any(r["ours_ci_excludes_0"] for r in fc)
    assert not any("ours_ci_excludes_0" in r for r in comp if r["metric"] == "fid")
    assert E.comparison_markdown(comp).count("n/a (set-level)") == 5
    md = table.to_markdown()
    assert md.count("\n") == 2 + len(rows) + 2 and "ARM + ACDC, rule memory" in md
    assert table.skipped == {"subject_consistency": "the fake evaluator embeds no subjects",
                             "identity_acc": "the fake evaluator reads no frame-carried identity or position"}
    assert "Not measured: subject_consistency" in md
    table.write(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["rows"]["arm"]["char_acc"]["value"] == 0.0


def test_paper_tables_reproduce_the_printed_improvements():
    t = E.PAPER_TABLE1
    rel = lambda a, b, c: (t[b][c] - t[a][c]) / t[a][c] * 100
    assert rel("Show-o", "Show-o + ACDC (ours)", "Frame consistency") == pytest.approx(10.4, abs=0.05)
    assert rel("Show-o", "Show-o + ACDC (ours)", "CLIP-sim") == pytest.approx(7.16, abs=0.005)
    assert rel("UIO-2 XXL", "UIO-2 XXL + ACDC (ours)", "Frame consistency") == pytest.approx(1.46, abs=0.005)
    assert rel("UIO-2 XXL", "UIO-2 XXL + ACDC (ours)", "CLIP-sim") == pytest.approx(5.53, abs=0.005)
    # FID's printed 7.34% and 16.1% divide by the ACDC value.
    assert (60.50 - 56.36) / 56.36 * 100 == pytest.approx(7.34, abs=0.01)
    assert (t["UIO-2 XXL"]["FID"] - t["UIO-2 XXL + ACDC (ours)"]["FID"]) / 57.80 * 100 == pytest.approx(16.1, abs=0.05)


def test_compare_with_paper_gives_direction_and_relative_size():
    iv = lambda v: M.Interval(v, v, v)
    rows = {"arm": {"frame_consistency": iv(0.5), "clip_score": iv(20.0), "fid": iv(10.0)},
            "acdc_rules": {"frame_consistency": iv(0.6), "clip_score": iv(19.0), "fid": iv(8.0)}}
    table = E.ResultsTable(rows, {}, {}, 2, N)
    out = E.compare_with_paper(table)
    assert {r["comparison"] for r in out} == {"ACDC vs ARM"}                       # other rows are missing
    assert len(out) == 3 * 2                                                       # 3 metrics x 2 paper ARMs
    by = {(r["metric"], r["paper_source"].split(":")[1].split("->")[0].strip()): r for r in out}
    fc = by[("frame_consistency", "Show-o")]
    assert fc["ours_rel_change_pct"] == pytest.approx(20.0) and fc["ours_direction"] == "+" and fc["ours_better"]
    assert fc["paper_rel_change_pct"] == pytest.approx((0.9062 - 0.8211) / 0.8211 * 100) and fc["same_direction"]
    cs = by[("clip_score", "UIO-2 XXL")]
    assert cs["ours_direction"] == "-" and not cs["ours_better"] and not cs["same_direction"]
    fid = by[("fid", "Show-o")]
    assert fid["ours_rel_change_pct"] == pytest.approx(-20.0) and fid["ours_better"] and fid["paper_better"]
    assert E.comparison_markdown(out).count("| no |") == 2


def test_stories_without_ground_truth_get_the_metrics_that_need_none(tmp_path, evaluator):
    sts = stories(2)
    _, config = run(tmp_path, sts, rows=("arm", "acdc_nomem"))
    table = E.summarise(tmp_path, sts, evaluator, config)
    assert list(table.rows) == ["arm", "acdc_nomem"]                              # no reference row
    assert set(table.rows["arm"]) == {"frame_consistency", "clip_score", "physical_validity"}
    assert {"fid", "char_acc", "bg_f1", "reference"} <= set(table.skipped)
    assert "no ground truth" in table.skipped["fid"] and "Not measured: " in table.to_markdown()
    with pytest.raises(ValueError, match="Evaluator"):
        E.summarise(tmp_path, sts, object(), config)
    with pytest.raises(ValueError, match="GroundTruth"):
        E.summarise(tmp_path, sts, evaluator, config, ground_truth=object())


def test_subject_features_add_subject_consistency(tmp_path):
    class WithSubject(FakeEvaluator):
        def embed_subject(self, x):
            return torch.stack([torch.ones(len(x)), x[:, 0, 1, 1]], 1)          # (1, marker)

    sts = stories(2)
    _, config = run(tmp_path, sts, rows=("arm", "acdc_nomem"))
    table = E.summarise(tmp_path, sts, WithSubject(), config, ground_truth=FakeTruth())
    assert "subject_consistency" not in table.skipped
    assert table.rows["acdc_nomem"]["subject_consistency"].value == pytest.approx(1.0)  # always marked
    assert list(table.rows["arm"])[:3] == ["frame_consistency", "subject_consistency", "clip_score"]


def test_toy_evaluator_scores_like_the_toy_evaluator():
    from acdc_lib.toyworld.evaluation import ToyGroundTruth, ToyStoryEvaluator
    from acdc_lib.toyworld.models import AttributeProbe, ToyEvaluator, build_eval_clip
    from acdc_lib.toyworld.text import build_tokenizer, split_words
    from acdc_lib.types import Evaluator, GroundTruth

    sts = load_test_stories()[:2]
    words = sorted({w for s in sts for t in s.sentences for w in split_words(t)})
    tok = build_tokenizer(words)
    torch.manual_seed(0)
    toy = ToyEvaluator(build_eval_clip(len(tok), hidden=16, layers=1, projection_dim=8), tok,
                       AttributeProbe(channels=(4, 8, 8), hidden=16))
    ev, gt = ToyStoryEvaluator(toy), ToyGroundTruth()
    assert isinstance(ev, Evaluator) and isinstance(gt, GroundTruth)
    ref = torch.stack([gt.reference_images(s) for s in sts])                     # (2, 6, 3, 32, 32)
    assert ref.shape == (2, N, 3, 32, 32)
    assert gt.true_attributes(sts[0])["char"].shape == (N,) and set(ev.attributes) == {"char", "bg", "time", "action"}
    # CLIPScore through torchmetrics = 100 x the toy evaluator's own cosine, averaged per story.
    got = M.clip_score(ref, [s.sentences for s in sts], ev.clip_model_fn)
    want = [max(100 * toy.clip_similarity(ref[k], sts[k].sentences).mean().item(), 0.0) for k in range(2)]
    assert got.tolist() == pytest.approx(want, abs=1e-3) and max(want) > 0
    assert ev.fid_features(ref[0]).shape == (N, 8) and ev.fid_features.num_features == 8
    heads = toy.predict(ref[0])
    assert torch.equal(ev.predict_attributes(ref[0])["char"], heads["species"])
    valid = (heads["n_suns"] + heads["n_moons"] == 1) & (heads["n_ears"] == 2) & (heads["n_tails"] == 1)
    assert torch.equal(ev.physically_valid(ref[0]), valid)
    with pytest.raises(ValueError, match="no ground-truth states"):
        gt.reference_images(Story("free", ["A fox runs."]))


def test_plot_curves_draws_every_row_per_curve():
    import matplotlib
    matplotlib.use("Agg")
    iv = lambda v: M.Interval(v, v - 0.1, v + 0.1)
    curves = {r: {"char_acc": [iv(1 - 0.1 * i) for i in range(N)], "consistency": [iv(0.9)] * (N - 1)}
              for r in ("arm", "acdc_rules")}
    fig = E.plot_curves(E.ResultsTable({}, curves, {"arm": "ARM alone"}, 2, N), curves=("char_acc", "consistency"))
    a, b = fig.axes
    assert [len(ax.lines) for ax in (a, b)] == [2, 2]
    assert list(a.lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6] and list(b.lines[0].get_xdata()) == [2, 3, 4, 5, 6]
    assert a.get_legend_handles_labels()[1] == ["ARM alone", "acdc_rules"]
    with pytest.raises(ValueError, match="not in the table"):
        E.plot_curves(E.ResultsTable({}, curves, {}, 2, N), curves=("bg_acc",))


def test_paired_frame_gaps_refuses_arrays_that_do_not_pair():
    with pytest.raises(ValueError, match="one shape"):
        E.paired_frame_gaps(np.zeros((3, 6)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="frames >= 2"):
        E.paired_frame_gaps(np.zeros((3, 1)), np.zeros((3, 1)))


def test_frame_carried_scores_skip_undefined_frames_and_pair_by_story(tmp_path):
    class WithCarried(FakeEvaluator):
        def carried_scores(self, frames, story):
            # identity: the marker pixel agrees with frame 1's; position: defined for story s0's frames 2-3 only
            idx, marked = _marks(frames)
            ident = (marked == marked[0]).double()
            ident[0] = float("nan")
            pos = torch.full((len(frames),), float("nan"), dtype=torch.float64)
            if story.story_id == "s0":
                pos[1:3] = torch.tensor([1.0, 3.0])
            return {"identity_acc": ident, "position_err_px": pos}

    sts = stories(3)
    _, config = run(tmp_path, sts, rows=("arm", "acdc_nomem"))
    table = E.summarise(tmp_path, sts, WithCarried(), config, ground_truth=FakeTruth())
    assert "identity_acc" not in table.skipped
    assert table.rows["acdc_nomem"]["identity_acc"].value == pytest.approx(1.0)       # always marked
    assert table.rows["arm"]["position_err_px"].value == pytest.approx(2.0)            # one story defines it
    assert table.per_story["arm"]["position_err_px"][1] != table.per_story["arm"]["position_err_px"][1]  # NaN
    curve = table.curves["arm"]["identity_acc"]
    assert len(curve) == N and curve[0].value == 1.0                                    # frame 1: by definition
    assert table.curves["arm"]["position_err_px"][0].value == 0.0
    assert all(np.isnan(p.value) for p in table.curves["arm"]["position_err_px"][3:])  # no story defines them
    d = E.paired_difference(table, "arm", "acdc_nomem", "identity_acc", n_resamples=100)
    assert np.isfinite(d.value)
    one = E.paired_difference(table, "arm", "acdc_nomem", "position_err_px", n_resamples=100)
    assert one.value == 0.0 and np.isnan(one.low)                                       # one story: no interval
    plain = E.summarise(tmp_path, sts, FakeEvaluator(), config, ground_truth=FakeTruth())
    assert "identity_acc" in plain.skipped and "identity_acc" not in plain.rows["arm"]
