"""Render toy-world scene states into RGB frames, with their ground truth (masks and physical counts).

The renderer is a pure function of the states: the same states give bit-identical frames. It is
vectorised over the batch with torch: every shape is a boolean test on a coordinate grid, so one
batch costs a fixed number of tensor operations, whatever the mix of species, places and poses.

Drawing order: sky and ground -> place props -> suns/moons -> the character (tails, legs, body,
head, snout, ears, eyes). The whole background of each (place, time) is drawn once and cached.

The character is drawn in a local frame whose origin is at (state.x, state.y) (the point between
its feet), X pointing the way it faces and Y pointing up, in units of the image size; each
(species, action) pair has one geometry table row (`_geometry`), so poses differ clearly:
sitting = compact, low body; jumping = raised off the ground with stretched legs; lying = flat
and long, no legs; running = legs spread; sniffing = head down at the ground.

Physically wrong frames come from the state's counts: `state.replace(n_moons=2)`, `n_ears=3`,
`n_tails=0` ... ; the counts returned are the ones drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from acdc_lib.toyworld.world import (
    ACCESSORIES,
    ACCESSORY_COLORS,
    ACTIONS,
    MARKINGS,
    MAX_COUNT,
    N_LAYOUTS,
    NIGHT_GROUND_FACTOR,
    PLACE_LOOKS,
    PLACES,
    SKY_COLORS,
    SPECIES,
    SPECIES_LOOKS,
    TIMES,
    X_RANGE,
    SceneState,
)

DEFAULT_SIZE = 32  # 32x32: every species, ear and tail stays distinct (see notebook 01) and the toy
# models train on 2 CPU cores within budget.
DEFAULT_SUPERSAMPLE = 1  # 1: hard pixel edges (fast; counts checked at this setting). 2: anti-aliased
COUNT_KEYS: tuple[str, ...] = ("n_suns", "n_moons", "n_ears", "n_tails")

# Part labels of the label map (later parts are drawn over earlier ones).
PARTS: tuple[str, ...] = ("background", "sun", "moon", "tail", "tail_tip", "leg", "body", "head", "snout",
                          "ear", "eye", "marking", "collar")
_L = {p: i for i, p in enumerate(PARTS)}
CHARACTER_PARTS: tuple[str, ...] = ("tail", "tail_tip", "leg", "body", "head", "snout", "ear", "eye", "marking",
                                    "collar")
COLLAR_RADIUS = 0.045  # the collar: a disc this wide (local units) where the head meets the body

SUN_COLOR = (1.0, 0.82, 0.10)
MOON_COLOR = (0.96, 0.96, 0.82)
CELESTIAL_SLOTS: tuple[tuple[float, float], ...] = ((0.80, 0.14), (0.20, 0.14), (0.50, 0.12))  # MAX_COUNT slots
CELESTIAL_RADIUS = 0.075
CHAR_SCALE = 0.85  # the character's geometry below is drawn at this scale, to keep it inside the frame
JUMP_LIFT = 0.14  # a jumping character's feet are this far above state.y
EAR_SPACING = 0.12  # distance between neighbouring ears along the head top
TAIL_SPACING = 0.12  # extra tails are drawn parallel, this far apart

# Which parts a species paints with its accent colour (SpeciesLook.accent_color).
ACCENT_PARTS: dict[str, tuple[str, ...]] = {
    "fox": ("tail_tip",),
    "beagle": ("ear", "tail_tip"),
    "rabbit": ("ear",),
    "owl": ("snout", "eye"),
    "corgi": ("snout",),
    "cat": ("eye",),
    "pig": ("ear", "snout"),
    "bear": ("snout",),
}

# Ear styles -> (kind, base width, height, lean): kind 0 = triangle, 1 = ellipse.
_EAR_STYLE = {
    "pointed": (0, 0.070, 0.100, 0.0),
    "tufts": (0, 0.055, 0.090, 0.25),
    "long": (1, 0.055, 0.150, 0.0),
    "round": (1, 0.065, 0.065, 0.0),
    "floppy": (1, 0.055, 0.100, 0.0),
}
# Tail styles -> (length, radius, base angle in degrees; 180 = straight back, 90 = up).
_TAIL_STYLE = {
    "bushy": (0.13, 0.030, 150.0),
    "thin": (0.13, 0.026, 120.0),
    "puff": (0.04, 0.035, 170.0),
    "fan": (0.10, 0.030, 190.0),
    "stub": (0.06, 0.028, 150.0),
    "curly": (0.06, 0.026, 125.0),  # short, up and back
}


@dataclass
class RenderOutput:
    """Frames and their ground truth.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        masks: (B, 1, H, W) bool, the character's pixels.
        counts: {"n_suns", "n_moons", "n_ears", "n_tails"} -> (B,) long tensors, as drawn.
        states: the B `SceneState`s rendered.
        parts: optional {part name -> (B, 1, H, W) bool} for "sun", "moon", "ear", "tail" (with its
            tip) and "character"; filled when `render_states(..., return_parts=True)`.
    """

    images: torch.Tensor
    masks: torch.Tensor
    counts: dict[str, torch.Tensor]
    states: list[SceneState]
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Geometry tables
# --------------------------------------------------------------------------------------------
_GEOM_KEYS = (
    "bcx", "bcy", "brx", "bry",  # body ellipse
    "hcx", "hcy", "hr",  # head disc
    "scx", "scy", "srx", "sry",  # snout / beak ellipse (srx = 0: none)
    "l0x0", "l0y0", "l0x1", "l0y1", "l1x0", "l1y0", "l1x1", "l1y1", "lr",  # two legs (lr = 0: none)
    "eax", "eay",  # ear anchor (centre of the ear row, on the head top)
    "tax", "tay", "tang", "tctr",  # tail anchor, angle (radians), 1 = extra tails centred on it, 0 = above it
    "ex", "ey", "lift",  # eye centre; lift above the ground line
)


def _geometry(species: str, action: str) -> dict[str, float]:
    """One (species, action) pair's part geometry in the character's local frame."""
    shape = SPECIES_LOOKS[species].shape
    # Body half-axes, leg length and head radius by body shape (units: image size).
    rx, ry, leg, hr = {"long": (0.15, 0.07, 0.08, 0.075),
                       "round": (0.12, 0.10, 0.05, 0.075),
                       "tall": (0.09, 0.14, 0.035, 0.08)}[shape]
    snout = {"fox": (0.05, 0.028), "beagle": (0.045, 0.032), "corgi": (0.04, 0.03), "pig": (0.03, 0.035),
             "bear": (0.035, 0.03), "owl": (0.025, 0.022)}.get(species, (0.0, 0.0))
    g: dict[str, float] = {"lift": 0.0, "lr": 0.022}
    if action == "lie":  # flat and long, on the ground, no legs
        rx, ry = rx * 1.15, ry * 0.7 if shape != "tall" else 0.065
        g.update(bcx=-0.02, bcy=ry, lr=0.0)
        g.update(hcx=rx + hr * 0.2, hcy=hr * 0.9)
    elif action == "sit":  # compact: short and tall body resting on the ground, front legs only
        rx, ry = rx * 0.65, ry * 1.25 if shape != "tall" else ry
        g.update(bcx=-0.02, bcy=ry)
        g.update(hcx=rx * 0.9, hcy=2 * ry + hr * 0.6)
        g.update(l0x0=rx * 0.5, l0y0=ry, l0x1=rx * 0.7, l0y1=0.0, l1x0=rx * 0.5, l1y0=ry, l1x1=rx * 0.7,
                 l1y1=0.0)
    else:  # standing body on legs: stand, jump, run, sniff
        bcy = leg + ry
        g.update(bcx=0.0, bcy=bcy)
        if shape == "tall":
            g.update(hcx=0.02, hcy=bcy + ry + hr * 0.5)
        else:
            g.update(hcx=rx + hr * 0.3, hcy=bcy + ry + hr * 0.5)
        fx, bx = rx * 0.55, -rx * 0.55  # front and back leg x
        top = bcy - ry * 0.4
        if action == "stand" or action == "sniff":
            g.update(l0x0=fx, l0y0=top, l0x1=fx, l0y1=0.0, l1x0=bx, l1y0=top, l1x1=bx, l1y1=0.0)
        elif action == "run":  # legs spread wide, body a little lower and longer
            g.update(bcy=bcy - 0.015)
            rx = rx * 1.1
            g.update(l0x0=fx, l0y0=top, l0x1=fx + 0.08, l0y1=0.0, l1x0=bx, l1y0=top, l1x1=bx - 0.07, l1y1=0.0)
        elif action == "jump":  # raised off the ground, legs stretched back and forward
            g["lift"] = JUMP_LIFT
            g.update(l0x0=fx, l0y0=top, l0x1=fx + 0.07, l0y1=0.02, l1x0=bx, l1y0=top, l1x1=bx - 0.08,
                     l1y1=0.01)
        if action == "sniff":  # head down at the ground in front of the body
            g.update(hcx=rx + hr * 0.8, hcy=hr * 1.0)
    g.update(brx=rx, bry=ry, hr=hr)
    # Snout on the front of the head, slightly below its centre.
    srx, sry = snout
    g.update(scx=g["hcx"] + hr * 0.85 + srx * 0.4, scy=g["hcy"] - hr * 0.25, srx=srx, sry=sry)
    if species == "owl":  # a beak, inside the face
        g.update(scx=g["hcx"] + hr * 0.75, scy=g["hcy"] - hr * 0.2)
    # Ears sit on the head top (a little back); tails leave the body's back.
    g.update(eax=g["hcx"] - hr * 0.15, eay=g["hcy"] + hr * 0.75)
    g.update(tax=g["bcx"] - rx * 0.95, tay=g["bcy"] + g["bry"] * 0.25)
    base = math.radians(_TAIL_STYLE[SPECIES_LOOKS[species].tail][2])
    g["tctr"] = 1.0
    if action in ("lie", "sit"):  # the tail leaves low and goes up behind; extra tails stack upward
        base = math.radians(140.0) if base < math.radians(200) else base
        g["tay"] = g["bcy"]
        g["tctr"] = 1.0
    g["tang"] = base
    g.update(ex=g["hcx"] + hr * 0.4, ey=g["hcy"] + hr * 0.2)
    for k in ("l0x0", "l0y0", "l0x1", "l0y1", "l1x0", "l1y0", "l1x1", "l1y1"):
        g.setdefault(k, 0.0)
    return g


def marking_color(body: tuple[float, float, float]) -> tuple[float, float, float]:
    """The coat marking's colour: the body colour darkened, or lightened on a dark body."""
    lum = 0.299 * body[0] + 0.587 * body[1] + 0.114 * body[2]
    if lum > 0.35:
        return tuple(0.4 * c for c in body)
    return tuple(0.5 * c + 0.5 for c in body)


@lru_cache(maxsize=8)
def _tables(device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # Per-(species, action) geometry rows and per-species styles and colours, as tensors.
    rows = [_geometry(s, a) for s in SPECIES for a in ACTIONS]
    t = {k: torch.tensor([r[k] for r in rows], dtype=dtype, device=device) for k in _GEOM_KEYS}
    ears = [_EAR_STYLE[SPECIES_LOOKS[s].ears] for s in SPECIES]
    tails = [_TAIL_STYLE[SPECIES_LOOKS[s].tail] for s in SPECIES]
    t["ear_kind"] = torch.tensor([e[0] for e in ears], device=device)
    for j, k in enumerate(("ear_w", "ear_h", "ear_lean"), start=1):
        t[k] = torch.tensor([e[j] for e in ears], dtype=dtype, device=device)
    for j, k in enumerate(("tail_len", "tail_r")):
        t[k] = torch.tensor([e[j] for e in tails], dtype=dtype, device=device)
    # Palette per species: one RGB per part label (background/sun/moon rows unused here).
    pal = torch.zeros(len(SPECIES), len(PARTS), 3, dtype=dtype)
    for i, s in enumerate(SPECIES):
        look = SPECIES_LOOKS[s]
        for p in CHARACTER_PARTS:
            pal[i, _L[p]] = torch.tensor(look.accent_color if p in ACCENT_PARTS[s] else look.body_color)
        if "eye" not in ACCENT_PARTS[s]:
            pal[i, _L["eye"]] = torch.tensor((0.05, 0.05, 0.05) if s != "bear" else (0.9, 0.9, 0.9))
        if s == "fox" or s == "beagle":  # only the tip of the tail is accent; the rest is body colour
            pal[i, _L["tail"]] = torch.tensor(look.body_color)
        pal[i, _L["marking"]] = torch.tensor(marking_color(look.body_color))
    t["palette"] = pal.to(device)
    return t


# --------------------------------------------------------------------------------------------
# Primitive shapes on coordinate grids (all broadcast to (B, H, W))
# --------------------------------------------------------------------------------------------
def _ellipse(X, Y, cx, cy, rx, ry):
    rx = rx.clamp_min(1e-6)
    ry = ry.clamp_min(1e-6)
    return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1.0


def _capsule(X, Y, x0, y0, x1, y1, r):
    # Points within distance r of the segment (x0, y0)-(x1, y1).
    dx, dy = x1 - x0, y1 - y0
    ll = (dx * dx + dy * dy).clamp_min(1e-12)
    t = (((X - x0) * dx + (Y - y0) * dy) / ll).clamp(0.0, 1.0)
    return (X - x0 - t * dx) ** 2 + (Y - y0 - t * dy) ** 2 <= r * r


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1)


# --------------------------------------------------------------------------------------------
# Background (sky, ground, props) and the sky slots, cached per size
# --------------------------------------------------------------------------------------------
def _grid(n: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
    return c.view(1, 1, n), c.view(1, n, 1)  # u (1, 1, W), v (1, H, 1)


# Layout variants (world version 2): where each place's props stand; variant 0 is the version-1 look.
MEADOW_OAKS: tuple[tuple[float, ...], ...] = ((), (0.12,), (0.88,))
FOREST_TREES: tuple[tuple[float, ...], ...] = ((0.08, 0.36, 0.64, 0.92), (0.22, 0.50, 0.78), (0.14, 0.86))
BEACH_BOATS: tuple[tuple[float, ...], ...] = ((), (0.20,), (0.80,))
SNOW_HILLS: tuple[tuple[float, ...], ...] = ((0.70,), (0.25,), ())
SNOW_TREES: tuple[tuple[float, ...], ...] = ((), (0.85,), (0.12, 0.88))


def _place_layer(place: str, layout: int, u: torch.Tensor, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Day colours of one place in one layout variant: (3, H, W) image, (H, W) solid mask, (H, W) snow dots."""
    H, W = v.shape[1], u.shape[2]
    look = PLACE_LOOKS[place]
    img = torch.zeros(3, H, W, dtype=u.dtype)
    solid = torch.zeros(H, W, dtype=torch.bool)
    dots = torch.zeros(H, W, dtype=torch.bool)

    def paint(mask, rgb):
        nonlocal img, solid
        mask = mask.reshape(H, W)
        img = torch.where(mask, torch.tensor(rgb, dtype=u.dtype).view(3, 1, 1), img)
        solid = solid | mask

    uu, vv = u.expand(1, H, W)[0], v.expand(1, H, W)[0]
    paint(vv >= look.horizon, look.ground)
    one = lambda x: torch.tensor(x, dtype=u.dtype)  # noqa: E731

    def pine(cu, top=0.14, bottom=0.50, half=0.12):
        paint(_capsule(uu, vv, one(cu), one(0.60), one(cu), one(0.45), one(0.025)), (0.35, 0.20, 0.08))
        tri = (vv >= top) & (vv <= bottom) & ((uu - cu).abs() <= half * (vv - top) / (bottom - top))
        paint(tri, (0.02, 0.28, 0.10))

    def oak(cu):
        paint(_capsule(uu, vv, one(cu), one(0.60), one(cu), one(0.35), one(0.025)), (0.35, 0.20, 0.08))
        paint((uu - cu) ** 2 + (vv - 0.28) ** 2 <= 0.12 ** 2, (0.12, 0.45, 0.15))

    if place == "meadow":  # a rolling hill, grass tufts, and maybe an oak
        paint(_ellipse(uu, vv, one(0.30), one(0.52), one(0.40), one(0.10)) & (vv < look.horizon), (0.45, 0.75, 0.20))
        for cu in MEADOW_OAKS[layout]:
            oak(cu)
        for cu in (0.08, 0.30, 0.52, 0.74, 0.94):
            paint(_capsule(uu, vv, one(cu), one(0.60), one(cu + 0.02), one(0.55), one(0.018)), (0.25, 0.55, 0.08))
    elif place == "forest":  # pine trees
        for cu in FOREST_TREES[layout]:
            pine(cu)
    elif place == "beach":  # the sea, with a foam line, and maybe a sailing boat
        paint((vv >= 0.42) & (vv < look.horizon), (0.10, 0.45, 0.85))
        paint((vv >= look.horizon - 0.03) & (vv < look.horizon), (0.85, 0.95, 1.0))
        for cu in BEACH_BOATS[layout]:
            paint(((uu - cu).abs() <= 0.12) & (vv >= 0.47) & (vv <= 0.53), (0.50, 0.28, 0.10))
            paint((vv >= 0.24) & (vv < 0.47) & (uu >= cu - 0.01) & (uu - cu <= 0.10 * (vv - 0.24) / 0.23),
                  (1.0, 1.0, 1.0))
    elif place == "snowy field":  # pale hills or pines, and falling snow
        for cu in SNOW_HILLS[layout]:
            paint(_ellipse(uu, vv, one(cu), one(0.52), one(0.45), one(0.09)) & (vv < look.horizon), (0.80, 0.86, 0.95))
        for cu in SNOW_TREES[layout]:
            pine(cu, top=0.22)
        for cu, cv in ((0.10, 0.30), (0.30, 0.40), (0.42, 0.24), (0.58, 0.36), (0.90, 0.38), (0.35, 0.06),
                       (0.72, 0.06), (0.05, 0.08)):
            dots = dots | ((uu - cu) ** 2 + (vv - cv) ** 2 <= 0.022 ** 2)
    elif place == "garden":  # a hedge with flowers, whose colours the layout rotates
        paint((vv >= 0.42) & (vv < look.horizon), (0.15, 0.50, 0.15))
        colors = ((0.95, 0.10, 0.15), (1.0, 0.90, 0.10), (0.85, 0.20, 0.85))
        for j, cu in enumerate((0.06, 0.20, 0.34, 0.48, 0.62, 0.76, 0.90)):
            cv = 0.46 if j % 2 == 0 else 0.51
            paint((uu - cu) ** 2 + (vv - cv) ** 2 <= 0.03 ** 2, colors[(j + layout) % 3])
    elif place == "park":  # a path, and a bench with a round tree (mirrored in variant 1) or two trees
        paint((vv >= 0.62) & (vv <= 0.70), (0.78, 0.74, 0.66))
        brown = (0.50, 0.28, 0.10)
        pu = 1.0 - uu if layout == 1 else uu
        if layout in (0, 1):
            paint((pu >= 0.04) & (pu <= 0.30) & (vv >= 0.50) & (vv <= 0.535), brown)
            paint((pu >= 0.04) & (pu <= 0.30) & (vv >= 0.42) & (vv <= 0.455), brown)
            paint(((pu - 0.07).abs() <= 0.015) & (vv >= 0.50) & (vv <= 0.60), brown)
            paint(((pu - 0.27).abs() <= 0.015) & (vv >= 0.50) & (vv <= 0.60), brown)
        for cu in ((0.86,) if layout in (0, 1) else (0.14, 0.86)):
            oak(1.0 - cu if layout == 1 else cu)
    return img, solid, dots


@lru_cache(maxsize=8)
def _backgrounds(n: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cached (len(PLACES)*N_LAYOUTS*len(TIMES), 3, n, n) backgrounds (index `background_index`) and
    (MAX_COUNT, n, n) sun / moon slot masks."""
    u, v = _grid(n, "cpu", torch.float64)
    bgs = []
    for place, layout in ((p, k) for p in PLACES for k in range(N_LAYOUTS)):
        img, solid, dots = _place_layer(place, layout, u, v)
        for time in TIMES:
            sky = torch.tensor(SKY_COLORS[time], dtype=u.dtype).view(3, 1, 1).expand(3, n, n)
            factor = 1.0 if time == "day" else NIGHT_GROUND_FACTOR
            out = torch.where(solid, img * factor, sky)
            out = torch.where(dots & ~solid, torch.ones_like(out), out)  # snow stays white at night
            bgs.append(out)
    suns, moons = [], []
    uu, vv = u.expand(1, n, n)[0], v.expand(1, n, n)[0]
    r = CELESTIAL_RADIUS
    for cu, cv in CELESTIAL_SLOTS:
        disc = (uu - cu) ** 2 + (vv - cv) ** 2 <= r * r
        suns.append(disc)
        bite = (uu - cu - 0.45 * r) ** 2 + (vv - cv + 0.25 * r) ** 2 <= (0.8 * r) ** 2  # a crescent
        moons.append(disc & ~bite)
    return (torch.stack(bgs).to(device=device, dtype=dtype), torch.stack(suns).to(device), torch.stack(moons).to(device))


def background_index(place: torch.Tensor, layout: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Row of `_backgrounds`' stack for index tensors of place, layout and time."""
    return (place * N_LAYOUTS + layout) * len(TIMES) + time


# --------------------------------------------------------------------------------------------
# States <-> arrays
# --------------------------------------------------------------------------------------------
def states_to_arrays(states: Sequence[SceneState | Mapping[str, Any]], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Index / number arrays of a list of states (dicts are validated through SceneState.from_dict).

    Returns:
        {"place", "time", "species", "action", "n_suns", "n_moons", "n_ears", "n_tails", "marking",
        "accessory", "layout"}: (B,) long;
        {"x", "y", "facing"}: (B,) float64 (facing +1 right, -1 left).
    """
    sts = [s if isinstance(s, SceneState) else SceneState.from_dict(s) for s in states]
    for s in sts:
        s.validate()
    idx = {
        "place": [PLACES.index(s.place) for s in sts], "time": [TIMES.index(s.time) for s in sts],
        "species": [SPECIES.index(s.species) for s in sts], "action": [ACTIONS.index(s.action) for s in sts],
        **{k: [getattr(s, k) for s in sts] for k in COUNT_KEYS},
        "marking": [MARKINGS.index(s.marking) for s in sts], "accessory": [ACCESSORIES.index(s.accessory) for s in sts],
        "layout": [s.layout for s in sts],
    }
    out = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in idx.items()}
    out["x"] = torch.tensor([s.x for s in sts], dtype=torch.float64, device=device)
    out["y"] = torch.tensor([s.y for s in sts], dtype=torch.float64, device=device)
    out["facing"] = torch.tensor([1.0 if s.facing == "right" else -1.0 for s in sts], dtype=torch.float64, device=device)
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _sky_labels(n: int, device: str) -> torch.Tensor:
    """Cached ((MAX_COUNT+1)^2, n, n) uint8 labels of the sky for every (n_suns, n_moons) pair.

    Suns fill the first n_suns sky slots, moons the next n_moons (pairs with more than MAX_COUNT
    bodies are refused by SceneState and left empty here).
    """
    _, suns, moons = _backgrounds(n, device, torch.float32)
    out = torch.zeros((MAX_COUNT + 1) ** 2, n, n, dtype=torch.uint8, device=device)
    for ns in range(MAX_COUNT + 1):
        for nm in range(MAX_COUNT + 1 - ns):
            lab = out[ns * (MAX_COUNT + 1) + nm]
            for k in range(ns):
                lab[suns[k]] = _L["sun"]
            for k in range(ns, ns + nm):
                lab[moons[k]] = _L["moon"]
    return out


# The character fits in a square window of this side (image units) around its anchor (x, y):
# measured extents with up to MAX_COUNT ears and tails are x +- 0.34 and y - 0.55 .. y + 0.07
# (tests/unit/test_render.py checks that windowed and full-frame renders agree).
WINDOW = 0.70
WINDOW_ABOVE = 0.60  # of which this much lies above the feet line


def _character_labels(a: dict[str, torch.Tensor], u: torch.Tensor, v: torch.Tensor, n: int, dtype) -> torch.Tensor:
    """(B, h, w) uint8 labels of the character on the pixel grid u (B|1, 1, w), v (B|1, h, 1); 0 = none.

    Coordinates are fractions of the image (n pixels per side); drawing order is tails, legs,
    body, head, snout, ears, eyes, each later part over the earlier ones.
    """
    device = u.device
    B = a["species"].shape[0]
    T = _tables(str(device), dtype)
    lab = torch.zeros(B, v.shape[1], u.shape[2], dtype=torch.uint8, device=device)

    def draw(mask, part):
        lab.masked_fill_(mask, _L[part])

    # 1. The character's local frame: X forward (the way it faces), Y up from the feet line.
    row = a["species"] * len(ACTIONS) + a["action"]
    g = {key: _col(T[key][row]) for key in _GEOM_KEYS}
    sp = a["species"]
    X = (u - _col(a["x"].to(dtype))) * _col(a["facing"].to(dtype) / CHAR_SCALE)  # (B, 1, w)
    Y = (_col(a["y"].to(dtype)) - v) / CHAR_SCALE - g["lift"]  # (B, h, 1)

    # 2. Tails (behind the body): n_tails parallel strokes, TAIL_SPACING apart.
    tl, tr = _col(T["tail_len"][sp]), _col(T["tail_r"][sp])
    ca, sa = torch.cos(g["tang"]), torch.sin(g["tang"])
    nt = a["n_tails"].to(dtype)
    for j in range(int(a["n_tails"].max())):  # only as many passes as the batch needs
        on = _col(j < a["n_tails"])
        off = -(j - g["tctr"] * _col((nt - 1) / 2)) * TAIL_SPACING  # j-th tail above the (j-1)-th
        x0, y0 = g["tax"] - off * sa, g["tay"] + off * ca
        x1, y1 = x0 + tl * ca, y0 + tl * sa
        draw(on & _capsule(X, Y, x0, y0, x1, y1, tr), "tail")
        long_tail = tl > 0.06  # long tails have a (possibly accent) tip
        if bool(long_tail.any()):
            draw(on & long_tail & ((X - x1) ** 2 + (Y - y1) ** 2 <= (tr * 1.05) ** 2), "tail_tip")
    # 3. Legs, body, head, snout.
    for leg in ("l0", "l1"):
        draw(_capsule(X, Y, g[leg + "x0"], g[leg + "y0"], g[leg + "x1"], g[leg + "y1"], g["lr"]) & (g["lr"] > 0), "leg")
    body = _ellipse(X, Y, g["bcx"], g["bcy"], g["brx"], g["bry"])
    draw(body, "body")
    head = (X - g["hcx"]) ** 2 + (Y - g["hcy"]) ** 2 <= g["hr"] ** 2
    draw(head, "head")
    if "marking" in a and bool((a["marking"] > 0).any()):  # coat marking (world v2): a saddle or a mask
        mk = _col(a["marking"])
        draw(((mk == 1) & body & ~head & (Y >= g["bcy"])) | ((mk == 2) & head), "marking")
    draw(_ellipse(X, Y, g["scx"], g["scy"], g["srx"], g["sry"]) & (g["srx"] > 0), "snout")
    if "accessory" in a and bool((a["accessory"] > 0).any()):  # the collar, where the head meets the body
        dx, dy = g["bcx"] - g["hcx"], g["bcy"] - g["hcy"]
        norm = (dx * dx + dy * dy).sqrt().clamp_min(1e-6)
        cx, cy = g["hcx"] + g["hr"] * dx / norm, g["hcy"] + g["hr"] * dy / norm
        draw(_col(a["accessory"] > 0) & ((X - cx) ** 2 + (Y - cy) ** 2 <= COLLAR_RADIUS ** 2), "collar")
    # 4. Ears along the head top, EAR_SPACING apart, centred on the anchor.
    kind, w, h, lean = (_col(T[k][sp]) for k in ("ear_kind", "ear_w", "ear_h", "ear_lean"))
    ne = a["n_ears"].to(dtype)
    for j in range(int(a["n_ears"].max())):
        on = _col(j < a["n_ears"])
        off = j - (ne - 1) / 2  # (B,) this ear's place in the row
        ex, ey = X - (g["eax"] + _col(off * EAR_SPACING)), Y - g["eay"]
        side = _col(torch.sign(off))  # tufts lean away from the row's centre
        tri = (ey >= -0.02) & (ey <= h) & ((ex - lean * side * ey).abs() <= (w / 2) * (1 - ey / h))
        ell = _ellipse(ex, ey, torch.zeros_like(w), h / 2 - 0.01, w / 2, h / 2 + 0.01)
        draw(on & torch.where(kind == 0, tri, ell), "ear")
    # 5. Eyes: at least one pixel at any resolution (radius >= 0.75 px).
    er = max(0.022, 0.75 / n / CHAR_SCALE)
    draw((X - g["ex"]) ** 2 + (Y - g["ey"]) ** 2 <= er * er, "eye")
    return lab


def _render_labels(a: dict[str, torch.Tensor], n: int, device, dtype, window: bool = True) -> torch.Tensor:
    """(B, n, n) uint8 part labels (PARTS indices) of one batch: sky bodies, then the character.

    With `window`, the character is drawn only inside a WINDOW-sized square around it (the same
    pixels, about half the work); without, on the whole frame.
    """
    B = a["species"].shape[0]
    lab = _sky_labels(n, str(device))[a["n_suns"] * (MAX_COUNT + 1) + a["n_moons"]].clone()  # (B, n, n)
    if not window:
        u, v = _grid(n, device, dtype)
        char = _character_labels(a, u, v, n, dtype)
        return torch.where(char > 0, char, lab)
    m = min(n, math.ceil(WINDOW * n))
    # Window origin (pixels) per row, shifted to stay inside the frame.
    c0 = torch.round((a["x"] - WINDOW / 2) * n).long().clamp(0, n - m).to(device)  # (B,)
    r0 = torch.round((a["y"] - WINDOW_ABOVE) * n).long().clamp(0, n - m).to(device)
    ar = torch.arange(m, device=device)
    cols, rows = c0[:, None] + ar, r0[:, None] + ar  # (B, m)
    u = ((cols.to(dtype) + 0.5) / n)[:, None, :]  # (B, 1, m)
    v = ((rows.to(dtype) + 0.5) / n)[:, :, None]  # (B, m, 1)
    char = _character_labels(a, u, v, n, dtype).view(B, -1)  # (B, m*m)
    flat = (rows[:, :, None] * n + cols[:, None, :]).view(B, -1)  # (B, m*m) indices into n*n
    lab = lab.view(B, -1)
    lab.scatter_(1, flat, torch.where(char > 0, char, lab.gather(1, flat)))
    return lab.view(B, n, n)


def render_arrays(
    arrays: Mapping[str, torch.Tensor],
    *,
    size: int = DEFAULT_SIZE,
    supersample: int = DEFAULT_SUPERSAMPLE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Render one batch given as arrays (see `states_to_arrays`).

    Returns:
        images (B, 3, size, size) float in [0, 1], character masks (B, 1, size, size) bool, and part
        masks {"sun", "moon", "ear", "tail", "character"} -> (B, 1, size, size) bool.
    """
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample must be a positive int, got {supersample!r}")
    device = torch.device(device)
    n = size * supersample
    a = {k: v.to(device) for k, v in arrays.items()}
    lab = _render_labels(a, n, device, dtype).long()  # (B, n, n)
    T = _tables(str(device), dtype)
    bgs, _, _ = _backgrounds(n, str(device), dtype)
    layout = a["layout"] if "layout" in a else torch.zeros_like(a["place"])
    bg = bgs[background_index(a["place"], layout, a["time"])]  # (B, 3, n, n)
    # Colour: background where label 0, sun/moon colours, else the species palette entry.
    pal = T["palette"][a["species"]].clone()  # (B, L, 3)
    pal[:, _L["sun"]] = torch.tensor(SUN_COLOR, dtype=dtype, device=device)
    pal[:, _L["moon"]] = torch.tensor(MOON_COLOR, dtype=dtype, device=device)
    if "accessory" in a:  # the collar's colour per row (row 0 of the table, "none", is never drawn)
        collars = torch.tensor([(0.0, 0.0, 0.0)] + [ACCESSORY_COLORS[c] for c in ACCESSORIES[1:]], dtype=dtype,
                               device=device)
        pal[:, _L["collar"]] = collars[a["accessory"]]
    B = lab.shape[0]
    flat = torch.gather(pal, 1, lab.view(B, -1, 1).expand(-1, -1, 3))  # (B, n*n, 3)
    fg = flat.view(B, n, n, 3).permute(0, 3, 1, 2)
    img = torch.where((lab > 0)[:, None], fg, bg)

    def pool(m: torch.Tensor) -> torch.Tensor:  # coverage >= 1/2 of the block
        if supersample == 1:
            return m[:, None]
        return F.avg_pool2d(m[:, None].to(dtype), supersample) >= 0.5

    char = lab >= _L["tail"]
    parts = {
        "sun": pool(lab == _L["sun"]), "moon": pool(lab == _L["moon"]), "ear": pool(lab == _L["ear"]),
        "tail": pool((lab == _L["tail"]) | (lab == _L["tail_tip"])), "character": pool(char),
    }
    if supersample > 1:
        img = F.avg_pool2d(img, supersample)
    return img.clamp(0.0, 1.0), parts["character"], parts


def render_states(
    states: Sequence[SceneState | Mapping[str, Any]],
    *,
    size: int = DEFAULT_SIZE,
    supersample: int = DEFAULT_SUPERSAMPLE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1024,
    return_parts: bool = False,
) -> RenderOutput:
    """Render scene states into frames with their ground truth.

    Args:
        states: B `SceneState`s (or their dicts, validated).
        size: output side in pixels (square frames).
        supersample: draw at size*supersample and average blocks (anti-aliasing); 1 = hard edges.
        device, dtype: where and in what float type to render.
        batch_size: frames per vectorised batch (bounds memory: ~ batch_size * (size*supersample)^2 * 40 B).
        return_parts: also return per-part masks (suns, moons, ears, tails) in `RenderOutput.parts`.
    Returns:
        `RenderOutput` with images (B, 3, size, size) in [0, 1], masks (B, 1, size, size) bool,
        counts {"n_suns", "n_moons", "n_ears", "n_tails"} (B,) long and the states.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sts = [s if isinstance(s, SceneState) else SceneState.from_dict(s) for s in states]
    if not sts:
        raise ValueError("render_states needs at least one state")
    arrays = states_to_arrays(sts)
    imgs, masks, parts = [], [], {}
    for i in range(0, len(sts), batch_size):
        chunk = {k: v[i:i + batch_size] for k, v in arrays.items()}
        im, m, p = render_arrays(chunk, size=size, supersample=supersample, device=device, dtype=dtype)
        imgs.append(im)
        masks.append(m)
        if return_parts:
            for k, t in p.items():
                parts.setdefault(k, []).append(t)
    counts = {k: arrays[k].clone() for k in COUNT_KEYS}
    return RenderOutput(
        images=torch.cat(imgs), masks=torch.cat(masks), counts=counts, states=sts,
        parts={k: torch.cat(v) for k, v in parts.items()},
    )


def jitter_states(
    states: Sequence[SceneState], generator: np.random.Generator, *, dx: float = 0.05
) -> list[SceneState]:
    """Copies of `states` with x moved by U(-dx, dx) (kept inside X_RANGE by reflection, not clamping).

    Optional per-frame variation for training data; rendering a given state stays deterministic.
    """
    if dx < 0 or dx > (X_RANGE[1] - X_RANGE[0]) / 2:
        raise ValueError(f"dx must be in [0, {(X_RANGE[1] - X_RANGE[0]) / 2}], got {dx!r}")
    out = []
    for s in states:
        x = s.x + float(generator.uniform(-dx, dx))
        if x < X_RANGE[0]:
            x = 2 * X_RANGE[0] - x
        elif x > X_RANGE[1]:
            x = 2 * X_RANGE[1] - x
        out.append(s.replace(x=round(x, 4)))
    return out


def render_story(story, **kwargs) -> RenderOutput:
    """Render the ground-truth frames of a `Story` with states (kwargs as in `render_states`)."""
    if story.states is None:
        raise ValueError(f"story {story.story_id!r} has no states to render")
    return render_states(story.states, **kwargs)


# --------------------------------------------------------------------------------------------
# Ground-truth checks and pictures (notebooks)
# --------------------------------------------------------------------------------------------
def count_visible_parts(out: RenderOutput) -> dict[str, list[int]]:
    """Count suns, moons, ears and tails in the frames: connected components (8-connected) of each
    part's visible pixels. Needs `render_states(..., return_parts=True)`.

    Returns:
        {"n_suns", "n_moons", "n_ears", "n_tails"} -> per-frame counts, to compare with `out.counts`.
    """
    from scipy import ndimage

    if not out.parts:
        raise ValueError("no part masks: render with return_parts=True")
    eight = np.ones((3, 3), dtype=bool)
    names = {"n_suns": "sun", "n_moons": "moon", "n_ears": "ear", "n_tails": "tail"}
    return {k: [int(ndimage.label(m[0].cpu().numpy(), structure=eight)[1]) for m in out.parts[p]]
            for k, p in names.items()}


def physically_wrong_variants(state: SceneState) -> dict[str, SceneState]:
    """Named variants of `state` for the physical-constraint experiment, the normal one first."""
    sky = "n_moons" if state.time == "night" else "n_suns"
    other = "n_suns" if state.time == "night" else "n_moons"
    return {
        "normal": state.replace(n_suns=None, n_moons=None, n_ears=None, n_tails=None),
        f"two {sky[2:]}": state.replace(**{sky: 2, other: 0}, n_ears=None, n_tails=None),
        "sun and moon": state.replace(n_suns=1, n_moons=1, n_ears=None, n_tails=None),
        "three ears": state.replace(n_suns=None, n_moons=None, n_ears=3, n_tails=None),
        "one ear": state.replace(n_suns=None, n_moons=None, n_ears=1, n_tails=None),
        "no tail": state.replace(n_suns=None, n_moons=None, n_ears=None, n_tails=0),
        "two tails": state.replace(n_suns=None, n_moons=None, n_ears=None, n_tails=2),
    }


def plot_frames(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 6,
                width: float = 1.6, wrap: int = 26):
    """A matplotlib figure of (N, 3, H, W) frames in a grid, each with a wrapped title."""
    import textwrap

    import matplotlib.pyplot as plt

    n = images.shape[0]
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, (width + 0.45) * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            if titles is not None:
                ax.set_title(textwrap.fill(titles[k], wrap), fontsize=6)
    fig.tight_layout()
    return fig
