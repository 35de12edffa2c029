"""Notebook 08's pieces: figure recipes, results tables read back, claim verdicts, the report and its sources."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from acdc_lib import metrics as M
from acdc_lib import plotting
from acdc_lib.experiment import ResultsTable
from acdc_lib.experiment import claims as C
from acdc_lib.experiment import figures as F
from acdc_lib.experiment.ablations import plot_pareto
from acdc_lib.experiment.report import plot_frame_rows
from acdc_lib.io import REPO_ROOT
from acdc_lib.theory import ForwardSamples, VPSDE, forward_process_samples, plot_forward_process


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Figure recipes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["tensors", "dataclass", "plain"])
def test_a_replayed_recipe_draws_the_same_bytes(tmp_path, case):
    plotting.use_style()
    g = torch.Generator().manual_seed(0)
    if case == "tensors":
        plot, args = plot_frame_rows, ({"reference": torch.rand(3, 3, 8, 8, generator=g),
                                        "arm": torch.rand(3, 3, 8, 8, generator=g)}, {"arm": "ARM alone"})
    elif case == "dataclass":
        sde = VPSDE()
        plot, args = plot_forward_process, (sde, forward_process_samples(sde, np.random.default_rng(0), n=200, n_steps=20))
    else:
        plot, args = plot_pareto, ([{"policy": "acdc2_rules", "adaptive": False, "corrections": 2.0,
                                     "quality": {"value": 0.7, "low": 0.65, "high": 0.75}},
                                    {"policy": "adaptive0.5", "adaptive": True, "corrections": 3.1,
                                     "quality": {"value": 0.8, "low": 0.76, "high": 0.84}}], {None: "all 6"})
    plotting.plot_and_save(plot, *args, name="fig", fig_dir=tmp_path / "a", out_dir=tmp_path / "run")
    recipe = tmp_path / "run" / plotting.RECIPES / "fig.json"
    assert recipe.is_file()
    assert (recipe.with_suffix(".npz").is_file()) == (case != "plain")
    plotting.save_figure(plotting.replay(recipe), "fig", tmp_path / "b")
    assert _sha(tmp_path / "a" / "fig.png") == _sha(tmp_path / "b" / "fig.png")


def test_a_recipe_restores_types_exactly(tmp_path):
    arrays: dict = {}
    fwd = ForwardSamples(2.0, (0.1, 0.5), np.arange(6, dtype=np.float32).reshape(2, 3))
    value = {"t": torch.arange(4, dtype=torch.float64), 0.5: (1, "a", None), "fwd": fwd, "s": np.float32(1.5)}
    back = plotting._decode(json.loads(json.dumps(plotting._encode(value, arrays, "x"))), arrays)
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == torch.float64
    assert back[0.5] == (1, "a", None)
    assert isinstance(back["fwd"], ForwardSamples) and back["fwd"].samples.dtype == np.float32
    assert np.array_equal(back["fwd"].samples, fwd.samples) and back["fwd"].times == (0.1, 0.5)
    assert type(back["s"]) is np.float32 and back["s"] == np.float32(1.5)


def test_no_recipe_without_a_run_folder_and_bad_plots_are_refused(tmp_path):
    plotting.plot_and_save(plot_pareto, [], name="fig", fig_dir=tmp_path / "a")  # interactive use: no recipe
    assert not (tmp_path / plotting.RECIPES).exists()
    with pytest.raises(ValueError, match="module-level function"):
        plotting.plot_and_save(lambda: None, name="fig", fig_dir=tmp_path, out_dir=tmp_path)
    with pytest.raises(TypeError, match=r"args\[0\] of type object"):
        plotting.plot_and_save(plot_pareto, object(), name="fig", fig_dir=tmp_path, out_dir=tmp_path)
    assert not (tmp_path / "fig.png").exists()  # refused before anything was drawn


def test_a_damaged_or_stale_recipe_says_to_rerun_its_notebook(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="rerun its notebook"):
        plotting.replay(bad)
    bad.write_text(json.dumps({"function": "acdc_lib.plotting:no_such_plot", "args": [], "kwargs": {"__dict__": []}}))
    with pytest.raises(ValueError, match="no longer has"):
        plotting.replay(bad)


def test_regenerate_reports_identity_new_and_broken_recipes(tmp_path):
    plotting.use_style()
    run = tmp_path / "toy-cpu-06_ablations-00000000"
    pts = [{"policy": "arm", "adaptive": False, "corrections": 0.0, "quality": {"value": 0.5, "low": 0.4, "high": 0.6}}]
    plotting.plot_and_save(plot_pareto, pts, name="06_pareto", fig_dir=tmp_path / "figs", out_dir=run)
    plotting.plot_and_save(plot_pareto, pts, {"arm": "ARM"}, name="06_other", fig_dir=tmp_path / "scratch", out_dir=run)
    (run / plotting.RECIPES / "06_broken.json").write_text("{")
    (tmp_path / "figs" / "06_orphan.png").write_bytes(b"")
    src = C.Source("06_ablations", run, {"n_stories": 1}, {})
    got = {r.name: r for r in F.regenerate([src], tmp_path / "out", compare_dir=tmp_path / "figs")}
    assert got["06_pareto"].identical is True and not got["06_pareto"].error
    assert got["06_other"].identical is None  # nothing to compare with in figs/
    assert "rerun its notebook" in got["06_broken"].error and got["06_broken"].identical is None
    assert (tmp_path / "out" / "06_pareto.png").is_file()
    assert F.without_recipe(tmp_path / "figs", [src]) == ["06_orphan"]
    # a run without results is not read, so its recipes do not count
    assert F.regenerate([C.Source("06_ablations", run, None, {}, "no results")], tmp_path / "out") == []


# --------------------------------------------------------------------------------------------
# Results tables read back
# --------------------------------------------------------------------------------------------
def _table(per_frame: dict, per_story: dict | None = None, n_frames: int = 6) -> ResultsTable:
    iv = M.Interval(0.5, 0.4, 0.6)
    rows = {r: {"char_acc": iv} for r in per_frame}
    for r, d in (per_story or {}).items():
        for m, v in d.items():
            rows.setdefault(r, {})[m] = M.Interval(float(np.mean(v)), float(np.min(v)), float(np.max(v)))
    return ResultsTable(rows=rows, curves={r: {"char_acc": [iv] * n_frames} for r in rows}, labels={r: r.upper() for r in rows},
                        n_stories=len(next(iter(per_frame.values()))), n_frames=n_frames, per_story=per_story or {},
                        per_frame={r: {"char_acc": v.tolist()} for r, v in per_frame.items()})


def test_a_results_table_reads_back_equal_with_nan(tmp_path):
    t = _table({"arm": np.ones((3, 6))}, {"arm": {"frame_consistency": [0.5, float("nan"), 0.7]}})
    t.write(tmp_path, stem="t")
    back = ResultsTable.read(tmp_path / "t.json")
    assert np.isnan(back.per_story["arm"]["frame_consistency"][1])
    assert json.dumps(back.to_dict()) == json.dumps(t.to_dict())
    with pytest.raises(ValueError, match="keys .*'rows'"):
        ResultsTable.from_dict({"n_stories": 1})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        ResultsTable.read(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="gone.json"):
        ResultsTable.read(tmp_path / "gone.json")


# --------------------------------------------------------------------------------------------
# Verdicts and claims
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, low, high, sign, verdict", [
    (0.1, 0.05, 0.2, 1, "reproduced"), (0.1, -0.05, 0.2, 1, "same direction, not significant"),
    (-0.1, -0.2, 0.05, 1, "opposite, not significant"), (-0.1, -0.2, -0.05, 1, "opposite"),
    (-0.1, -0.2, -0.05, -1, "reproduced"), (float("nan"), 0, 0, 1, "not testable here")])
def test_verdict_of(value, low, high, sign, verdict):
    assert C.verdict_of(value, low, high, sign) == verdict


@pytest.mark.parametrize("parts, verdict", [
    ([(0.1, True), (0.2, True)], "reproduced"), ([(0.1, True), (0.2, False)], "same direction, not significant"),
    ([(0.1, False), (-0.2, True)], "opposite"), ([(0.1, False), (-0.2, False)], "mixed"),
    ([(-0.1, False), (-0.2, False)], "opposite, not significant"), ([], "not testable here")])
def test_combined_verdict(parts, verdict):
    assert C.combined_verdict(parts) == verdict


def test_table2_claims_judge_fid_by_separate_intervals_and_lower_is_better(tmp_path):
    paired = lambda old, new, v, lo, hi: {"old": old, "new": new, "metric": "frame_consistency", "value": v,  # noqa: E731
                                          "low": lo, "high": hi}
    res = {"table2_verdicts": {"ACDC #2 best frame consistency": "x", "ACDC #6 best FID": "x"},
           "table2_claims": {"ACDC #2 best frame consistency": [paired("arm", "acdc2", 0.07, -0.02, 0.14),
                                                                paired("acdc4", "acdc2", -0.06, -0.08, -0.04)],
                             "ACDC #6 best FID": [{"row": "acdc", "other": "arm", "metric": "fid", "value": -0.01,
                                                   "separate": True},
                                                  {"row": "acdc", "other": "acdc2", "metric": "fid", "value": -0.02,
                                                   "separate": False}]}}
    got = {c.claim: c for c in C.table2_claims(C.Source("06_ablations", tmp_path, res, {}))}
    assert got["ACDC #2 best frame consistency"].verdict == "opposite"  # #4 is significantly better
    assert got["ACDC #6 best FID"].verdict == "same direction, not significant"
    assert "acdc - acdc2: -0.02 (intervals overlap)" in got["ACDC #6 best FID"].measured


def test_a_claim_refuses_a_verdict_outside_the_vocabulary():
    with pytest.raises(ValueError, match="'confirmed' is not one of"):
        C.Claim("Table 1", "x", "y", "z", "confirmed", "w")


def _source(tmp_path, table: ResultsTable, stem="03_acdc_story", **params) -> C.Source:
    d = tmp_path / f"toy-cpu-{stem}-0"
    table.write(d, stem="table1_toy")
    return C.Source(stem, d, {"n_stories": table.n_stories}, params)


def test_figure4_claims_follow_the_per_frame_values(tmp_path):
    rng = np.random.default_rng(0)
    S = 60
    falls = (rng.random((S, 6)) < np.linspace(0.95, 0.4, 6)).astype(float)      # the ARM degrades
    held = (rng.random((S, 6)) < 0.95).astype(float)                            # ACDC keeps frames up
    nomem = (rng.random((S, 6)) < np.linspace(0.95, 0.5, 6)).astype(float)      # no memory falls behind
    true_ctx = falls.copy()                                                      # the oracle: no inheritance
    src = _source(tmp_path, _table({"arm": falls, "acdc_rules": held, "acdc_nomem": nomem, "arm_true_ctx": true_ctx}),
                  ARM="toy")
    got = {c.claim: c for c in C.figure4_claims(src, n_resamples=500)}
    assert [c.section for c in got.values()] == ["Fig. 4 (ARM toy)"] * 4
    assert got["the ARM alone degrades along the story"].verdict == "reproduced"
    better = got[f"ACDC ({C.RULE_MEMORY}) has better later frames than its ARM"]
    assert better.verdict == "reproduced"
    assert "not a stop to error build-up" in better.measured  # the ARM alone does not compound here
    assert got[f"without memory ACDC matches in early frames but falls behind later (against the {C.RULE_MEMORY})"
               ].verdict == "reproduced"
    c = got["the ARM's errors compound from its own frames"]
    assert c.verdict == "not informative here"  # the oracle equals the ARM on every story: a [0, 0] interval
    assert c.measured.startswith("+0.000 [+0.000, +0.000]")
    # the reverse story: the ARM improves along it, so the first claim is the opposite
    src = _source(tmp_path, _table({"arm": falls[:, ::-1].copy()}), stem="03_rev")
    got = {c.claim: c for c in C.figure4_claims(src, n_resamples=500)}
    assert got["the ARM alone degrades along the story"].verdict == "opposite"
    assert got[f"ACDC ({C.RULE_MEMORY}) has better later frames than its ARM"].verdict == "not testable here"


def test_table1_claims_rederive_the_verdicts_from_per_story_values(tmp_path):
    rng = np.random.default_rng(1)
    S = 40
    base = rng.random(S)
    per_story = {"dm_only": {"frame_consistency": base - 0.3 + 0.01 * rng.standard_normal(S), "clip_score": base},
                 "arm": {"frame_consistency": base, "clip_score": base},
                 "acdc_rules": {"frame_consistency": base + 0.1 + 0.01 * rng.standard_normal(S), "clip_score": base - 0.01 + 0.02 * rng.random(S)},
                 "acdc_nomem": {"frame_consistency": base - 0.1, "clip_score": base}}
    per_story = {r: {m: np.asarray(v).tolist() for m, v in d.items()} for r, d in per_story.items()}
    t = _table({r: np.ones((S, 6)) for r in per_story}, per_story)
    got = {c.claim: c for c in C.table1_claims(_source(tmp_path, t, ARM="toy"))}
    improves = got[f"ACDC ({C.RULE_MEMORY}) improves its ARM: frame consistency"]
    assert improves.verdict == "reproduced"
    d = np.subtract(per_story["acdc_rules"]["frame_consistency"], per_story["arm"]["frame_consistency"])
    assert improves.measured.startswith(f"{t.labels['acdc_rules']} - {t.labels['arm']}: {d.mean():+.3f} [")
    assert "Table 1: Show-o 0.8211 -> Show-o + ACDC (ours) 0.9062 (printed gain 10.4%" in improves.paper
    assert got[f"the memory helps ACDC #6 ({C.RULE_MEMORY}): frame consistency"].verdict == "reproduced"
    assert got[f"the memory helps ACDC #6 ({C.RULE_MEMORY}): frame consistency"].section == "Table 2 (ARM toy)"
    # the paper makes no claim on the ARM against SD v1.5 on CLIP (its two ARMs go either way): no row
    assert not any(c.startswith("the ARM alone") and "CLIP" in c for c in got)
    assert got["the ARM alone is more consistent than the DM alone: frame consistency"].verdict == "reproduced"
    assert got["ACDC improves its ARM: ImageReward"].verdict == "not testable here"
    assert {c.section for c in got.values()} == {"Table 1 (ARM toy)", "Table 2 (ARM toy)"}


def test_sources_name_what_is_missing_and_skip_the_report_itself(tmp_path):
    rs = C.find_sources(REPO_ROOT / "papermill_runs" / "toy-cpu.yaml", tmp_path)
    by = {s.notebook: s for s in rs}
    assert "08_figures" not in by
    assert "no results in toy-cpu-07_physical_constraints-" in by["07_physical_constraints"].missing
    assert "no results in toy-cpu-05_video_extension-" in by["05_video_extension"].missing
    assert "no results in toy-cpu-03_acdc_story-" in by["03_acdc_story"].missing
    assert "python -m acdc_lib.runs papermill_runs/toy-cpu.yaml" in by["03_acdc_story"].missing
    by["00_diffusion_theory"].folder.mkdir(parents=True)
    (by["00_diffusion_theory"].folder / "results.json").write_text('{"theorem1": {"a": true, "b": false}}')
    by["06_ablations"].folder.mkdir(parents=True)
    (by["06_ablations"].folder / "results.json").write_text("")
    by = {s.notebook: s for s in C.find_sources(REPO_ROOT / "papermill_runs" / "toy-cpu.yaml", tmp_path)}
    assert by["00_diffusion_theory"].results == {"theorem1": {"a": True, "b": False}}
    assert "damaged" in by["06_ablations"].missing and by["06_ablations"].results is None
    claims = C.build_claims(list(by.values()))
    order = [c.section for c in claims]
    assert all(order.index(s) + order.count(s) - 1 == len(order) - 1 - order[::-1].index(s) for s in set(order))  # grouped
    thm1 = next(c for c in claims if c.section == "Theorem 1")
    assert thm1.verdict == "mixed" and "1/2 settings" in thm1.measured


def test_with_no_results_every_claim_keeps_its_row(tmp_path):
    sources = C.find_sources(REPO_ROOT / "papermill_runs" / "toy-cpu.yaml", tmp_path)
    claims = C.build_claims(sources)
    sections = {c.section for c in claims}
    assert {"Table 1", "Fig. 4", "Table 2", "Table 3", "Fig. 5", "Theorem 1", "Theorem 2", "Theorem 3",
            "Open question 1", "Open question 2", "Open question 3", "Open question 4"} <= sections
    assert {c.verdict for c in claims} == {"not testable here"}
    assert all(c.where for c in claims)  # each says why
    text = C.report_markdown(claims, sources, C.table_errata(), C.additions(sources))
    assert text.count("| **not testable here** |") == len(claims)
    assert "## Table 3" in text and "05_video_extension" in text and "## Errata" in text


def test_the_paper_table_errata_are_computed_from_its_numbers():
    lines = C.table_errata()
    assert "(60.5 - 56.36) / 56.36 = 7.35%" in lines[0] and "6.84%" in lines[0]
    assert "13.89%" in lines[1]


# --------------------------------------------------------------------------------------------
# Benchmarks read by the report
# --------------------------------------------------------------------------------------------
def test_benchmark_ratio_lines_are_kept_for_the_results_file(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    common = __import__("_common")
    monkeypatch.setattr(common, "CHECKS", [])
    line = common.ratio_line("stories/s at batch 32 / batch 1", 5.0, 6.0, higher_is_better=True)
    assert "measured / target = 0.83 -> FAIL" in line
    out = common.write_results("bench_x", {"n": 1}, tmp_path / "bench_x.json")
    doc = json.loads(out.read_text())
    assert doc["checks"] == [{"label": "stories/s at batch 32 / batch 1", "measured": 5.0, "target": 6.0, "unit": "x",
                              "higher_is_better": True, "ratio": 5.0 / 6.0, "pass": False}]
    assert "_common" in sys.modules


def test_the_report_reads_benchmarks_and_names_a_damaged_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bench_batching.json").write_text(json.dumps(
        {"benchmark": "bench_batching", "checks": [{"label": "x", "ratio": 1.2, "pass": True, "higher_is_better": True}]}))
    (tmp_path / "a" / "bench_render.json").write_text("{")
    benches = C.read_benchmarks([tmp_path / "a", REPO_ROOT / "benchmarks" / "recorded", tmp_path / "absent"])
    assert "cannot be read" in benches["bench_render"]["error"]
    assert C.benchmark_checks(benches) == [{"benchmark": "bench_batching", "label": "x", "ratio": 1.2, "pass": True,
                                            "higher_is_better": True}]
    lines = C.paper_scale_lines(benches)  # the H200 run kept in benchmarks/recorded
    assert lines and "NVIDIA H200" in lines[0] and "batch 1: 12.1 s per story frame (measured)" in lines[0]
    s06 = C.Source("06_ablations", None, None, {}, "no run")
    q4 = [c for c in C.open_question_claims(s06, s06, benches) if c.section == "Open question 4"][0]
    assert q4.verdict == "measured" and "paper scale with random weights" in q4.measured


def test_the_benchmark_figure_has_a_bar_per_check():
    checks = [{"benchmark": "b", "label": f"c{k}", "ratio": r, "pass": r >= 1, "higher_is_better": True}
              for k, r in enumerate((0.5, 1.2, 25.0))]
    fig = F.plot_benchmark_ratios(checks)
    ax = fig.axes[0]
    assert [round(p.get_width(), 6) for p in ax.patches] == [0.5, 1.2, 25.0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_yticklabels()][0] == "b: c0 (>= 1)"



def test_table3_claims_read_notebook05s_verdicts(tmp_path):
    from acdc_lib.experiment import video as V

    rng = np.random.default_rng(1)
    arm = {k: rng.random(30) for k in ("subject", "background", "dynamic", "displacement", "sharpness_rel")}
    arm.update(subject_to_first_pf=rng.random((30, 6)), identity_kept_pf=rng.random((30, 6)))
    acdc = {k: v + 0.1 for k, v in arm.items()}
    claims = V.table3_claims({"arm": arm, "acdc_first": acdc}, chunk_length=3)
    src = C.Source("05_video_extension", tmp_path, {"table3_claims": claims}, {})
    rows = C.table3_claims(src)
    split = [c["claim"] for c in claims]
    split[2:3] = ["ACDC raises imaging quality", "ACDC raises aesthetic quality, most of all"]
    assert [r.claim for r in rows] == split
    assert rows[0].verdict == "reproduced" and rows[0].section == "Table 3"
    # aesthetic quality was not measured: its own row says so, not folded into the sharpness proxy's verdict
    assert rows[2].verdict == "reproduced" and rows[3].verdict == "not testable here" and "LAION" in rows[3].measured
    assert next(r for r in rows if r.section == "Fig. 6").claim == "frames after the corrected chunk stay aligned"
    assert "+0.100 [" in rows[0].measured
    empty = C.table3_claims(C.Source("05_video_extension", None, None, {}, "no run"))
    assert {r.verdict for r in empty} == {"not testable here"} and len(empty) == 5


def test_figure5_claims_read_notebook07s_verdicts(tmp_path):
    from acdc_lib.experiment import physical as PH

    rng = np.random.default_rng(2)
    kinds = {"two moons": "sky"}
    normal = {"sky": rng.random((80, 4)) < 0.05}
    wrong = {"arm": {"normal": normal, "two moons": rng.random((80, 4)) < [1.0, 0.7, 0.6, 0.5]},
             "sdedit": {"normal": normal, "two moons": rng.random((80, 4)) < [0.6, 0.5, 0.4, 0.4]},
             "inpaint_user": {"normal": normal, "two moons": rng.random((80, 4)) < [0.0, 0.05, 0.05, 0.05]}}
    comps = {f"inpaint_user_vs_{b}": PH.compare_conditions(wrong, kinds, b, "inpaint_user", n_resamples=300)
             for b in ("sdedit", "arm")}
    claims = PH.physical_claims(PH.persistence_table(wrong, kinds, n_resamples=300), comps, kinds)
    rows = C.figure5_claims(C.Source("07_physical_constraints", tmp_path, {"physical_claims": claims}, {}))
    assert [r.claim for r in rows] == [c["claim"] for c in claims] and {r.section for r in rows} == {"Fig. 5"}
    assert [r.verdict for r in rows] == ["reproduced", "reproduced"]
    assert "two moons: +0." in rows[0].measured and "notebooks/07_physical_constraints.ipynb §8" in rows[0].where
    empty = C.figure5_claims(C.Source("07_physical_constraints", None, None, {}, "no run"))
    assert {r.verdict for r in empty} == {"not testable here"} and len(empty) == 2


def test_storygpt_claims_are_rejudged_from_notebook09_parts_and_kept_when_missing(tmp_path):
    part = lambda v, lo, hi: {"name": "char_acc", "value": v, "low": lo, "high": hi}  # noqa: E731
    res = {"storygpt_claims": [
        {"claim": "Char-LDM's attention guidance (L_reg) improves character accuracy", "parts": [part(0.1, 0.02, 0.2)],
         "note": ""},
        {"claim": "aligning the LM to the fused embedding beats the text embedding", "parts": [part(-0.1, -0.2, -0.01)],
         "note": ""},
        {"claim": "interleaved text and frames beat captions only", "parts": [part(0.05, -0.01, 0.1)], "note": ""},
        {"claim": "character accuracy holds up to 50 frames", "parts": [part(-0.02, -0.06, 0.01)], "note": ""}],
        "head_to_head": [{"metric": "char_acc", "value": -0.2, "low": -0.3, "high": -0.1, "better": "ACDC"}]}
    got = C.storygpt_claims(C.Source("09_storygpt_v", tmp_path, res, {}))
    assert [c.verdict for c in got] == ["reproduced", "opposite", "same direction, not significant",
                                        "opposite, not significant", "measured"]
    assert {c.section for c in got} == {C.STORYGPT} and "09_storygpt_v.ipynb §6" in got[0].where
    assert "StoryGPT-V - ACDC -0.200 [-0.300, -0.100], better: ACDC" in got[-1].measured
    missing = C.storygpt_claims(C.Source("09_storygpt_v", None, None, {}, "no results in x"))
    assert len(missing) == 5 and {c.verdict for c in missing} == {"not testable here"}
    assert all(c.where == "no results in x" for c in missing)
    by = {s.notebook: s for s in C.find_sources(REPO_ROOT / "papermill_runs" / "toy-cpu.yaml", tmp_path)}
    assert "no results in toy-cpu-09_storygpt_v-" in by["09_storygpt_v"].missing
    assert sum(c.section == C.STORYGPT for c in C.build_claims(list(by.values()))) == 5
