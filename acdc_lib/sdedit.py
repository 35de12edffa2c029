"""SDEdit correction (Eq. 2): the correctors under their first module's name.

The correctors live in `acdc_lib.correctors`, one module per kind (pipeline, unet, inpaint, video, with
the shared schedule, input checks and loading beside them). This module re-exports every name it
used to define, so `from acdc_lib.sdedit import PipelineCorrector` and the like keep working.
"""
from acdc_lib.correctors import *  # noqa: F401,F403
from acdc_lib.correctors import __all__  # noqa: F401
# Helpers the backends and experiments import from here.
from acdc_lib.correctors.inputs import _check_pixels, _resize  # noqa: F401
from acdc_lib.correctors.loading import _load_or_explain, _looks_like_local_path  # noqa: F401
from acdc_lib.correctors.pipeline import _PipelineWrapper  # noqa: F401
from acdc_lib.correctors.schedule import _check_call, _ddim_from, _step_kwargs  # noqa: F401
