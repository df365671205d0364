"""A real OpenAI-compatible HTTP server on 127.0.0.1 for judge tests and benchmarks: POST
/v1/chat/completions answers with one completion token and `logprobs.content[0].top_logprobs`.

Behaviour is chosen by markers in the (last) user message, so a test controls each item:
  [[dist:TOK=P;TOK=P...]]   answer with exactly this top-logprobs distribution (probabilities)
  [[fault:KIND:N]]          the first N requests for this prompt fail with KIND, later ones succeed
                            (N = * : always). KIND is one of
      timeout    sleep `slow_s` (longer than the client's timeout) before answering
      500        HTTP 500 with a JSON error
      429        HTTP 429 with `Retry-After: <retry_after>` (seconds)
      garbage    a valid response whose tokens are not numbers (always, regardless of N)
      empty      HTTP 200 with "choices": []
      truncated  HTTP 200 whose JSON body is cut in half (Content-Length matches the cut body)
      drop       headers announce a longer body, then the connection closes mid-body
Without markers the distribution is a deterministic function of the prompt's sha256. Every request
is counted (`calls`, per prompt in `attempts`) and its JSON body kept in `bodies`. `latency_s` delays
every answer. The server stops itself after `lifetime_s` even if a test forgets to stop it."""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_DIST = re.compile(r"\[\[dist:([^\]]*)\]\]")
_FAULT = re.compile(r"\[\[fault:(\w+):(\*|\d+)\]\]")


def default_distribution(prompt: str) -> list[tuple[str, float]]:
    h = hashlib.sha256(prompt.encode()).digest()
    k = h[0] % 101
    return [(str(k), 0.55), (str(min(k + 10, 100)), 0.2), (" " + str(max(k - 10, 0)), 0.15), ("The", 0.1)]


def expected_score(dist: list[tuple[str, float]]) -> float:
    num = [(int(t.strip()), p) for t, p in dist if t.strip().isdigit() and int(t.strip()) <= 100]
    return sum(k * p for k, p in num) / sum(p for _, p in num)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen backlog: many clients connect at once


class FakeOpenAIServer:
    def __init__(self, *, latency_s: float = 0.0, slow_s: float = 2.0, retry_after: float = 0.05,
                 model: str = "fake-judge", snapshot: str = "fake-judge-2026-01-01", lifetime_s: float = 300.0):
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.model = model
        self.snapshot = snapshot
        self.lifetime_s = lifetime_s
        self.calls = 0
        self.attempts: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                server._handle(self)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def _watchdog(self):
        if not self._stopped.wait(self.lifetime_s):
            self.stop()

    def stop(self) -> None:
        if self._httpd is not None and not self._stopped.is_set():
            self._stopped.set()
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ requests
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None,
              content_length: int | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n)
        with self._lock:
            self.calls += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            try:
                body = json.loads(raw)
                prompt = body["messages"][-1]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                self._send(h, 400, b'{"error": {"message": "bad request"}}')
                return
            with self._lock:
                self.bodies.append(body)
                self.auth_headers.append(h.headers.get("Authorization"))
                attempt = self.attempts.get(prompt, 0)
                self.attempts[prompt] = attempt + 1
            if self.latency_s:
                time.sleep(self.latency_s)
            m = _FAULT.search(prompt)
            if m:
                kind, count = m.group(1), m.group(2)
                failing = kind == "garbage" or count == "*" or attempt < int(count)
                if failing and self._fault(h, kind, body):
                    return
            self._send(h, 200, self._response(body, prompt))
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self._in_flight -= 1

    def _fault(self, h, kind: str, body: dict) -> bool:
        """Send the fault; False when the kind means "answer normally after a delay"."""
        if kind == "timeout":
            self._stopped.wait(self.slow_s)
            return False  # answers late (the client has given up by then)
        if kind == "500":
            self._send(h, 500, b'{"error": {"message": "internal error", "type": "server_error"}}')
        elif kind == "429":
            self._send(h, 429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                       {"Retry-After": f"{self.retry_after:g}"})
        elif kind == "garbage":
            self._send(h, 200, self._response(body, None, [("Hello", 0.5), ("!", 0.3), ("sure", 0.2)]))
        elif kind == "empty":
            resp = json.loads(self._response(body, None, [("1", 1.0)]))
            resp["choices"] = []
            self._send(h, 200, json.dumps(resp).encode())
        elif kind == "truncated":
            full = self._response(body, None, [("50", 1.0)])
            self._send(h, 200, full[: len(full) // 2])
        elif kind == "drop":
            full = self._response(body, None, [("50", 1.0)])
            self._send(h, 200, full[: len(full) // 2], content_length=len(full))
            h.close_connection = True
            try:
                h.connection.shutdown(2)
            except OSError:
                pass
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return True

    def _response(self, body: dict, prompt: str | None, dist: list[tuple[str, float]] | None = None) -> bytes:
        if dist is None:
            m = _DIST.search(prompt or "")
            if m:
                dist = [(t, float(p)) for t, p in (e.rsplit("=", 1) for e in m.group(1).split(";") if e)]
            else:
                dist = default_distribution(prompt or "")
        k = int(body.get("top_logprobs") or 0)
        top = [{"token": t, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(t.encode())}
               for t, p in dist][:k]
        first = top[0] if top else {"token": "", "logprob": 0.0, "bytes": []}
        resp = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": self.snapshot,
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": first["token"]},
                         "logprobs": {"content": [{**first, "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": max(1, len(body["messages"][-1]["content"]) // 4), "completion_tokens": 1,
                      "total_tokens": max(1, len(body["messages"][-1]["content"]) // 4) + 1},
        }
        return json.dumps(resp).encode()


def main(argv: list[str] | None = None) -> None:
    """Serve in its own process: prints the base URL on the first line of stdout, stops after
    --lifetime seconds or when stdin closes (so it never outlives its parent)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--lifetime", type=float, default=600.0)
    args = ap.parse_args(argv)
    server = FakeOpenAIServer(latency_s=args.latency, lifetime_s=args.lifetime).start()
    print(server.url, flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), server.stop()), daemon=True).start()
    server._stopped.wait()


if __name__ == "__main__":
    main()
