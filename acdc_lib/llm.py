"""A small chat client for OpenAI-compatible servers: bounded retries, answer validation, sqlite cache.

Shared by the LLM memory module (`acdc_lib.memory.LLMMemory`, paper Eq. 3 and Appendix D) and the
self-instruct story writer (`acdc_lib.stories_llm`, paper Appendix C).

    client = LLMClient(model="gpt-4o-mini", cache_path="data/llm_cache.sqlite")
    res = client.chat([{"role": "user", "content": "Say hi."}], temperature=0.0)

Design choices:
- Retries: the openai library's own retry loop is switched off (``max_retries=0``) and we run one
  bounded loop ourselves, because an answer that arrives fine but does not pass `validate`
  (wrong number of lines, prose) must be re-asked too, and one loop gives one honest count of
  attempts and requests for both kinds of failure.
- Cache: sqlite, keyed by the SHA-256 of (model, messages, temperature, seed, other request
  parameters, sample index). The server address and the key are not part of it, so a cache recorded
  against one server replays anywhere. Only validated answers are stored; a hit makes no request.
- Key hygiene: the key is read from the environment only (never an argument), kept in one private
  attribute, and scrubbed from every message we log, record or raise. Neither the cache nor any
  result holds it. With `base_url` and no key a fixed non-secret placeholder is sent (local servers
  ignore it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

# Sent as the key to a local server (base_url given, no key set): it is not a secret.
PLACEHOLDER_KEY = "not-a-key-local-server"
CACHE_SCHEMA = 1


class LLMError(RuntimeError):
    """Base class of the errors this module raises (their messages never contain the key)."""


class LLMConfigError(LLMError, ValueError):
    """The client cannot work as configured (no key, no server, no cache)."""


class CacheMiss(LLMError):
    """replay-only mode (or no key and no server) and the request is not in the cache."""


class LLMRequestFailed(LLMError):
    """Every attempt failed; `errors` lists why, `requests` how many reached the server."""

    def __init__(self, message: str, errors: list[str], requests: int, attempts: int):
        super().__init__(message)
        self.errors = errors
        self.requests = requests
        self.attempts = attempts


class InvalidAnswer(ValueError):
    """Raised by a `validate` callable to reject an answer (malformed, wrong length ...)."""


@dataclass
class ChatResult:
    """One validated chat answer.

    Args:
        text: the answer's text (validated when a `validate` callable was given).
        requests: requests that reached the server for this answer (0 for a cache hit; a refused
            connection does not count, a timed-out request does).
        cached: served from the cache.
        attempts: calls tried, including failed ones (0 for a cache hit).
        errors: why earlier attempts failed, one line each (key scrubbed).
        value: what `validate` returned for the accepted text (None without validate).
    """

    text: str
    requests: int
    cached: bool
    attempts: int
    errors: list[str] = field(default_factory=list)
    value: Any = None


def _retryable_errors() -> tuple[type[BaseException], ...]:
    import openai

    # APITimeoutError subclasses APIConnectionError in the openai client: timeouts and refused connections.
    return (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


class LLMClient:
    """Chat with an OpenAI-compatible server through `openai.OpenAI`, with retries and a cache.

    Args:
        model: model name sent to the server (the paper used gpt-4o-mini, Appendix D).
        base_url: an OpenAI-compatible server (e.g. "http://127.0.0.1:8000/v1"); None for OpenAI.
        api_key_env: the environment variable the key is read from (the key is never an argument).
        timeout: seconds per request.
        max_retries: extra attempts after the first (so at most 1 + max_retries calls per answer).
        cache_path: sqlite file of validated answers; None for no cache.
        replay_only: serve from the cache only; a miss raises `CacheMiss`; needs no key.
        backoff_s: sleep before retry k is backoff_s * 2**k seconds (tests pass 0).
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 3,
        cache_path: str | os.PathLike | None = None,
        replay_only: bool = False,
        backoff_s: float = 0.5,
    ):
        if not model:
            raise ValueError("model must be a non-empty model name, e.g. 'gpt-4o-mini'")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s}")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.backoff_s = float(backoff_s)
        key = os.environ.get(api_key_env) or None
        self._secret = key  # only place the key lives; used for scrubbing and by the openai client
        if replay_only and self.cache_path is None:
            raise LLMConfigError("replay_only=True needs cache_path= (the sqlite file of recorded answers)")
        if not replay_only and key is None and base_url is None and self.cache_path is None:
            raise LLMConfigError(
                f"no way to get answers: set the {api_key_env} environment variable, or pass base_url= "
                "for an OpenAI-compatible server (no key needed), or pass cache_path= with recorded "
                "answers (replay_only=True)")
        # Without key and server the cache is all there is: behave as replay-only.
        self.replay_only = bool(replay_only or (key is None and base_url is None))
        self._client = None
        if self.cache_path is not None:
            self._init_cache()

    def __repr__(self) -> str:
        return (f"LLMClient(model={self.model!r}, base_url={self.base_url!r}, timeout={self.timeout}, "
                f"max_retries={self.max_retries}, cache_path={str(self.cache_path) if self.cache_path else None!r}, "
                f"replay_only={self.replay_only}, key={'set' if self._secret else 'unset'})")

    __str__ = __repr__

    # ------------------------------------------------------------------ key hygiene
    def scrub(self, text: str) -> str:
        """`text` with the key (if any) replaced by '***'."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def _openai(self):
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                api_key=self._secret or PLACEHOLDER_KEY,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=0,  # our own loop retries (module docstring)
            )
        return self._client

    # ------------------------------------------------------------------ cache
    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.cache_path), timeout=30.0)

    def _init_cache(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, "
                        "request TEXT, text TEXT, created REAL)")
            con.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(CACHE_SCHEMA),))
        con.close()

    def request_record(self, messages: Sequence[dict], temperature: float, seed: int | None,
                       sample: int, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON-able description of one request that the cache key hashes (no key, no server)."""
        return {"model": self.model, "messages": [dict(m) for m in messages], "temperature": float(temperature),
                "seed": seed, "sample": int(sample), "params": dict(sorted(params.items()))}

    @staticmethod
    def cache_key(record: dict[str, Any]) -> str:
        """SHA-256 hex digest of the canonical JSON of a request record."""
        return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _cache_get(self, key: str) -> str | None:
        if self.cache_path is None:
            return None
        con = self._connect()
        try:
            row = con.execute("SELECT text FROM answers WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
        return None if row is None else row[0]

    def _cache_put(self, key: str, record: dict[str, Any], text: str) -> None:
        if self.cache_path is None:
            return
        con = self._connect()
        try:
            with con:
                con.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                            (key, self.model, self.scrub(json.dumps(record, ensure_ascii=False)),
                             self.scrub(text), time.time()))
        finally:
            con.close()

    # ------------------------------------------------------------------ chat
    def chat(
        self,
        messages: Sequence[dict[str, str]],
        temperature: float = 0.0,
        seed: int | None = None,
        validate: Callable[[str], Any] | None = None,
        *,
        sample: int = 0,
        retry_invalid: bool = True,
        **params: Any,
    ) -> ChatResult:
        """One chat completion, from the cache or the server, retried a bounded number of times.

        Args:
            messages: [{"role": "system"|"user"|"assistant", "content": str}, ...].
            temperature: sampling temperature sent to the server.
            seed: the server's sampling seed (None: not sent).
            validate: called on the answer text; raises `InvalidAnswer` (or ValueError) to reject it,
                otherwise its return value is kept in `ChatResult.value`. Only accepted answers are cached.
            sample: sample index, part of the cache key, so that the same request at temperature 1.0
                can be asked for several distinct samples.
            retry_invalid: re-ask when `validate` rejects an answer (False: raise at once, the caller
                retries with a new sample index).
            **params: other request parameters (e.g. max_tokens), sent and part of the cache key.
        Returns:
            ChatResult. Raises CacheMiss (replay-only, not cached), LLMRequestFailed (attempts exhausted
            or a non-retryable error such as 400/401).
        """
        if not messages or any(not isinstance(m, dict) or "role" not in m or "content" not in m for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        record = self.request_record(messages, temperature, seed, sample, params)
        key = self.cache_key(record)
        hit = self._cache_get(key)
        if hit is not None:
            try:
                value = validate(hit) if validate is not None else None
            except ValueError as e:  # recorded under an older validator: ask again
                log.warning("cached answer rejected by validate (%s); asking again", self.scrub(str(e)))
            else:
                return ChatResult(text=hit, requests=0, cached=True, attempts=0, value=value)
        if self.replay_only:
            raise CacheMiss(
                f"request not in the cache {self.cache_path} (replay-only: model {self.model!r}, sample {sample}); "
                f"set {self.api_key_env} or pass base_url= to ask a server")

        import openai

        retryable = _retryable_errors()
        errors: list[str] = []
        requests = 0
        attempts = 0
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": temperature, **params}
        if seed is not None:
            kwargs["seed"] = seed
        for attempt in range(self.max_retries + 1):
            if attempt > 0 and self.backoff_s > 0:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            attempts += 1
            try:
                resp = self._openai().chat.completions.create(**kwargs)
            except retryable as e:
                # A refused connection never reached the server; a timeout did.
                reached = isinstance(e, (openai.APITimeoutError, openai.APIStatusError))
                requests += int(reached)
                errors.append(self.scrub(f"attempt {attempt + 1}: {type(e).__name__}: {e}"))
                log.warning("LLM request failed (%s), %d of %d attempts used", errors[-1], attempts, self.max_retries + 1)
                continue
            except openai.APIStatusError as e:  # 400, 401, 404 ...: asking again will not help
                requests += 1
                errors.append(self.scrub(f"attempt {attempt + 1}: {type(e).__name__}: {e}"))
                raise LLMRequestFailed(self.scrub(f"request refused by the server: {errors[-1]}"),
                                       errors, requests, attempts) from None
            requests += 1
            text = _answer_text(resp)
            if text is None:
                errors.append(f"attempt {attempt + 1}: malformed response: no message content")
                continue
            if validate is not None:
                try:
                    value = validate(text)
                except ValueError as e:
                    errors.append(self.scrub(f"attempt {attempt + 1}: answer rejected: {e}"))
                    log.warning("LLM answer rejected (%s)", errors[-1])
                    if not retry_invalid:
                        raise LLMRequestFailed(errors[-1], errors, requests, attempts) from None
                    continue
            else:
                value = None
            self._cache_put(key, record, text)
            return ChatResult(text=text, requests=requests, cached=False, attempts=attempts, errors=errors, value=value)
        raise LLMRequestFailed(
            f"no valid answer after {attempts} attempts: " + "; ".join(errors[-3:]), errors, requests, attempts)


def _answer_text(resp: Any) -> str | None:
    try:
        content = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
