"""LLMClient against a fake OpenAI-compatible server on 127.0.0.1: retries, cache, replay, key hygiene."""
from __future__ import annotations

import logging
import sqlite3

import pytest

from acdc_lib.llm import (
    PLACEHOLDER_KEY,
    CacheMiss,
    InvalidAnswer,
    LLMClient,
    LLMConfigError,
    LLMRequestFailed,
)
from fake_openai import FakeOpenAI, fake_server, refused_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.network
KEY = "sk-test-DO-NOT-LEAK-123"
MSG = [{"role": "user", "content": "Say hi."}]


def client_for(srv, tmp_path=None, **kw):
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff_s", 0.0)
    cache = (tmp_path / "cache.sqlite") if tmp_path is not None else None
    return LLMClient(base_url=srv.url if srv is not None else None, cache_path=cache, **kw)


def cache_rows(path) -> int:
    con = sqlite3.connect(str(path))
    try:
        return con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    finally:
        con.close()


def test_no_key_no_server_no_cache_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMConfigError) as e:
        LLMClient()
    msg = str(e.value)
    assert "OPENAI_API_KEY" in msg and "base_url" in msg and "cache_path" in msg
    with pytest.raises(LLMConfigError, match="cache_path"):
        LLMClient(replay_only=True)


def test_local_server_without_key_sends_placeholder(monkeypatch, fake_server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake_server.push_ok("hello")
    res = client_for(fake_server).chat(MSG)
    assert (res.text, res.requests, res.attempts, res.cached) == ("hello", 1, 1, False)
    headers = {k.lower(): v for k, v in fake_server.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"
    body = fake_server.requests[0]["body"]
    assert body["model"] == "gpt-4o-mini" and body["messages"] == MSG and body["temperature"] == 0.0


@pytest.mark.parametrize("script, kind", [
    (lambda s: s.push_status(429), "RateLimitError"),
    (lambda s: s.push_status(500), "InternalServerError"),
    (lambda s: s.push_status(503), "InternalServerError"),
    (lambda s: s.push_slow(1.0), "APITimeoutError"),
    (lambda s: s.push_no_content(), "no message content"),
])
def test_transient_failure_is_retried_then_succeeds(fake_server, script, kind):
    script(fake_server)
    fake_server.push_ok("fine")
    res = client_for(fake_server, timeout=0.3).chat(MSG)
    assert res.text == "fine"
    assert res.attempts == 2 and res.requests == 2 and fake_server.count == 2
    assert len(res.errors) == 1 and kind in res.errors[0]


def test_retries_are_bounded(fake_server):
    for _ in range(10):
        fake_server.push_status(429)
    with pytest.raises(LLMRequestFailed) as e:
        client_for(fake_server, max_retries=2).chat(MSG)
    assert fake_server.count == 3 and e.value.attempts == 3 and e.value.requests == 3
    assert all("RateLimitError" in err for err in e.value.errors)


def test_client_errors_are_not_retried(fake_server):
    fake_server.push_status(400, "bad request").push_ok("never reached")
    with pytest.raises(LLMRequestFailed, match="BadRequestError"):
        client_for(fake_server).chat(MSG)
    assert fake_server.count == 1


def test_refused_connection_is_retried_and_reaches_no_server():
    c = LLMClient(base_url=refused_url(), timeout=1.0, max_retries=2, backoff_s=0.0)
    with pytest.raises(LLMRequestFailed) as e:
        c.chat(MSG)
    assert e.value.attempts == 3 and e.value.requests == 0
    assert all("APIConnectionError" in err for err in e.value.errors)


def test_rejected_answers_are_retried_and_never_cached(fake_server, tmp_path):
    def two_lines(text):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) != 2:
            raise InvalidAnswer(f"expected 2 lines, got {len(lines)}")
        return lines

    fake_server.push_ok("only one line").push_ok("a\nb")
    c = client_for(fake_server, tmp_path)
    res = c.chat(MSG, validate=two_lines)
    assert res.value == ["a", "b"] and res.attempts == 2 and "expected 2 lines, got 1" in res.errors[0]
    assert cache_rows(tmp_path / "cache.sqlite") == 1

    # retry_invalid=False: the caller handles it (a new sample index); nothing is cached.
    fake_server.push_ok("still one line")
    with pytest.raises(LLMRequestFailed, match="expected 2 lines"):
        c.chat(MSG, validate=two_lines, sample=1, retry_invalid=False)
    assert fake_server.count == 3 and cache_rows(tmp_path / "cache.sqlite") == 1


def test_cache_hit_makes_no_request_and_sample_index_asks_again(fake_server, tmp_path):
    fake_server.responder = lambda body: f"answer {len(fake_server.requests)}"
    c = client_for(fake_server, tmp_path)
    first = c.chat(MSG, temperature=1.0, seed=7)
    again = client_for(fake_server, tmp_path).chat(MSG, temperature=1.0, seed=7)  # a new client, same file
    assert fake_server.count == 1
    assert again.text == first.text and again.cached and again.requests == 0 and again.attempts == 0
    other = c.chat(MSG, temperature=1.0, seed=7, sample=1)
    assert fake_server.count == 2 and other.text != first.text and not other.cached
    # every part of the request is in the key: another temperature, seed or message is a miss
    c.chat(MSG, temperature=0.5, seed=7)
    c.chat(MSG, temperature=1.0, seed=8)
    c.chat([{"role": "user", "content": "Say bye."}], temperature=1.0, seed=7)
    assert fake_server.count == 5


def test_replay_only_needs_no_key_and_fails_clearly_on_a_miss(monkeypatch, fake_server, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake_server.push_ok("recorded")
    client_for(fake_server, tmp_path).chat(MSG)
    replay = LLMClient(cache_path=tmp_path / "cache.sqlite", replay_only=True)
    assert replay.chat(MSG).text == "recorded"
    with pytest.raises(CacheMiss, match="not in the cache"):
        replay.chat([{"role": "user", "content": "never asked"}])
    # no key and no server but a cache: the same replay behaviour without asking for it
    implicit = LLMClient(cache_path=tmp_path / "cache.sqlite")
    assert implicit.replay_only and implicit.chat(MSG).text == "recorded"
    assert fake_server.count == 1


def test_key_never_leaks(monkeypatch, fake_server, tmp_path, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    # a server that echoes the key in its error message: we must scrub it
    fake_server.push_status(500, f"invalid api key {KEY}").push_ok("ok")
    c = client_for(fake_server, tmp_path)
    res = c.chat(MSG)
    headers = {k.lower(): v for k, v in fake_server.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {KEY}"  # it is sent, to the server only
    assert "***" in res.errors[0]
    for text in (repr(c), str(c), repr(res), caplog.text):
        assert KEY not in text
    assert KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()
    fake_server.push_status(400, f"bad key {KEY}")
    with pytest.raises(LLMRequestFailed) as e:
        c.chat(MSG, sample=3)
    assert KEY not in str(e.value) and all(KEY not in err for err in e.value.errors)
