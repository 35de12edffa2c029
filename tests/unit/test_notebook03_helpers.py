"""Notebook 03's helpers in acdc_lib.experiment: paired changes, verdicts, frame trends, the t' sweep, figures.

Uses the marker-pixel world of test_experiment (VisibleARM, MarkingCorrector, the fake evaluator),
where species = marker pixel: the ARM alone never has it, every corrected frame does.
"""
import json

import numpy as np
import pytest
import torch

from acdc_lib import experiment as E
from acdc_lib import metrics as M
from dummies import DummyMemory
from test_experiment import N, MarkingCorrector, VisibleARM, evaluator, run, stories, truth  # noqa: F401 (fixtures)


def iv(v, w=0.0):
    return M.Interval(v, v - w, v + w)


def table_with(per_story: dict, rows: dict | None = None, curves: dict | None = None) -> E.ResultsTable:
    return E.ResultsTable(rows or {}, curves or {}, {}, len(next(iter(next(iter(per_story.values())).values()))),
                          N, per_story=per_story)


def test_paired_changes_are_per_story_differences_with_intervals():
    per_story = {"arm": {"char_acc": [0.2, 0.4, 0.3, 0.5], "clip_score": [20.0, 21.0, 22.0, 23.0]},
                 "acdc_rules": {"char_acc": [0.6, 0.9, 0.7, 1.0], "clip_score": [21.0, 20.0, 23.0, 22.0]}}
    out = E.paired_changes(table_with(per_story), n_resamples=500)
    assert [(r["comparison"], r["metric"]) for r in out] == [("ACDC vs ARM", "char_acc"), ("ACDC vs ARM", "clip_score")]
    acc, clip = out
    assert acc["diff"]["value"] == pytest.approx(0.45) and acc["excludes_0"]       # +0.4, +0.5, +0.4, +0.5
    assert (acc["old_value"], acc["new_value"]) == pytest.approx((0.35, 0.8))
    assert clip["diff"]["value"] == pytest.approx(0.0) and not clip["excludes_0"]   # +1, -1, +1, -1
    md = E.paired_changes_markdown(out)
    assert "| ACDC vs ARM | char_acc | 0.350 | 0.800 | +0.450 [" in md and md.count("\n") == 4
    assert E.paired_changes(table_with(per_story), metrics=["clip_score"], n_resamples=50)[0]["metric"] == "clip_score"


def test_verdicts_follow_direction_and_significance():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.05, 40)
    per_story = {"dm_only": {"frame_consistency": list(base - 0.2), "clip_score": list(base * 40)},
                 "arm": {"frame_consistency": list(base), "clip_score": list(base * 40)},
                 "acdc_rules": {"frame_consistency": list(base + 0.1), "clip_score": list(base * 40 - 2.0)}}
    rows = {r: {m: iv(float(np.mean(v))) for m, v in d.items()} for r, d in per_story.items()}
    rows["dm_only"]["fid"], rows["arm"]["fid"], rows["acdc_rules"]["fid"] = iv(10.0, 1), iv(20.0, 1), iv(19.5, 1)
    table = table_with(per_story, rows)
    v = {(x["comparison"], x["metric"]): x for x in E.reproduction_verdicts(E.compare_with_paper(table), table)}
    assert set(v) == {(c, m) for c in ("ACDC vs ARM", "ARM vs DM only") for m in ("frame_consistency", "clip_score", "fid")}
    assert v[("ACDC vs ARM", "frame_consistency")]["verdict"] == "reproduced"
    assert v[("ACDC vs ARM", "clip_score")]["verdict"] == "opposite, significant"
    # FID 20 -> 19.5 is the paper's direction, but the rows' intervals [19, 21] and [18.5, 20.5] overlap.
    assert v[("ACDC vs ARM", "fid")]["verdict"] == "same direction, not significant"
    assert v[("ACDC vs ARM", "fid")]["test"].startswith("rows'")
    # The paper's two ARMs disagree on CLIP-sim against Stable Diffusion (-0.5% and +1.9%).
    assert v[("ARM vs DM only", "clip_score")]["verdict"] == "paper mixed"
    # FID 10 -> 20 is worse, as in the paper (+88% and +109%), intervals disjoint.
    assert v[("ARM vs DM only", "fid")]["verdict"] == "reproduced"
    assert v[("ARM vs DM only", "fid")]["paper_rel_change_pct"] == pytest.approx([88.4, 109.0], abs=0.05)
    md = E.verdicts_markdown(list(v.values()))
    assert md.count("\n- ") + 1 == 6 and "**ACDC vs ARM, clip_score: opposite, significant.**" in md


def test_frame_trend_says_whether_the_last_frame_is_below_the_first():
    curves = {"arm": {"char_acc": [iv(0.9, 0.05), iv(0.7, 0.05), iv(0.5, 0.05)]},
              "acdc_rules": {"char_acc": [iv(0.9, 0.05), iv(0.9, 0.05), iv(0.86, 0.05)]}}
    t = E.frame_trend(E.ResultsTable({}, curves, {"arm": "ARM alone"}, 2, 3))
    assert [(x["row"], x["falls"]) for x in t] == [("arm", True), ("acdc_rules", False)]
    assert t[0]["label"] == "ARM alone" and t[0]["change"] == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="not in row"):
        E.frame_trend(E.ResultsTable({}, curves, {}, 2, 3), "bg_acc")


class StrengthCorrector(MarkingCorrector):
    """Also writes round(100 t') / 255 into pixel (0, 1), so each frame shows the t' that corrected it."""

    def correct(self, images, prompts, *, strength=0.5, **kw):
        out = super().correct(images, prompts, strength=strength, **kw)
        out[:, 0, 0, 1] = round(100 * strength) / 255
        return out


def test_strength_sweep_runs_acdc_at_each_strength_and_tabulates_beside_the_base_rows(tmp_path, evaluator, truth):
    sts = stories(3)
    _, config = run(tmp_path / "main", sts)
    kw = dict(arm=VisibleARM(), corrector=StrengthCorrector(), memory=DummyMemory(), config=config, progress=False)
    dirs = E.strength_sweep(sts[:2], tmp_path / "sweep", (0.3, 0.7), **kw)
    assert dirs == {0.3: tmp_path / "sweep" / "t0.3", 0.7: tmp_path / "sweep" / "t0.7"}
    for s, d in dirs.items():
        assert sorted(p.name for p in d.iterdir() if p.is_dir()) == ["acdc_rules"]
        frames = E.load_frames(d, "acdc_rules", sts[:2])
        assert torch.equal((frames[:, :, 0, 0, 1] * 255).round(), torch.full((2, N), float(round(100 * s))))
        assert json.loads((d / "config.json").read_text())["strength"] == s
    assert E.strength_sweep(sts[:2], tmp_path / "sweep", (0.3,), **kw) == {0.3: dirs[0.3]}   # resumes
    with pytest.raises(ValueError, match=r"t' in \(0, 1\]"):
        E.strength_sweep(sts, tmp_path / "bad", (0.0, 0.5), **kw)
    with pytest.raises(ValueError, match="got \\['0.5'\\]"):                  # e.g. a papermill -p string
        E.strength_sweep(sts, tmp_path / "bad", ["0.5"], **kw)
    table = E.summarise_sweep(dirs, sts[:2], evaluator, config, base_dir=tmp_path / "main", ground_truth=truth)
    assert list(table.rows) == ["reference", "dm_only", "arm", "acdc_rules_t0.3", "acdc_rules_t0.7"]
    assert table.labels["acdc_rules_t0.7"] == "ARM + ACDC, rule memory, t'=0.7, N=10" and table.n_stories == 2
    assert table.rows["arm"]["char_acc"].value == 0.0 and table.rows["acdc_rules_t0.3"]["char_acc"].value == 1.0
    assert set(table.per_story) == set(table.rows) and set(table.curves) == set(table.rows)
    assert "| ARM + ACDC, rule memory, t'=0.3, N=10 |" in table.to_markdown()
    assert list(E.summarise_sweep(dirs, sts[:2], evaluator, config).rows) == ["acdc_rules_t0.3", "acdc_rules_t0.7"]


def test_example_frames_figure_and_table_files(tmp_path, evaluator, truth):
    import matplotlib
    matplotlib.use("Agg")
    sts = stories(2)
    _, config = run(tmp_path, sts)
    fig = E.plot_example_frames(tmp_path, sts[1], ("arm", "acdc_rules"), truth.reference_images,
                                {"arm": "ARM alone"})
    assert len(fig.axes) == 3 * N
    assert [fig.axes[k * N].get_ylabel() for k in range(3)] == ["Ground truth", "ARM alone", "acdc_rules"]
    shown = np.asarray(fig.axes[N].images[0].get_array())                         # ARM row, frame 1: (2, 2)
    assert np.allclose(shown, E.load_frames(tmp_path, "arm", [sts[1]])[0, 0, 0].numpy()) and shown.max() > 0
    table = E.summarise(tmp_path, sts, evaluator, config, ground_truth=truth)
    table.write(tmp_path, stem="table1_toy")
    assert json.loads((tmp_path / "table1_toy.json").read_text())["n_stories"] == 2
    assert (tmp_path / "table1_toy.md").read_text() == table.to_markdown()
    md = E.paper_table_markdown()
    assert md.count("\n") == 2 + 5 and "| Show-o + ACDC (ours) | 0.9062 | 30.82 | -0.0003 | 56.36 |" in md


def test_curve_claims_read_the_per_frame_curves():
    curves = {"arm": {"char_acc": [iv(0.9, 0.02), iv(0.7, 0.02), iv(0.5, 0.02)]},
              "acdc_rules": {"char_acc": [iv(0.92, 0.02), iv(0.9, 0.02), iv(0.88, 0.02)]},
              "acdc_nomem": {"char_acc": [iv(0.91, 0.02), iv(0.8, 0.02), iv(0.6, 0.02)]}}
    lines = E.curve_claims(E.ResultsTable({}, curves, {}, 2, 3))
    assert lines[0] == "Errors accumulate in the ARM alone: char_acc 0.900 at frame 1, 0.500 at frame 3 " \
                       "(change -0.400, significant)."
    assert "0.880 against the ARM's 0.500 (+0.380, significant); at frame 1 +0.020 (not significant)" in lines[1]
    assert "+0.010 at frame 1 (not significant), +0.280 at frame 3 (significant); the gap is larger later, as" in lines[2]
    curves["acdc_rules"]["char_acc"][-1] = iv(0.55, 0.02)
    curves["arm"]["char_acc"][-1] = iv(0.9, 0.02)
    lines = E.curve_claims(E.ResultsTable({}, curves, {}, 2, 3))
    assert "(change +0.000, not significant)" in lines[0] and "not larger later, unlike" in lines[2]
    assert E.curve_claims(E.ResultsTable({}, {"arm": curves["arm"]}, {}, 2, 3)) == lines[:1]
