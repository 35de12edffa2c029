"""World version 2: identity and motion that only the frames carry, the ARM's code slots, the continuation
task and the regime gate on it, and the frame-carried scores of the toy evaluator."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from acdc_lib.stories import write_stories
from acdc_lib.toyworld import gates as G
from acdc_lib.toyworld import models as M
from acdc_lib.toyworld.evaluation import ToyStoryEvaluator
from acdc_lib.toyworld.grammar import GRAMMAR_VERSION, generate_stories, move
from acdc_lib.toyworld.render import render_states
from acdc_lib.toyworld.stories import WorldV1StoriesWarning, read_toy_stories
from acdc_lib.toyworld.text import build_tokenizer
from acdc_lib.toyworld.world import (ACCESSORIES, FRAME_ONLY_ATTRIBUTES, MARKINGS, N_LAYOUTS, RUN_CELLS, X_POSITIONS,
                                     SceneState, explicit_caption, x_cell)
from acdc_lib.types import Story

STORIES = generate_stories(300, seed=5)


def _state(**kw):
    d = dict(place="park", time="day", name="Max", species="corgi", gender="male", action="stand")
    d.update(kw)
    return SceneState(**d)


# ---- the world and its grammar ------------------------------------------------------------
def test_identity_is_drawn_once_per_story_and_the_layout_once_per_place():
    seen_markings, seen_layouts = set(), set()
    for st in STORIES:
        assert st.meta["grammar_version"] == GRAMMAR_VERSION == 2
        assert len({(s["marking"], s["accessory"]) for s in st.states}) == 1
        assert st.states[0]["accessory"] != "none"  # version-2 characters always wear a collar
        by_place: dict[str, set] = {}
        for s in st.states:
            by_place.setdefault(s["place"], set()).add(s["layout"])
        assert all(len(v) == 1 for v in by_place.values())  # a return to a place finds its layout again
        seen_markings.add(st.states[0]["marking"])
        seen_layouts |= {s["layout"] for s in st.states}
    assert seen_markings == set(MARKINGS) and seen_layouts == set(range(N_LAYOUTS))


def test_motion_runs_on_the_grid_turns_at_the_edges_and_other_actions_keep_it():
    for st in STORIES:
        for a, b, said in zip(st.states, st.states[1:], st.meta["explicit"][1:]):
            assert b["x"] in X_POSITIONS
            if a["place"] != b["place"]:
                continue  # a new place puts the character anywhere
            if "action" not in said:  # "Night fell over the park.": the frame keeps the last pose
                assert (b["x"], b["facing"]) == (a["x"], a["facing"])
                continue
            assert (b["x"], b["facing"]) == move(a["x"], a["facing"], b["action"])
    assert move(X_POSITIONS[-1], "right", "run") == (X_POSITIONS[-1 - RUN_CELLS], "left")
    assert move(X_POSITIONS[0], "right", "run") == (X_POSITIONS[RUN_CELLS], "right")
    assert move(X_POSITIONS[3], "left", "sit") == (X_POSITIONS[3], "left")
    assert [x_cell(x) for x in X_POSITIONS] == list(range(len(X_POSITIONS)))


def test_no_sentence_or_caption_states_identity_or_position():
    words = {*MARKINGS, *ACCESSORIES, "collar", "left", "right", "layout"} - {"none"}
    for st in STORIES[:100]:
        texts = list(st.sentences) + [explicit_caption(SceneState.from_dict(s)) for s in st.states]
        for t in texts:
            assert not words & set(t.lower().replace(".", " ").replace(",", " ").split()), t


@pytest.mark.parametrize("field,value", [("marking", "spots"), ("accessory", "hat"), ("layout", 3),
                                         ("layout", -1), ("layout", True), ("x", 0.2)])
def test_bad_identity_or_position_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        _state(**{field: value})


def test_identity_and_layout_change_the_pixels_and_defaults_draw_version_1():
    base = _state()
    img = lambda s: render_states([s]).images[0]  # noqa: E731
    assert torch.equal(img(base), img(base.replace(marking="plain", accessory="none", layout=0)))
    for change in ({"marking": "saddle"}, {"marking": "mask"}, {"accessory": "red"}, {"layout": 1}, {"layout": 2}):
        assert (img(base) - img(base.replace(**change))).abs().amax() > 0.2, change
    # every place's three layouts differ from each other
    for place in ("meadow", "forest", "beach", "snowy field", "garden", "park"):
        ims = [img(_state(place=place, layout=k)) for k in range(N_LAYOUTS)]
        assert all((ims[i] - ims[j]).abs().amax() > 0.2 for i in range(3) for j in range(i + 1, 3)), place


def test_version_1_story_files_still_read_with_a_warning(tmp_path):
    old = Story("old-1", ["Max the corgi sat in the park on a sunny day."] * 6,
                [{"place": "park", "time": "day", "name": "Max", "species": "corgi", "gender": "male",
                  "action": "sit", "x": 0.41, "facing": "left"}] * 6, source="grammar", meta={"grammar_version": 1})
    path = tmp_path / "old.jsonl"
    write_stories(path, [old], kind="grammar")
    with pytest.warns(WorldV1StoriesWarning, match="make-splits"):
        got = read_toy_stories(path)
    assert got[0].states[0]["marking"] == "plain" and got[0].states[0]["layout"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_stories(tmp_path / "new.jsonl", STORIES[:3], kind="grammar")
        read_toy_stories(tmp_path / "new.jsonl")


def test_probe_labels_of_the_new_heads():
    sts = [_state(x=X_POSITIONS[k], facing=("left", "right")[k % 2], marking=MARKINGS[k % 3],
                  accessory=ACCESSORIES[k % 4], layout=k % 3) for k in range(7)]
    y = M.state_labels(sts)
    assert y["x_cell"].tolist() == list(range(7))
    assert y["facing"].tolist() == [k % 2 for k in range(7)]
    assert y["marking"].tolist() == [k % 3 for k in range(7)] and y["layout"].tolist() == [k % 3 for k in range(7)]
    assert set(FRAME_ONLY_ATTRIBUTES) <= set(M.PROBE_HEADS)


# ---- the ARM's code slots --------------------------------------------------------------------
@pytest.fixture(scope="module", params=[(0, 0), (32, 0), (32, 4)], ids=["slots", "slots+skip", "code-vectors+skip"])
def slotted_arm(request):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    tok = build_tokenizer()
    vq = M.build_vq(codebook_size=32, channels=(16, 16, 16), embed_dim=4).eval()
    layout = M.ARMLayout(n_text=len(tok), codebook_size=32)
    lm = LlamaForCausalLM(M.arm_config(layout.vocab_size, hidden=32, layers=1, heads=2))
    skip, code_dim = request.param
    slots = M.CodeSlots(32, layout.tokens_per_frame, previous_codes=skip, code_dim=code_dim,
                        codebook_size=32 if code_dim else 0)
    if code_dim:
        slots.set_codebook(vq.quantize.embedding.weight)
    return M.ToyARM(lm, vq, tok, layout, slots=slots)


def test_segment_slots_give_code_j_slot_j_plus_2_in_every_frame():
    layout = M.ARMLayout(n_text=100, codebook_size=32)
    sl = M.segment_slots(layout, 0, 2 * layout.segment)
    for f in range(2):
        seg = sl[f * layout.segment:(f + 1) * layout.segment]
        assert (seg[:layout.text_len] == 0).all() and seg[layout.text_len] == 1
        assert seg[layout.text_len + 1:layout.text_len + 1 + 64].tolist() == list(range(2, 66))
        assert seg[-1] == 0
    assert torch.equal(M.segment_slots(layout, 37, 50), sl[37:87])  # a cache step continues the pattern


def test_code_slots_change_the_logits_save_and_load(slotted_arm, tmp_path):
    arm = slotted_arm
    ids = torch.randint(arm.layout.code_offset, arm.layout.vocab_size, (2, arm.layout.segment))
    with torch.no_grad():
        plain = arm.lm(input_ids=ids).logits
        slotted = arm.lm(**M.lm_inputs(arm.lm, arm.slots, arm.layout, ids)).logits
    assert not torch.allclose(plain, slotted)
    assert M.CodeSlots(32).embed.weight[0].abs().max() == 0  # text carries no slot
    arm.save_pretrained(tmp_path / "arm")
    arm.vq.save_pretrained(tmp_path / "vq")
    again = M.load_arm(tmp_path / "arm", tmp_path / "vq")
    assert again.slots is not None and torch.equal(again.slots.embed.weight, arm.slots.embed.weight)
    assert (again.slots.previous is None) == (arm.slots.previous is None)
    assert again.slots.has_skip == arm.slots.has_skip and (again.slots.code_in is None) == (arm.slots.code_in is None)
    if arm.slots.code_in is not None:  # the codebook buffer travels with the module
        assert torch.equal(again.slots.codebook, arm.slots.codebook) and arm.slots.codebook.abs().sum() > 0
    g = lambda: [torch.Generator().manual_seed(3)]  # noqa: E731
    texts = [STORIES[0].sentences[:2]]
    prev = torch.randint(0, 32, (1, 1, 64))
    assert torch.equal(arm.generate(texts, prev, g()), again.generate(texts, prev, g()))


def test_cached_sampling_with_slots_matches_a_full_forward(slotted_arm):
    # The KV-cached loop passes the slots of each new position; a full forward over the same ids must agree.
    arm = slotted_arm
    texts = [STORIES[1].sentences[:2]]
    prev = torch.randint(0, 32, (1, 1, 64))
    out = arm.generate(texts, prev, [torch.Generator().manual_seed(0)])
    ids = torch.cat([arm.context_ids(texts, prev), out + arm.layout.code_offset], 1)
    with torch.no_grad():
        full = arm.lm(**M.lm_inputs(arm.lm, arm.slots, arm.layout, ids)).logits[0, -65:-1]
        past, step, pos, cached = None, arm.context_ids(texts, prev), 0, []
        for j in range(64):
            res = arm.lm(**M.lm_inputs(arm.lm, arm.slots, arm.layout, step, pos, ids[:, :pos + step.shape[1]]),
                         past_key_values=past, use_cache=True)
            past, pos = res.past_key_values, pos + step.shape[1]
            cached.append(res.logits[0, -1])
            step = out[:, j:j + 1] + arm.layout.code_offset
    assert torch.allclose(full, torch.stack(cached), atol=1e-4)


def test_temporal_skip_gives_the_input_predicting_code_j_the_previous_frames_code_j():
    layout = M.ARMLayout(n_text=100, codebook_size=32)
    S, T = layout.segment, layout.text_len
    codes = torch.randint(0, 32, (2, 3, 64))
    ids = torch.stack([torch.cat([torch.cat([torch.zeros(T, dtype=torch.long), torch.tensor([layout.boi]),
                                             c + layout.code_offset, torch.tensor([layout.eoi])]) for c in row])
                       for row in codes])
    prev = M.previous_frame_codes(layout, ids, 0, ids.shape[1])
    assert (prev[:, :S] == 0).all()  # frame 1 has no frame before it
    for f in (1, 2):
        boi = f * S + T  # BOI predicts code 0, code j-1 predicts code j
        assert torch.equal(prev[:, boi:boi + 64], codes[:, f - 1] + 1)
        assert (prev[:, f * S:boi] == 0).all() and (prev[:, boi + 64] == 0).all()  # text and the last code: none
    assert torch.equal(M.previous_frame_codes(layout, ids, 150, 40), prev[:, 150:190])
    with pytest.raises(ValueError, match="history"):
        M.previous_frame_codes(layout, ids[:, :100], 90, 20)
    with pytest.raises(ValueError, match="previous_codes"):
        M.CodeSlots(32, previous_codes=-1)


def test_code_vectors_embed_codes_by_their_codebook_vectors():
    # Two codes with the same codebook vector enter the LM alike; text tokens keep the LM's own embeddings.
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    layout = M.ARMLayout(n_text=100, codebook_size=8)
    lm = LlamaForCausalLM(M.arm_config(layout.vocab_size, hidden=16, layers=1, heads=2))
    slots = M.CodeSlots(16, layout.tokens_per_frame, code_dim=3, codebook_size=8)
    book = torch.randn(8, 3)
    book[5] = book[2]
    slots.set_codebook(book)
    ids = torch.tensor([[7, layout.code_offset + 2, layout.code_offset + 5, layout.code_offset + 1]])
    emb = M.lm_inputs(lm, slots, layout, ids)["inputs_embeds"] - slots(M.segment_slots(layout, 0, 4)[None])
    assert torch.allclose(emb[0, 1], emb[0, 2]) and not torch.allclose(emb[0, 1], emb[0, 3])
    assert torch.allclose(emb[0, 0], lm.get_input_embeddings()(ids)[0, 0])
    with pytest.raises(ValueError, match="codebook must be"):
        slots.set_codebook(torch.randn(8, 4))
    with pytest.raises(ValueError, match="codebook_size"):
        M.CodeSlots(16, code_dim=3)
    with pytest.raises(ValueError, match="without code vectors"):
        M.CodeSlots(16).set_codebook(book)


def test_temporal_skip_reads_the_previous_frame(slotted_arm):
    # Changing code 10 of frame 1 changes the input embeddings at that token and, through the skip, at the
    # input that predicts code 10 of frame 2 (one segment minus one later), nowhere else.
    arm = slotted_arm
    if not arm.slots.has_skip:
        pytest.skip("no temporal skip in this ARM")
    texts = [STORIES[1].sentences[:2]]
    prev = torch.randint(0, 32, (1, 1, 64))
    other = prev.clone()
    other[0, 0, 10] = (other[0, 0, 10] + 1) % 32
    now = torch.randint(0, 32, (1, 64)) + arm.layout.code_offset  # frame 2's codes
    with torch.no_grad():
        ea, eb = (M.lm_inputs(arm.lm, arm.slots, arm.layout, torch.cat([arm.context_ids(texts, p), now], 1))
                  ["inputs_embeds"] for p in (prev, other))
    changed = (ea - eb).abs().amax(-1)[0].nonzero().flatten().tolist()
    T, S = arm.layout.text_len, arm.layout.segment
    assert changed == [T + 1 + 10, S + T + 10]


# ---- the continuation task and the regime gate ------------------------------------------------
class _ReadTruth:
    """A stand-in evaluator that reads each frame's true labels (to test the bookkeeping, not a model)."""

    def __init__(self, labels):
        self.labels = labels

    def predict(self, images):
        return {k: v.clone() for k, v in self.labels.items()}


def test_continuation_gives_frame_one_and_shares_frame_two_across_contexts(slotted_arm):
    stories = STORIES[:3]
    states = [SceneState.from_dict(d) for st in stories for d in st.states]
    ev = _ReadTruth(M.state_labels(states))
    own = G.continuation_curve(slotted_arm, ev, stories, seed=4)
    true = G.continuation_curve(slotted_arm, ev, stories, seed=4, context="true")
    truth_codes = torch.stack([slotted_arm.encode(render_states(st.states).images) for st in stories])
    frame1 = slotted_arm.decode(truth_codes[:, 0])  # decoded as one batch, as the task does
    assert torch.equal(own["images"][:, 0], frame1) and torch.equal(true["images"][:, 0], frame1)
    assert torch.equal(own["images"][:, 1], true["images"][:, 1])  # both condition on the true frame 1
    assert own["per_frame"]["marking"] == [1.0] * 6  # the stand-in reads the truth
    win = G.continuation_curve(slotted_arm, ev, stories, seed=4, context_frames=2)
    assert torch.equal(win["images"][:, :2], own["images"][:, :2])  # a window of 2 sees all of frames 1-2
    with pytest.raises(ValueError, match="context"):
        G.continuation_curve(slotted_arm, ev, stories, context="oracle")


def _curves(own_scores, true_scores):
    # continuation_curve-like dicts whose every frame-only head has the given (S, N) 0/1 correctness
    def mk(sc):
        c = torch.as_tensor(sc).bool()
        return {"correct": {k: c for k in G.FRAME_ONLY}, "per_frame": {k: c.float().mean(0).tolist() for k in G.FRAME_ONLY}}
    return mk(own_scores), mk(true_scores)


def test_regime_gate_passes_growing_inherited_errors_and_fails_otherwise():
    rng = np.random.default_rng(0)
    S = 400
    true = np.ones((S, 6))
    own = np.ones((S, 6))
    for j, p in enumerate((1.0, 0.95, 0.9, 0.8, 0.7, 0.6)):  # the free-running ARM drifts away
        own[:, j] = rng.random(S) < p
    g = G.regime_gate(*_curves(own, true))
    assert g.passed and g.detail["frame2_own"] == pytest.approx(own[:, 1].mean())
    assert g.detail["inherited_at_6"]["low"] > 0 and g.detail["growth_3_to_6"]["low"] > 0
    flat = own.copy()
    flat[:, 2:] = flat[:, 1:2]  # errors that do not grow: inherited at 6 equals inherited at 3
    assert not G.regime_gate(*_curves(flat, true)).passed
    weak = own * (rng.random((S, 6)) < 0.7)  # mostly wrong at frame 2
    g = G.regime_gate(*_curves(weak, true))
    assert g.detail["frame2_own"] < 0.75 and not g.passed
    with pytest.raises(ValueError, match="same stories"):
        G.regime_gate(*_curves(own[:10], true))
    assert json.dumps(g.detail)  # gates.json takes it as it is


# ---- the toy evaluator's frame-carried scores ----------------------------------------------
class _FakeToy:
    """ToyEvaluator stand-in whose probe reads the labels it is given."""

    def __init__(self, heads):
        self.heads = heads

    def predict(self, images):
        return {k: v.clone() for k, v in self.heads.items()}


def test_carried_scores_compare_with_the_rows_own_frame_one():
    st = STORIES[0]
    states = [SceneState.from_dict(d) for d in st.states]
    # a story that stays at one place, running right from cell 0
    states = [s.replace(place=states[0].place, layout=states[0].layout, x=X_POSITIONS[min(2 * i, 6)]) for i, s in
              enumerate(states)]
    story = Story(st.story_id, st.sentences, [s.to_dict() for s in states], source="grammar", meta=st.meta)
    heads = M.state_labels(states)
    heads["marking"] = torch.full_like(heads["marking"], int(heads["marking"][0]))  # identity kept everywhere
    heads["marking"][3] = (heads["marking"][0] + 1) % 3  # ... but lost at frame 4
    heads["x_cell"] = heads["x_cell"].clone()
    heads["x_cell"][5] = heads["x_cell"][5] - 1  # 2 px off at frame 6
    ev = ToyStoryEvaluator.__new__(ToyStoryEvaluator)
    ev.toy = _FakeToy(heads)
    sc = ev.carried_scores(torch.zeros(6, 3, 32, 32), story)
    assert torch.isnan(sc["identity_acc"][0]) and torch.isnan(sc["position_err_px"][0])
    assert sc["identity_acc"][1:].tolist() == pytest.approx([1, 1, 2 / 3, 1, 1])
    assert sc["position_err_px"][1:].tolist() == pytest.approx([0, 0, 0, 0, 2])
    moved = Story(st.story_id, st.sentences, [s.to_dict() for s in states[:2]]
                  + [s.replace(place="beach" if states[0].place != "beach" else "park").to_dict() for s in states[2:]],
                  source="grammar", meta=st.meta)
    sc = ev.carried_scores(torch.zeros(6, 3, 32, 32), moved)
    assert torch.isnan(sc["position_err_px"][2:]).all()  # a new place draws a new x: no movement to judge
    assert sc["identity_acc"][2:].tolist() == pytest.approx([1, 0.5, 1, 1])  # marking and collar only


def test_physical_propagation_pairs_the_draws_and_reads_the_wrong_first_frame():
    """The shipped ARM continues 12 test stories from a physically wrong frame 1 and from the right one."""
    from acdc_lib.toyworld.splits import load_split

    res = G.physical_propagation(M.load_arm(), M.load_evaluator(), load_split("test")[:12], seed=3, n_resamples=200)
    sky = res["kinds"]["two suns or moons"]
    assert sky["normal_rate"][0] == 0.0 and sky["wrong_rate"][0] > 0.3  # the probe sees the second body after the VQ
    assert sky["added"][0]["value"] == pytest.approx(sky["wrong_rate"][0])
    assert set(res["natural"]) == {"sky", "ears", "tail"} and len(res["lines"]) == 6
    again = G.physical_propagation(M.load_arm(), M.load_evaluator(), load_split("test")[:12], seed=3, n_resamples=200)
    assert again["kinds"] == res["kinds"]  # seeded: the same draws give the same frames
