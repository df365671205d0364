"""The OpenAI-compatible logprob judge (`openai:MODEL`, `openai:MODEL@URL`).

One chat completion per (answer, judge prompt): temperature 0, max_tokens 1, logprobs with the top 20
alternatives, seed 0; the score comes from the top logprobs (logprobs.py). Requests run on the
`openai` AsyncOpenAI client with `concurrency` in flight (default 32), a per-request timeout and our
own bounded retries (the client's are off): timeouts, connection errors, 408 / 409 / 429 and 5xx are
retried with exponential backoff and jitter, honouring Retry-After / retry-after-ms. A response that
is not valid JSON, has no choices or no logprobs is unscorable with the error recorded (never
dropped, never cached). Two shortcuts keep a dead endpoint cheap: an authentication / permission /
unknown-model error stops further requests, and so does an item that used up its retries on
connection errors (the rest are marked unscorable with the reason, without calls).

Base URL: the `@URL` of the spec, else OPENAI_BASE_URL, else https://api.openai.com/v1. API key:
OPENAI_API_KEY only (read when requests start, never stored in the identity, cache or files); a
loopback base URL (localhost, 127.x, ::1) may run without one (a placeholder is sent).
`check()` raises JudgeError for a missing key; the pipeline calls it before generating."""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import math
import os
import random
import re
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from evilbench.eval.judges.accounting import Accounting
from evilbench.eval.judges.base import CachedJudge, JudgeError
from evilbench.eval.types import JudgeItem

DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
LOOPBACK_PLACEHOLDER_KEY = "no-key-needed-for-loopback"
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
FATAL_STATUS = frozenset({401, 403, 404})


def _http_response_class():
    try:
        import httpx2 as httpx  # the HTTP library of recent openai releases
    except ImportError:
        import httpx
    return httpx.Response


TRANSPORTS = ("auto", "aiohttp", "httpx")
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _http_client(transport: str):
    """The client's HTTP transport: aiohttp (about half the client CPU per request of the default at 32
    in flight) when openai's aiohttp extra is usable, else openai's default (None). "auto" keeps the
    default when a proxy is configured in the environment (the aiohttp transport ignores it)."""
    import openai

    proxied = any(os.environ.get(v) for v in PROXY_ENV)
    if transport == "httpx" or (transport == "auto" and proxied) or not hasattr(openai, "DefaultAioHttpClient"):
        if transport == "aiohttp":
            raise JudgeError("transport 'aiohttp' needs an openai release with DefaultAioHttpClient")
        return None
    try:
        return openai.DefaultAioHttpClient()
    except (RuntimeError, ImportError) as e:
        if transport == "aiohttp":
            raise JudgeError(f"transport 'aiohttp' is not available: {e}") from None
        return None


def _connection_failure(e: BaseException) -> str | None:
    """The OS-level connection failure (refused, reset, unknown host) behind a client error, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, socket.gaierror)):
            return f"{type(e).__name__}: {e}"
        e = e.__cause__ or e.__context__
    return None


def parse_spec(rest: str) -> tuple[str, str | None]:
    """"MODEL" or "MODEL@URL" (URL with http:// or https://) -> (model, url or None)."""
    m = re.match(r"^(.+?)@(https?://\S+)$", rest)
    model, url = (m.group(1), m.group(2)) if m else (rest, None)
    if not model.strip() or re.search(r"@\w+://", model):
        raise JudgeError(f"bad openai judge spec 'openai:{rest}': use openai:MODEL or openai:MODEL@http(s)://HOST/v1")
    return model, url


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL without user:password@ and query string (nothing secret goes into identities)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{p.port}" if p.port else "")
    return urlunsplit((p.scheme, netloc, p.path.rstrip("/"), "", ""))


def retry_after_seconds(headers) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(ra)
            return max(0.0, dt.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def parse_response(text: str) -> dict:
    """The raw read-out of a chat completion body, or {"error": ...} for garbage / empty / truncated."""
    try:
        data = json.loads(text)
    except ValueError as e:
        return {"error": f"invalid JSON response ({e.msg} at char {e.pos} of {len(text)})"}
    if not isinstance(data, dict):
        return {"error": "response is not a JSON object"}
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return {"error": "response has no choices"}
    logprobs = choices[0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content or not isinstance(content, list) or not isinstance(content[0], dict):
        return {"error": "response has no logprobs content"}
    top = content[0].get("top_logprobs")
    if not top or not isinstance(top, list):
        return {"error": "response has no top_logprobs"}
    raw = []
    for e in top:
        if not (isinstance(e, dict) and isinstance(e.get("token"), str) and isinstance(e.get("logprob"), (int, float))):
            return {"error": "malformed top_logprobs entry"}
        lp = float(e["logprob"])
        if math.isnan(lp) or lp > 1e-6:
            return {"error": f"invalid logprob {e['logprob']!r} in top_logprobs"}
        if lp == -math.inf:
            continue  # probability 0 (and not representable in JSON)
        raw.append([e["token"], min(lp, 0.0)])
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return {"raw": raw, "snapshot": data.get("model") if isinstance(data.get("model"), str) else None,
            "usage": {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                      "completion_tokens": int(usage.get("completion_tokens") or 0)}}


class OpenAIJudge(CachedJudge):
    readout = "single-token"

    def __init__(self, model: str, base_url: str | None = None, *, spec: str | None = None,
                 concurrency: int = 32, timeout: float = 60.0, max_retries: int = 6,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, retry_after_max: float = 300.0,
                 top_logprobs: int = 20, seed: int = 0, cache=None, prices: dict | None = None,
                 transport: str = "auto", min_mass: float | None = None):
        kw = {} if min_mass is None else {"min_mass": min_mass}
        spec = spec or f"openai:{model}" + (f"@{base_url}" if base_url else "")
        if base_url and (urlsplit(base_url).username or urlsplit(base_url).query):
            spec = f"openai:{model}@{redact_url(base_url)}"  # no credentials in recorded identities
        super().__init__(spec, cache=cache, **kw)
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise JudgeError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.model = model
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise JudgeError(f"judge base URL must start with http:// or https://: {redact_url(self.base_url)!r}")
        if transport not in TRANSPORTS:
            raise JudgeError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.transport_used: str | None = None  # set when the HTTP client is made
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.top_logprobs = top_logprobs
        self.seed = seed
        self.snapshot: str | None = None
        self._accounting = Accounting(model=model, priced=True, prices=prices)
        self._rng = random.Random()
        self._stop_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._aclient = None
        self._aclient_key: str | None = None

    @property
    def identity(self) -> dict:
        return {"spec": self.spec, "model": self.model, "snapshot": self.snapshot, "readout": self.readout,
                "base_url": redact_url(self.base_url)}

    @property
    def key_identity(self) -> dict:
        return {"spec": self.spec, "model": self.model, "readout": self.readout, "base_url": redact_url(self.base_url)}

    @property
    def decoding(self) -> dict:
        return {"temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": self.top_logprobs,
                "seed": self.seed}

    def _api_key(self) -> str | None:
        key = os.environ.get(API_KEY_ENV)
        if key:
            return key
        return LOOPBACK_PLACEHOLDER_KEY if is_loopback(self.base_url) else None

    def check(self) -> None:
        if self._api_key() is None:
            raise JudgeError(f"judge {self.spec}: {API_KEY_ENV} is not set (needed for {redact_url(self.base_url)}; "
                             "only a loopback base URL may run without a key)")

    # ------------------------------------------------------------------ requests
    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry number `attempt` (0-based): Retry-After when the server gave one (capped at
        retry_after_max), else min(backoff_max, base * 2**attempt) with jitter in [50 %, 100 %]."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return cap * (0.5 + 0.5 * self._rng.random())

    async def _one(self, client, key: str, prompt: str) -> dict:
        import openai

        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if self._stop_reason:
                return {"error": self._stop_reason}
            if attempt:
                self._accounting.add(retries=1)
            self._accounting.add(calls=1)
            delay_hint = None
            try:
                # the client's generic POST: the body is plain JSON already, and skipping the typed
                # request transform of chat.completions.create halves the client's CPU per request
                resp = await client.post("/chat/completions", cast_to=_http_response_class(),
                                         body={"model": self.model, "messages": [{"role": "user", "content": prompt}],
                                               **self.decoding})
                result = parse_response(resp.text)
                if "usage" in result:
                    self._accounting.add(**result["usage"])
                return result
            except openai.APIConnectionError as e:  # timeouts included (APITimeoutError subclasses it)
                refused = _connection_failure(e)
                if refused is not None:  # some transports report a refused connection as a timeout
                    last, kind = f"connection error: {refused}", "connection"
                elif isinstance(e, openai.APITimeoutError):
                    last, kind = f"timeout after {self.timeout:g} s", "timeout"
                else:
                    last, kind = f"connection error: {e.__cause__ or e}", "connection"
            except openai.APIStatusError as e:
                status = e.status_code
                msg = str(e.message)[:200] if getattr(e, "message", None) else ""
                last = f"HTTP {status}" + (f": {msg}" if msg else "")
                if status in FATAL_STATUS:
                    self._stop_reason = f"stopped after {last} (judge {self.spec})"
                    return {"error": last}
                if status not in RETRY_STATUS:
                    return {"error": last}
                kind = "status"
                delay_hint = retry_after_seconds(e.response.headers if e.response is not None else None)
            if attempt < self.max_retries:
                await asyncio.sleep(self.backoff(attempt, delay_hint))
        if kind == "connection":
            self._stop_reason = f"endpoint unreachable: {last} after {self.max_retries + 1} attempts"
        return {"error": f"{last} (after {self.max_retries + 1} attempts)"}

    async def _client(self):
        import openai

        key = self._api_key()
        if self._aclient is None or self._aclient_key != key:
            if self._aclient is not None:
                await self._aclient.close()
            http_client = _http_client(self.transport)
            self.transport_used = "httpx" if http_client is None else "aiohttp"
            self._aclient = openai.AsyncOpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout,
                                               http_client=http_client)
            self._aclient_key = key
        return self._aclient

    async def _run_async(self, misses: list[tuple[str, str, JudgeItem]], progress: bool) -> None:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(misses), desc=f"judge {self.spec}", unit="call", leave=False)
        client = await self._client()
        queue: asyncio.Queue = asyncio.Queue()
        for m in misses:
            queue.put_nowait(m)
        snapshots: dict[str, int] = {}

        async def worker():
            while True:
                try:
                    key, prompt, _item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    result = await self._one(client, key, prompt)
                except Exception as e:  # noqa: BLE001 -- never lose an item: anything unexpected is its error
                    result = {"error": f"{type(e).__name__}: {e}"}
                try:
                    self._finish(key, result)
                except Exception as e:  # noqa: BLE001 -- e.g. the cache cannot store it: still no lost item
                    result = {"error": f"{type(e).__name__}: {e}"}
                    self._results[key] = result
                if "error" in result:
                    self._accounting.add(failures=1)
                elif result.get("snapshot"):
                    snapshots[result["snapshot"]] = snapshots.get(result["snapshot"], 0) + 1
                if bar is not None:
                    bar.update(1)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(misses)))))
        finally:
            if bar is not None:
                bar.close()
        if snapshots:
            self.snapshot = max(snapshots, key=snapshots.get)
            self._accounting.snapshot = self.snapshot

    def _run(self, misses, progress: bool) -> None:
        """On the judge's own event loop thread (kept across calls with its HTTP client and connections),
        so it works the same from plain code and from inside a running event loop."""
        self._stop_reason = None
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="evilbench-judge", daemon=True)
            self._thread.start()
        asyncio.run_coroutine_threadsafe(self._run_async(misses, progress), self._loop).result()

    async def _aclose(self) -> None:
        if self._aclient is not None:
            client, self._aclient = self._aclient, None
            await client.close()

    def close(self) -> None:
        """Close the HTTP client and stop the judge's event loop thread (also at garbage collection);
        a later judge() starts them again."""
        loop, thread, self._loop = self._loop, self._thread, None
        if loop is None:
            return
        if threading.current_thread() is thread:  # collected on its own loop: cannot wait for itself
            loop.call_soon(loop.stop)
            return
        with contextlib.suppress(Exception):  # closing is best effort
            asyncio.run_coroutine_threadsafe(self._aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not loop.is_running():
            loop.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def judge(self, items, progress: bool = True):
        out = super().judge(items, progress)
        if self.snapshot is None:  # everything came from the cache: the snapshot the calls reported
            snaps = [j.judge.get("snapshot") for j in out if j.judge.get("snapshot")]
            if snaps:
                self.snapshot = max(set(snaps), key=snaps.count)
                self._accounting.snapshot = self.snapshot
        return out

