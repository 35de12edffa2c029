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


_HUB_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (HF_ENDPOINT, default huggingface.co) answers a TCP connection; asked once
    per process. Without it a load by Hub id reads the local cache only, so a missing model fails at once
    instead of after huggingface_hub's five retries per file."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection says nothing: let huggingface_hub try through it
    if endpoint not in _HUB_REACHABLE:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            _HUB_REACHABLE[endpoint] = True
        except OSError:
            _HUB_REACHABLE[endpoint] = False
    return _HUB_REACHABLE[endpoint]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


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
    hub_id = not Path(str(model_id_or_path)).expanduser().exists()
    cache_only = hub_id and (_offline() or not hub_reachable())
    if cache_only:  # a Hub id with no network: the local cache only, one clear line when it is not there
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return loader(str(model_id_or_path), **kwargs)
    except (OSError, EnvironmentError) as err:
        if cache_only:
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ModelNotAvailableError(
                f"cannot load {what} {str(model_id_or_path)!r}: it is not in the Hugging Face cache ({HF_HUB_CACHE}) "
                f"and {'HF_HUB_OFFLINE is set' if _offline() else 'the Hub cannot be reached from this machine'}; "
                f"download it where there is network (`hf download {model_id_or_path}`, the same cache; or "
                f"save_pretrained to a folder) and copy it here, or pass `{param}` as a local folder") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotAvailableError(
            f"cannot load {what} from {str(model_id_or_path)!r} ({first}); {hint}") from None
