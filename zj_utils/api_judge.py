"""`OpenAIChatJudge`: the pairwise LLM judge (zj_utils/judges.py) over any OpenAI-compatible chat-completions API
(OpenAI, vLLM, llama.cpp server, ...), sent through the `openai` client library with its own retries switched off.

Each pair is judged in both orders; a verdict that changes with the order becomes a tie. Retries with exponential
backoff on timeouts, dropped connections, malformed replies, 429 and 5xx (Retry-After respected), and with
`concurrency` > 1 the back-off is shared: while any worker waits one out, no worker sends. Every raw verdict is
appended to a JSONL cache keyed by a hash of model + request (one whole line, fsync'ed, before the call counts as
paid), and no two workers send the same uncached prompt at once, so an interrupted run resumes without paying
twice; unparseable verdicts are counted, not fatal. The API key is read from the environment at request time and
is never stored on the object, in the cache, in logs or in exceptions.
"""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

from .common import ZJError
from .judges import _progress_bar, _PromptJudge

log = logging.getLogger(__name__)


class _RetryableError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Aborted(Exception):
    """A worker stops because the run is stopping (another worker's error, Ctrl-C)."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _retry_after_headers(headers) -> float | None:
    """The server's wait: `retry-after-ms` (OpenAI sends it) before `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return _retry_after(headers.get("retry-after"))


class _SharedBackoff:
    """One back-off for all the workers of a judge. A worker that meets a retryable failure (a 429 and its
    Retry-After, a 5xx, a timeout) holds the gate closed while it waits its delay out; every worker waits for the
    gate to be open before each request it sends. So a 429 seen by one worker pauses them all, and they resume
    together when the last wait in progress ends. Requests already in flight are not recalled."""

    def __init__(self):
        self._cond = threading.Condition()
        self._holders = 0

    @contextlib.contextmanager
    def hold(self):
        with self._cond:
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                if not self._holders:
                    self._cond.notify_all()

    def wait_open(self, abort: threading.Event) -> None:
        with self._cond:
            while self._holders and not abort.is_set():
                self._cond.wait(0.05)


class OpenAIChatJudge(_PromptJudge):
    """LLM judge over `POST {base_url}/chat/completions` (OpenAI, vLLM, llama.cpp server, ... all speak it).

    base_url: argument, else $OPENAI_BASE_URL, else https://api.openai.com/v1. The key is read from
    $`api_key_env` at each request (no Authorization header when it is unset, for local servers)."""

    name = "openai"
    concurrent = True

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 cache_path: str | Path | None = "judge_cache.jsonl", timeout: float = 60.0, max_retries: int = 6,
                 backoff: float = 1.0, max_backoff: float = 60.0, max_retry_after: float = 300.0,
                 temperature: float = 0.0, max_tokens: int = 64):
        super().__init__()
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.temperature, self.max_tokens = temperature, max_tokens
        self.cache_path = Path(cache_path) if cache_path else None
        self._abort = threading.Event()  # set while a concurrent run is stopping
        self._sleep = self._abort.wait  # a back-off wait that a stopping run cuts short; tests swap it to record
        self._lock = threading.Lock()  # the cache file: one whole line at a time
        self._state = threading.Lock()  # the in-memory cache, the prompts in flight and the counters
        self._cache: dict[str, str] = {}
        self._inflight: dict[str, threading.Event] = {}
        self._backoff_gate = _SharedBackoff()
        self._client = None
        self._needs_newline = False
        self.stats.update({"http_requests": 0, "http_retries": 0, "cache_hits": 0, "cache_bad_lines": 0})
        self._load_cache()

    def __repr__(self) -> str:
        return (f"OpenAIChatJudge(model={self.model!r}, url={self.url!r}, api_key_env={self.api_key_env!r}, "
                f"cache={str(self.cache_path) if self.cache_path else None!r})")

    def _count(self, name: str, n: int = 1) -> None:
        with self._state:
            self.stats[name] += n

    # -- cache ---------------------------------------------------------------------------------------------
    def _load_cache(self) -> None:
        if not self.cache_path or not self.cache_path.exists():
            return
        data = self.cache_path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._cache[rec["key"]] = rec["raw"]
            except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by an interrupted run
                self.stats["cache_bad_lines"] += 1

    def _append(self, key: str, raw: str) -> None:
        """Record a paid verdict: one whole line, written with one append and fsync'ed, before anyone may take the
        call as paid (the in-memory cache is filled after). A line cut short by a kill is skipped on reload, and
        the next line starts on a line of its own."""
        if self.cache_path:
            rec = {"key": key, "model": self.model, "raw": raw, "time": round(time.time(), 3)}
            line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
            with self._lock:
                if self._needs_newline:
                    line = b"\n" + line
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._needs_newline = False
        with self._state:
            self._cache[key] = raw

    def _body(self, messages: list[dict]) -> dict:
        return {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    @staticmethod
    def cache_key(body: dict) -> str:
        return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()

    def _is_cached(self, messages: list[dict]) -> bool:
        return self.cache_key(self._body(messages)) in self._cache

    # -- calls ---------------------------------------------------------------------------------------------
    def _complete(self, messages: list[dict]) -> str:
        body = self._body(messages)
        return self._complete_key(self.cache_key(body), body)

    def _complete_key(self, key: str, body: dict) -> str:
        """The raw verdict for `body`: from the cache, else paid for once. A worker that finds the same prompt in
        flight in another worker waits for that one's verdict instead of sending it again (if that worker fails,
        the waiter tries itself)."""
        while True:
            with self._state:
                if key in self._cache:
                    self.stats["cache_hits"] += 1
                    return self._cache[key]
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = threading.Event()
                    break
            pending.wait()
        try:
            raw = self._post(body)
            self._append(key, raw)
        finally:
            with self._state:
                self._inflight.pop(key, None)
            pending.set()
        return raw

    def _complete_many(self, messages: list[list[dict]], concurrency: int = 1, progress: bool = False) -> list[str]:
        """The raw verdict for every prompt, in order, with up to `concurrency` calls in flight (worker threads).
        The first error stops the run: no worker takes a new prompt, the calls in flight finish (and are cached),
        then the error is raised here. Ctrl-C does the same."""
        bodies = [self._body(m) for m in messages]
        keys = [self.cache_key(b) for b in bodies]
        raws: list = [None] * len(keys)
        with self._state:
            todo = [i for i, k in enumerate(keys) if k not in self._cache]
        todo_set = set(todo)
        bar = _progress_bar(len(keys), len(keys) - len(todo), len({keys[i] for i in todo}), self.name) \
            if progress else None
        try:
            for i in range(len(keys)):
                if i not in todo_set:
                    raws[i] = self._complete_key(keys[i], bodies[i])
            if concurrency <= 1 or len(todo) <= 1:
                for i in todo:
                    raws[i] = self._complete_key(keys[i], bodies[i])
                    if bar is not None:
                        bar.update()
            else:
                self._run_workers(todo, keys, bodies, raws, concurrency, bar)
        finally:
            if bar is not None:
                bar.close()
        return raws

    def _run_workers(self, todo, keys, bodies, raws, concurrency, bar) -> None:
        work: queue.SimpleQueue = queue.SimpleQueue()
        for i in todo:
            work.put(i)
        done: queue.SimpleQueue = queue.SimpleQueue()

        def worker():
            while not self._abort.is_set():
                try:
                    i = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, self._complete_key(keys[i], bodies[i]), None))
                except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
                    self._abort.set()  # at once: no worker sends another request
                    done.put((i, None, e))
                    return

        self._abort.clear()
        threads = [threading.Thread(target=worker, name=f"zj-judge-{w}", daemon=True)
                   for w in range(min(concurrency, len(todo)))]
        for t in threads:
            t.start()
        error = None
        try:
            for _ in range(len(todo)):
                while True:
                    try:
                        i, raw, error = done.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                if error is not None:
                    break
                raws[i] = raw
                if bar is not None:
                    bar.update()
        finally:
            self._abort.set()
            if any(t.is_alive() for t in threads):
                log.warning("judge: stopping; waiting for the calls in flight (at most %.0f s) so that their "
                            "verdicts are cached", self.timeout)
            for t in threads:
                t.join()
            self._abort.clear()
        if error is not None:
            raise error

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _http(self):
        """The openai client (made on first use, shared by the workers: it is thread-safe). Its own retries are
        off (max_retries=0) and ours, with the back-off shared by every worker, are the only ones: a retry inside
        the client would sleep in one worker only while the others kept sending into the rate limit, and would
        escape our counters and warnings. The client gets no key (a placeholder it never sends): each request
        carries the Authorization header built from the environment at that moment."""
        with self._state:
            if self._client is None:
                try:
                    import openai
                except ImportError:
                    raise ZJError("The openai judge needs the openai package: pip install 'openai>=3,<4'.") from None
                self._client = openai.OpenAI(api_key="not-sent", base_url=self.base_url, timeout=self.timeout,
                                             max_retries=0)
            return self._client

    def _scrub(self, text: str) -> str:
        secret = os.environ.get(self.api_key_env)
        return text.replace(secret, "***") if secret else text

    def _request_once(self, body: dict) -> str:
        import openai

        client = self._http()
        secret = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {secret}" if secret else openai.Omit()}
        del secret
        self._count("http_requests")
        failure = None  # raised below, outside the except clauses: no exception chain holds the request or key
        try:
            text = client.chat.completions.with_raw_response.create(**body, extra_headers=headers).http_response.text
        except openai.APIStatusError as e:
            try:
                detail = e.response.text[:200]
            except Exception:  # noqa: BLE001 - the body is only a hint
                detail = ""
            failure = (e.status_code, _retry_after_headers(e.response.headers), detail)
        except openai.APIConnectionError as e:  # timeouts, refused and dropped connections
            failure = (None, None, f"{type(e).__name__} ({type(e.__cause__).__name__ if e.__cause__ else 'no cause'})")
        del headers
        if failure is not None:
            status, after, detail = failure
            if status is None:
                raise _RetryableError(self._scrub(detail))
            if status == 429 or 500 <= status < 600:
                raise _RetryableError(f"HTTP {status}", after)
            hint = f" (is ${self.api_key_env} set and valid?)" if status in (401, 403) else \
                f": {self._scrub(' '.join(detail.split()))}" if detail else ""
            raise ZJError(f"judge API {self.url} answered HTTP {status}{hint}")
        try:
            return json.loads(text)["choices"][0]["message"]["content"] or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            pass
        raise _RetryableError("malformed response (no choices[0].message.content)")

    def _post(self, body: dict) -> str:
        for attempt in range(self.max_retries + 1):
            self._backoff_gate.wait_open(self._abort)
            if self._abort.is_set():
                raise _Aborted()
            try:
                return self._request_once(body)
            except _RetryableError as e:
                if attempt == self.max_retries:
                    raise ZJError(f"judge API {self.url}: gave up after {attempt + 1} attempts "
                                  f"(last: {e.reason})") from None
                delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                if e.retry_after is not None:
                    delay = min(self.max_retry_after, e.retry_after)
                self._count("http_retries")
                log.warning("judge API %s: %s; retry %d/%d in %.2f s (every worker waits)", self.url, e.reason,
                            attempt + 1, self.max_retries, delay)
                with self._backoff_gate.hold():
                    self._sleep(delay)
        raise AssertionError("unreachable")
