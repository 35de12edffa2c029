"""Loading models from a Hub id or a saved folder, with one clear error when the weights are not here."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ModelNotAvailableError"]


class ModelNotAvailableError(OSError):
    """A model id or folder could not be loaded (no weights on this machine, wrong path or layout)."""


def _looks_like_local_path(name: str | os.PathLike) -> bool:
    text = str(name)
    return isinstance(name, Path) or os.path.isabs(text) or text.startswith(("./", "../", "~", ".\\"))


def _load_or_explain(loader, model_id_or_path, what: str, param: str, example: str = "", **kwargs):
    """Call loader(model_id_or_path, **kwargs); turn a missing model into ONE clear error.

    Args:
        loader: e.g. `AutoPipelineForImage2Image.from_pretrained`.
        model_id_or_path: what the user passed.
        what: the thing being loaded, for the message ("a diffusers MotionAdapter").
        param: the argument the user should change.
        example: an example of a valid value, appended to the message.
    """
    hint = (f"pass `{param}`: a local folder written by save_pretrained, or a Hugging Face Hub id whose "
            f"weights are in the local cache or reachable from this machine{example}; "
            "set HF_HUB_OFFLINE=1 to fail fast without a network")
    if _looks_like_local_path(model_id_or_path) and not Path(model_id_or_path).expanduser().exists():
        raise ModelNotAvailableError(f"cannot load {what} from {str(model_id_or_path)!r}: no such folder; {hint}")
    try:
        return loader(str(model_id_or_path), **kwargs)
    except (OSError, EnvironmentError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotAvailableError(
            f"cannot load {what} from {str(model_id_or_path)!r} ({first}); {hint}") from None
