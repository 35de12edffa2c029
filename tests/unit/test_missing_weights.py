"""A model that is not on this machine: one line naming it, where it was looked for and how to get it; no
retries against an unreachable Hub and no traceback (acdc_lib.correctors.loading, the generate command)."""
from __future__ import annotations

import time

import pytest

from acdc_lib.correctors import loading
from acdc_lib.correctors.loading import ModelNotAvailableError, _load_or_explain


def test_a_hub_id_without_network_reads_the_cache_only(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    calls = []

    def loader(name, **kw):
        calls.append(kw)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    with pytest.raises(ModelNotAvailableError) as err:
        _load_or_explain(loader, "someone/not-here", "a Janus model", "model_id")
    assert calls == [{"local_files_only": True}]  # never asked the network, so nothing to retry
    msg = str(err.value)
    assert "\n" not in msg and "'someone/not-here'" in msg and "a Janus model" in msg
    assert "Hugging Face cache (" in msg and "cannot be reached" in msg and "hf download someone/not-here" in msg
    # a reachable Hub: the loader may download (local_files_only is not forced)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(ModelNotAvailableError):
        _load_or_explain(loader, "someone/not-here", "a Janus model", "model_id")
    assert calls[-1] == {}
    # HF_HUB_OFFLINE says so in the message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE is set"):
        _load_or_explain(loader, "someone/not-here", "a Janus model", "model_id")
    # a local folder is loaded as it is
    assert _load_or_explain(lambda name, **kw: (name, kw), tmp_path, "x", "model_id") == (str(tmp_path), {})


def test_the_hub_probe_connects_once_and_trusts_a_proxy(monkeypatch):
    import socket

    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    tries = []

    def refuse(address, timeout=None):
        tries.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(loading, "_HUB_REACHABLE", {})
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443")
    assert loading.hub_reachable() is False and loading.hub_reachable() is False
    assert tries == [("hub.example", 8443)]  # asked once per process
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert loading.hub_reachable() is True


def test_generate_says_in_one_line_that_a_model_is_missing(monkeypatch, tmp_path, capsys):
    from acdc_lib.generate import main

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.perf_counter()
    code = main(["Max the corgi was in the park.", "--arm", "janus", "--arm-id", "someone/janus-not-here",
                 "--correct", "none", "--out", str(tmp_path / "out")])
    assert code == 2 and time.perf_counter() - t0 < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "someone/janus-not-here" in err[0] and "hf download" in err[0]
    assert "Traceback" not in err[0]


def test_runs_prints_the_missing_model_not_the_notebooks_traceback(monkeypatch, tmp_path, capsys):
    from papermill.exceptions import PapermillExecutionError

    from acdc_lib import runs
    from acdc_lib.io import REPO_ROOT

    line = "cannot load a Janus model 'someone/not-here': it is not in the Hugging Face cache (/x)"

    def execute(*a, **kw):
        raise PapermillExecutionError(7, 3, "parts = build_parts(...)", "ModelNotAvailableError", line,
                                      ["Traceback (most recent call last):", "  File ...", "ModelNotAvailableError"])

    monkeypatch.setattr(runs, "execute", execute)
    code = runs.main([str(REPO_ROOT / "papermill_runs" / "gpu-janus-sd15.yaml"), "--out-root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"[runs] error: {line}"]
