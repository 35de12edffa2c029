"""The embedded toy story world: vocabulary (`world`), renderer (`render`), story grammar (`grammar`),
its story files and variants (`stories`), the fixed splits (`splits`) and the rule memory's words
(`vocabulary`).

Import the submodules directly (`from acdc_lib.toyworld.render import render_states`); this package
re-exports only the vocabulary, which has no heavy dependencies.
"""
from acdc_lib.toyworld.world import (  # noqa: F401
    ACTIONS,
    NAMES,
    PLACES,
    SPECIES,
    TIMES,
    SceneState,
    explicit_caption,
)
