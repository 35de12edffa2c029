"""The renderer: deterministic frames whose ground truth (masks, part counts) matches what is drawn."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.render import (
    background_index,
    _backgrounds,
    _render_labels,
    _tables,
    jitter_states,
    render_states,
    states_to_arrays,
)
from acdc_lib.toyworld.world import (
    ACCESSORY_COLORS,
    ACTIONS,
    FACINGS,
    MAX_COUNT,
    PLACES,
    SPECIES,
    TIMES,
    X_POSITIONS,
    X_RANGE,
    Y_RANGE,
    SceneState,
)

EIGHT = np.ones((3, 3))  # 8-connectivity: thin diagonal strokes stay one component


def _state(**kw) -> SceneState:
    d = dict(place="meadow", time="day", name="Max", species="corgi", gender="male", action="stand")
    d.update(kw)
    return SceneState(**d)


def _components(mask: torch.Tensor) -> int:
    return ndimage.label(mask.numpy(), structure=EIGHT)[1]


GRAMMAR_STATES = [SceneState.from_dict(d) for s in generate_stories(40, seed=11) for d in s.states]


def test_output_shapes_types_and_range():
    out = render_states(GRAMMAR_STATES[:10])
    assert out.images.shape == (10, 3, 32, 32) and out.images.dtype == torch.float32
    assert out.masks.shape == (10, 1, 32, 32) and out.masks.dtype == torch.bool
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert set(out.counts) == {"n_suns", "n_moons", "n_ears", "n_tails"}
    assert out.states == GRAMMAR_STATES[:10]
    big = render_states(GRAMMAR_STATES[:2], size=48)
    assert big.images.shape == (2, 3, 48, 48)


def test_rendering_is_deterministic_and_independent_of_batching():
    a = render_states(GRAMMAR_STATES, batch_size=1000)
    b = render_states(GRAMMAR_STATES, batch_size=7)
    c = render_states(GRAMMAR_STATES[100:103])
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.images[100:103], c.images)
    # dicts are accepted and give the same frames
    d = render_states([s.to_dict() for s in GRAMMAR_STATES[:5]])
    assert torch.equal(d.images, a.images[:5])


def test_windowed_character_equals_full_frame_drawing():
    # The speed-up draws the character only near its anchor; it must not lose a pixel anywhere,
    # including the extreme positions and the biggest counts.
    extremes = [
        _state(species=sp, action=ac, x=x, y=y, facing=f, n_ears=MAX_COUNT, n_tails=MAX_COUNT)
        for sp, ac, x, y, f in itertools.product(SPECIES, ACTIONS, X_RANGE, Y_RANGE, FACINGS)
    ]
    arrays = states_to_arrays(extremes + GRAMMAR_STATES)
    for n in (32, 64):
        win = _render_labels(arrays, n, torch.device("cpu"), torch.float32, window=True)
        full = _render_labels(arrays, n, torch.device("cpu"), torch.float32, window=False)
        assert torch.equal(win, full)


@pytest.mark.parametrize("counts,xs", [
    ({}, X_RANGE),  # a normal character, anywhere on the grid
    # extra ears and tails reach further; they stay inside from the second grid cell in
    ({"n_ears": MAX_COUNT, "n_tails": MAX_COUNT}, (X_POSITIONS[1], X_POSITIONS[-2])),
])
def test_character_stays_inside_the_frame_at_extreme_positions(counts, xs):
    sts = [
        _state(species=sp, action=ac, x=x, y=y, facing=f, **counts)
        for sp, ac, x, y, f in itertools.product(SPECIES, ACTIONS, xs, Y_RANGE, FACINGS)
    ]
    out = render_states(sts, size=64, return_parts=True)
    m = out.masks[:, 0]
    # No character pixel on the outermost columns / bottom row: nothing was cut off by the border.
    assert not m[:, :, 0].any() and not m[:, :, -1].any() and not m[:, -1, :].any()


def test_mask_covers_exactly_the_pixels_that_differ_from_the_background():
    sts = GRAMMAR_STATES[:60]
    out = render_states(sts, return_parts=True)
    bgs, _, _ = _backgrounds(32, "cpu", torch.float32)
    a = states_to_arrays(sts)
    bg = bgs[background_index(a["place"], a["layout"], a["time"])]
    sky = out.parts["sun"] | out.parts["moon"]
    outside = ~(out.masks | sky)  # (B, 1, H, W)
    assert torch.equal(torch.where(outside, out.images, bg), bg)
    # Inside the mask every pixel has one of its species' palette colours, or its collar's.
    pal = _tables("cpu", torch.float32)["palette"]
    for b in range(len(sts)):
        collar = torch.tensor([ACCESSORY_COLORS[sts[b].accessory]]) if sts[b].accessory != "none" else pal[0, :0]
        colors = torch.cat([pal[a["species"][b]], collar])  # (L (+1), 3)
        px = out.images[b].permute(1, 2, 0)[out.masks[b, 0]]  # (k, 3)
        assert px.shape[0] > 20
        dist = (px[:, None, :] - colors[None]).abs().amax(-1).min(dim=1).values  # exact, unlike cdist
        assert dist.max() < 1e-6


@pytest.mark.parametrize("species", SPECIES)
def test_ears_tails_suns_and_moons_are_countable_in_the_frame(species):
    # Counted as connected components of each part's visible pixels, for every pose and facing.
    sts = []
    for ac, ne, nt, f in itertools.product(ACTIONS, range(MAX_COUNT + 1), range(MAX_COUNT + 1), FACINGS):
        sts.append(_state(species=species, action=ac, n_ears=ne, n_tails=nt, facing=f, x=0.4 if f == "left" else 0.6))
    for ns, nm in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (0, 3), (3, 0), (0, 0), (1, 2)]:
        sts.append(_state(species=species, time="night", n_suns=ns, n_moons=nm))
    out = render_states(sts, return_parts=True)
    for k, s in enumerate(sts):
        got = tuple(_components(out.parts[p][k, 0]) for p in ("ear", "tail", "sun", "moon"))
        assert got == (s.n_ears, s.n_tails, s.n_suns, s.n_moons), (s, got)
    assert out.counts["n_ears"].tolist() == [s.n_ears for s in sts]
    assert out.counts["n_tails"].tolist() == [s.n_tails for s in sts]


def test_physically_wrong_scenes_render_on_request():
    normal = _state(time="night")
    wrong = [normal.replace(n_moons=2), normal.replace(n_ears=3), normal.replace(n_tails=0)]
    assert normal.is_physically_valid and not any(s.is_physically_valid for s in wrong)
    out = render_states([normal, *wrong], return_parts=True)
    assert [_components(out.parts["moon"][k, 0]) for k in range(4)] == [1, 2, 1, 1]
    assert [_components(out.parts["ear"][k, 0]) for k in range(4)] == [2, 2, 3, 2]
    assert [_components(out.parts["tail"][k, 0]) for k in range(4)] == [1, 1, 1, 0]
    assert out.counts["n_moons"].tolist() == [1, 2, 1, 1]
    with pytest.raises(ValueError, match="n_suns \\+ n_moons"):
        normal.replace(n_suns=2, n_moons=2)
    with pytest.raises(ValueError, match="n_ears"):
        normal.replace(n_ears=MAX_COUNT + 1)


def test_species_are_told_apart_by_the_mean_colour_of_their_mask():
    # A nearest-centroid probe on one feature (mean RGB of the character) separates the 8 species
    # across places, times, poses and positions.
    rng = np.random.default_rng(0)
    sts = [
        _state(species=SPECIES[i % 8], place=PLACES[int(rng.integers(6))], time=TIMES[int(rng.integers(2))],
               action=ACTIONS[int(rng.integers(6))], x=float(rng.uniform(*X_RANGE)), facing=FACINGS[int(rng.integers(2))])
        for i in range(800)
    ]
    out = render_states(sts)
    feats = torch.stack([out.images[b].permute(1, 2, 0)[out.masks[b, 0]].mean(0) for b in range(len(sts))])
    labels = torch.tensor([SPECIES.index(s.species) for s in sts])
    train, test = slice(0, 400), slice(400, 800)
    centroids = torch.stack([feats[train][labels[train] == c].mean(0) for c in range(8)])
    pred = torch.cdist(feats[test], centroids).argmin(1)
    assert (pred == labels[test]).float().mean() >= 0.98


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(mask.any(1))[:, 0]
    cols = torch.nonzero(mask.any(0))[:, 0]
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.mark.parametrize("species", SPECIES)
def test_poses_change_the_silhouette(species):
    sts = [_state(species=species, action=a) for a in ACTIONS]
    out = render_states(sts, size=64)
    box = {a: _bbox(out.masks[k, 0]) for k, a in enumerate(ACTIONS)}
    height = {a: b[1] - b[0] for a, b in box.items()}
    assert box["jump"][1] <= box["stand"][1] - 6  # feet raised off the ground
    assert height["lie"] < height["stand"] and height["sit"] <= height["stand"] + 2
    masks = out.masks[:, 0].reshape(len(ACTIONS), -1)
    for i, j in itertools.combinations(range(len(ACTIONS)), 2):
        assert (masks[i] ^ masks[j]).sum() >= 15, (ACTIONS[i], ACTIONS[j])


def test_facing_mirrors_the_character_and_x_moves_it():
    right, left = _state(x=0.5, facing="right"), _state(x=0.5, facing="left")
    out = render_states([right, left, _state(x=0.62)])
    assert torch.equal(out.masks[1, 0], out.masks[0, 0].flip(-1))
    cols = [torch.nonzero(out.masks[k, 0])[:, 1].float().mean() for k in (0, 2)]
    assert cols[1] - cols[0] == pytest.approx(0.12 * 32, abs=0.6)


def test_day_and_night_differ_in_sky_brightness():
    out = render_states([_state(time="day"), _state(time="night")])
    sky = out.images[:, :, 2:6, 2:10].mean(dim=(1, 2, 3))
    assert sky[0] > 0.6 and sky[1] < 0.2


def test_jitter_moves_x_reproducibly_inside_the_range():
    sts = [_state(x=X_RANGE[0]), _state(x=X_RANGE[1]), _state()]
    a = jitter_states(sts, np.random.default_rng(3), dx=0.05)
    b = jitter_states(sts, np.random.default_rng(3), dx=0.05)
    assert [s.x for s in a] == [s.x for s in b]
    assert all(X_RANGE[0] <= s.x <= X_RANGE[1] for s in a)
    assert all(abs(s.x - t.x) <= 0.05 + 1e-9 for s, t in zip(a, sts))


def test_bad_input_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="unknown species 'dragon'"):
        render_states([{**_state().to_dict(), "species": "dragon"}])
    with pytest.raises(ValueError, match="x must be"):
        _state(x=0.95)
    with pytest.raises(ValueError, match="at least one state"):
        render_states([])
    with pytest.raises(ValueError, match="size"):
        render_states([_state()], size=8)
