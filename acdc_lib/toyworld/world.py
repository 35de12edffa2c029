"""The vocabulary of the toy story world: places, times, species, actions, names, and one frame's state.

Everything another module needs to know about the world lives here, as plain tuples, dicts and
frozen dataclasses, so the renderer (`render.py`), the story grammar (`grammar.py`), the rule-based
memory module and the evaluators agree on one set of names. These names are a contract: other
modules (and committed story files) use them as strings, so they are never renamed.

A frame is described by a `SceneState`: where (place), when (time: "day" has one sun, "night" one
moon), who (a named character of one species, with a gender for pronouns), what (an action / pose),
where in the picture (x, y, facing), and the countable physical facts (suns, moons, ears, tails),
which are normal by default and can be set to impossible values on request (two moons, three ears,
no tail) for the physical-constraint experiment.

World version 2 adds what no sentence ever states and only the frames carry: the character's
identity (a coat marking and the colour of its collar, drawn once per story) and a background layout
variant per (story, place) (where the trees, the hill, the boat or the bench are), and it puts the
character's x on a grid of whole-pixel positions that running moves along. Their defaults (plain coat,
no collar, layout 0) draw exactly the version-1 frames, so version-1 story files still render.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

# --------------------------------------------------------------------------------------------
# Places. Names never encode the time of day ("night forest" is the forest at night).
# --------------------------------------------------------------------------------------------
PLACES: tuple[str, ...] = ("meadow", "forest", "beach", "snowy field", "garden", "park")


@dataclass(frozen=True)
class PlaceLook:
    """How a place is drawn and named.

    Args:
        ground: RGB in [0, 1] of the ground by day (darkened at night by the renderer).
        horizon: fraction of the image height where the ground starts (0 = top, 1 = bottom).
        props: simple props drawn on the place, from PROPS.
        preposition: "in" / "on", as in "on the beach".
    """

    ground: tuple[float, float, float]
    horizon: float
    props: tuple[str, ...]
    preposition: str


PROPS: tuple[str, ...] = ("grass", "trees", "sea", "snow", "flowers", "bench", "path")

PLACE_LOOKS: dict[str, PlaceLook] = {
    "meadow": PlaceLook(ground=(0.55, 0.85, 0.25), horizon=0.50, props=("grass",), preposition="in"),
    "forest": PlaceLook(ground=(0.10, 0.40, 0.12), horizon=0.55, props=("trees",), preposition="in"),
    "beach": PlaceLook(ground=(0.95, 0.85, 0.55), horizon=0.60, props=("sea",), preposition="on"),
    "snowy field": PlaceLook(ground=(0.97, 0.97, 1.00), horizon=0.50, props=("snow",), preposition="in"),
    "garden": PlaceLook(ground=(0.45, 0.30, 0.15), horizon=0.55, props=("flowers",), preposition="in"),
    "park": PlaceLook(ground=(0.30, 0.65, 0.30), horizon=0.55, props=("bench", "path"), preposition="in"),
}

# --------------------------------------------------------------------------------------------
# Time of day: "day" shows one sun, "night" one moon.
# --------------------------------------------------------------------------------------------
TIMES: tuple[str, ...] = ("day", "night")
TIME_PHRASES: dict[str, str] = {"day": "during the day", "night": "at night"}
SKY_COLORS: dict[str, tuple[float, float, float]] = {"day": (0.55, 0.78, 0.98), "night": (0.05, 0.06, 0.22)}
NIGHT_GROUND_FACTOR = 0.5  # the ground at night is this fraction of its day colour

# --------------------------------------------------------------------------------------------
# Species. Each differs from the others in body colour AND in shape, ears or tail, so that a
# small probe separates them at 32x32 (checked in notebook 01 / the render tests).
# --------------------------------------------------------------------------------------------
SPECIES: tuple[str, ...] = ("fox", "beagle", "rabbit", "owl", "corgi", "cat", "pig", "bear")

BODY_SHAPES: tuple[str, ...] = ("long", "round", "tall")
EAR_STYLES: tuple[str, ...] = ("pointed", "floppy", "long", "tufts", "round")
TAIL_STYLES: tuple[str, ...] = ("bushy", "thin", "puff", "fan", "stub", "curly")


@dataclass(frozen=True)
class SpeciesLook:
    """How a species is drawn.

    Args:
        body_color: RGB in [0, 1] of the body and head.
        accent_color: RGB in [0, 1] of the ears, tail tip or belly patch (species-specific).
        shape: one of BODY_SHAPES ("long": a dog-like body; "round": a ball; "tall": upright oval).
        ears: one of EAR_STYLES.
        tail: one of TAIL_STYLES.
        legs: whether legs are drawn (owls stand on short feet, drawn as legs too).
    """

    body_color: tuple[float, float, float]
    accent_color: tuple[float, float, float]
    shape: str
    ears: str
    tail: str
    legs: bool = True


SPECIES_LOOKS: dict[str, SpeciesLook] = {
    "fox": SpeciesLook((0.93, 0.40, 0.05), (1.00, 1.00, 1.00), shape="long", ears="pointed", tail="bushy"),
    "beagle": SpeciesLook((0.97, 0.95, 0.88), (0.62, 0.36, 0.12), shape="long", ears="floppy", tail="thin"),
    "rabbit": SpeciesLook((0.68, 0.68, 0.72), (1.00, 0.70, 0.75), shape="round", ears="long", tail="puff"),
    "owl": SpeciesLook((0.45, 0.32, 0.62), (1.00, 0.85, 0.30), shape="tall", ears="tufts", tail="fan"),
    "corgi": SpeciesLook((0.98, 0.78, 0.25), (1.00, 1.00, 1.00), shape="long", ears="pointed", tail="stub"),
    "cat": SpeciesLook((0.24, 0.24, 0.30), (0.95, 0.90, 0.20), shape="long", ears="pointed", tail="thin"),
    "pig": SpeciesLook((0.98, 0.58, 0.70), (0.85, 0.35, 0.50), shape="round", ears="floppy", tail="curly"),
    "bear": SpeciesLook((0.40, 0.22, 0.07), (0.20, 0.10, 0.03), shape="round", ears="round", tail="stub"),
}

# --------------------------------------------------------------------------------------------
# Actions (poses) with the verb forms the grammar and the captions use.
# --------------------------------------------------------------------------------------------
ACTIONS: tuple[str, ...] = ("stand", "sit", "jump", "run", "lie", "sniff")


@dataclass(frozen=True)
class Verb:
    """The forms of one action's verb phrase: "sit", "sits", "sat", "sitting"."""

    base: str
    present: str
    past: str
    ing: str


VERBS: dict[str, Verb] = {
    "stand": Verb("stand", "stands", "stood", "standing"),
    "sit": Verb("sit", "sits", "sat", "sitting"),
    "jump": Verb("jump", "jumps", "jumped", "jumping"),
    "run": Verb("run", "runs", "ran", "running"),
    "lie": Verb("lie down", "lies down", "lay down", "lying down"),
    "sniff": Verb("sniff the ground", "sniffs the ground", "sniffed the ground", "sniffing the ground"),
}

# --------------------------------------------------------------------------------------------
# Names, each with a gender for pronouns. No name is also a species, place or action word.
# --------------------------------------------------------------------------------------------
GENDERS: tuple[str, ...] = ("male", "female")
PRONOUNS: dict[str, dict[str, str]] = {
    "male": {"subject": "he", "object": "him", "possessive": "his"},
    "female": {"subject": "she", "object": "her", "possessive": "her"},
}
NAMES: dict[str, str] = {
    "Max": "male", "Luna": "female", "Benny": "male", "Bella": "female",
    "Milo": "male", "Daisy": "female", "Oscar": "male", "Ruby": "female",
    "Leo": "male", "Rosie": "female", "Toby": "male", "Coco": "female",
}

FACINGS: tuple[str, ...] = ("left", "right")

# --------------------------------------------------------------------------------------------
# Identity and layout (world version 2): never in any sentence or caption, kept by the frames.
# --------------------------------------------------------------------------------------------
WORLD_VERSION = 2
# Coat markings: "saddle" paints the upper half of the body, "mask" the head, in a colour that contrasts
# with the species' body colour (narrower bands on the body were misread at 32x32).
MARKINGS: tuple[str, ...] = ("plain", "saddle", "mask")
# Collar colours; "none" (no collar) is the version-1 look and is never drawn by the version-2 grammar.
ACCESSORIES: tuple[str, ...] = ("none", "red", "blue", "green")
ACCESSORY_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.05, 0.10), "blue": (0.10, 0.30, 0.95), "green": (0.10, 0.75, 0.20)}
N_LAYOUTS = 3  # background layout variants per place (0 is the version-1 layout)

# Position bounds (fractions of the image): the character's centre x, and y the line its feet
# stand on (0 = top, 1 = bottom). Values outside are refused, not clamped.
X_RANGE: tuple[float, float] = (10 / 32, 22 / 32)
# The version-2 grammar puts x on this grid of whole pixels (2 px apart at 32x32, 12 px from end to end
# against version 1's 9.6); running moves it by RUN_CELLS cells (4 px, one VQ code) in the facing
# direction, turning at the edges. A normal character never touches the frame's border on the grid.
X_POSITIONS: tuple[float, ...] = tuple((10 + 2 * k) / 32 for k in range(7))
RUN_CELLS = 2
Y_RANGE: tuple[float, float] = (0.75, 0.92)
DEFAULT_Y = 0.85

# Physical counts of a normal frame: one sun or moon, two ears, one tail.
NORMAL_EARS = 2
NORMAL_TAILS = 1
MAX_COUNT = 3  # the renderer draws up to this many suns, moons, ears or tails, all inside the frame


def normal_celestials(time: str) -> tuple[int, int]:
    """(n_suns, n_moons) of a physically normal frame at `time`: (1, 0) by day, (0, 1) at night."""
    _check_choice("time", time, TIMES)
    return (1, 0) if time == "day" else (0, 1)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


# --------------------------------------------------------------------------------------------
# The state of one frame
# --------------------------------------------------------------------------------------------
@dataclass
class SceneState:
    """Everything needed to draw one frame of the toy world, and its ground truth.

    Args:
        place: one of PLACES.
        time: one of TIMES ("day": a sun; "night": a moon).
        name: the character's name (one of NAMES for grammar stories; any non-empty string is drawn
            the same way, the name is not visible).
        species: one of SPECIES.
        gender: "male" or "female" (pronouns only; not drawn).
        action: one of ACTIONS.
        x: horizontal centre of the character, fraction of the width, in X_RANGE.
        y: the line the character's feet stand on, fraction of the height (0 top), in Y_RANGE;
            a jumping character is drawn above it.
        facing: "left" or "right".
        n_suns, n_moons, n_ears, n_tails: the countable physical facts. None (the default) means
            "normal": one sun by day or one moon at night, two ears, one tail. Other values (0 ..
            MAX_COUNT) draw a physically wrong frame on purpose.
    """

    place: str
    time: str
    name: str
    species: str
    gender: str
    action: str
    x: float = 0.5
    y: float = DEFAULT_Y
    facing: str = "right"
    n_suns: int | None = None
    n_moons: int | None = None
    n_ears: int | None = None
    n_tails: int | None = None
    marking: str = "plain"
    accessory: str = "none"
    layout: int = 0

    def __post_init__(self) -> None:
        suns, moons = normal_celestials(self.time) if self.time in TIMES else (None, None)
        if self.n_suns is None:
            self.n_suns = suns
        if self.n_moons is None:
            self.n_moons = moons
        if self.n_ears is None:
            self.n_ears = NORMAL_EARS
        if self.n_tails is None:
            self.n_tails = NORMAL_TAILS
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is not allowed."""
        _check_choice("place", self.place, PLACES)
        _check_choice("time", self.time, TIMES)
        _check_choice("species", self.species, SPECIES)
        _check_choice("gender", self.gender, GENDERS)
        _check_choice("action", self.action, ACTIONS)
        _check_choice("facing", self.facing, FACINGS)
        _check_choice("marking", self.marking, MARKINGS)
        _check_choice("accessory", self.accessory, ACCESSORIES)
        if isinstance(self.layout, bool) or not isinstance(self.layout, int) or not 0 <= self.layout < N_LAYOUTS:
            raise ValueError(f"layout must be an int in [0, {N_LAYOUTS - 1}], got {self.layout!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for key, lo_hi in (("x", X_RANGE), ("y", Y_RANGE)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo_hi[0] <= v <= lo_hi[1]:
                raise ValueError(f"{key} must be a number in [{lo_hi[0]}, {lo_hi[1]}], got {v!r}")
        for key in ("n_suns", "n_moons", "n_ears", "n_tails"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
                raise ValueError(f"{key} must be an int in [0, {MAX_COUNT}], got {v!r}")
        if self.n_suns + self.n_moons > MAX_COUNT:
            raise ValueError(
                f"n_suns + n_moons must be <= {MAX_COUNT} (the sky has {MAX_COUNT} slots), "
                f"got {self.n_suns} + {self.n_moons}"
            )

    @property
    def pronoun(self) -> str:
        """The subject pronoun of the character: "he" or "she"."""
        return PRONOUNS[self.gender]["subject"]

    @property
    def is_physically_valid(self) -> bool:
        """True when the counts are those of a normal frame (one sun xor one moon, 2 ears, 1 tail)."""
        return (self.n_suns, self.n_moons) == normal_celestials(self.time) and (
            self.n_ears == NORMAL_EARS and self.n_tails == NORMAL_TAILS
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with every field (counts filled in)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SceneState":
        """Build a state from `to_dict`'s output; unknown or missing required keys raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a scene state must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown scene-state field(s) {unknown}; allowed: {sorted(known)}")
        missing = [k for k in STATE_REQUIRED if k not in d]
        if missing:
            raise ValueError(f"scene state is missing required field(s) {missing}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "SceneState":
        """A copy with `changes` applied (validated)."""
        d = self.to_dict()
        d.update(changes)
        return SceneState(**d)


STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SceneState))
STATE_REQUIRED: tuple[str, ...] = ("place", "time", "name", "species", "gender", "action")
# What only the frames carry: identity (per story, or per (story, place) for the layout) and the
# motion state (x on the grid, facing).
IDENTITY_ATTRIBUTES: tuple[str, ...] = ("marking", "accessory", "layout")
MOTION_ATTRIBUTES: tuple[str, ...] = ("x_cell", "facing")
FRAME_ONLY_ATTRIBUTES: tuple[str, ...] = IDENTITY_ATTRIBUTES + MOTION_ATTRIBUTES


def x_cell(x: float) -> int:
    """Index of the X_POSITIONS grid cell nearest to x (x = 0.3125 -> 0 ... 0.6875 -> 6)."""
    return min(range(len(X_POSITIONS)), key=lambda k: abs(X_POSITIONS[k] - x))


def place_phrase(place: str) -> str:
    """ "in the meadow", "on the beach" ... """
    _check_choice("place", place, PLACES)
    return f"{PLACE_LOOKS[place].preposition} the {place}"


def explicit_caption(state: SceneState) -> str:
    """The fully explicit caption of one frame: who, which species, doing what, where and when.

    Example: "Max the corgi sits in the snowy field at night." This is the text the diffusion model
    is trained on for single frames and the target of the inverse referential extension.
    """
    verb = VERBS[state.action].present
    return f"{state.name} the {state.species} {verb} {place_phrase(state.place)} {TIME_PHRASES[state.time]}."
