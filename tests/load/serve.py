"""Load on a running web server as an operator's dashboard and scripts put on it; shared by the soak test
(tests/load/test_serve_soak.py) and bench/serve.py.

Several threads send authenticated API reads back to back (and an anonymous page and a static file now and then),
one posts a task every second, and a staff WebSocket client subscribed to /ws/events/ must receive the
`task.created` event of every posted task. Every request has a timeout, so a server that stops answering shows
up as failures instead of a hang, and the whole run is bounded by `seconds`.
"""

import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

READ_PATHS = ["/api/v1/tasks", "/api/v1/agents", "/api/v1/events?limit=20"]
# Every fifth request of a reader, in turn: what the login page and its assets cost with no session.
ANONYMOUS_PATHS = ["/accounts/login/", "/static/css/timmy.css"]
POST_EVERY_SECONDS = 1.0
# Events of tasks posted in the last moments may still be on their way when the load stops.
FEED_GRACE_SECONDS = 5.0


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    posted: set[int] = field(default_factory=set)
    announced: set[int] = field(default_factory=set)
    feed_error: str = ""
    started: float = field(default_factory=time.monotonic)
    # Seconds from the start to the first failed request: when the server stopped answering.
    first_failure_after: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if len(self.latencies) < 2:
            return max(self.latencies, default=0.0)
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(fraction * 100) - 1]

    @property
    def missed_by_feed(self) -> set[int]:
        return self.posted - self.announced

    def record(self, started: float, failure: str = "") -> None:
        with self.lock:
            if failure:
                self.failures.append(failure)
                if self.first_failure_after is None:
                    self.first_failure_after = round(started - self.started, 1)
            else:
                self.latencies.append(time.monotonic() - started)

    def summary(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "requests_per_second": round(self.requests_per_second, 1),
            "p50_ms": round(self.percentile(0.50) * 1000, 1),
            "p99_ms": round(self.percentile(0.99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
            "failures": len(self.failures),
            "first_failure_after_s": self.first_failure_after,
            "first_failures": self.failures[:3],
            "tasks_posted": len(self.posted),
            "tasks_missed_by_feed": len(self.missed_by_feed),
            "feed_error": self.feed_error,
        }


class _Http:
    """One keep-alive HTTP connection, reopened after an error."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def drive(
    base_url: str,
    *,
    token: str,
    session_cookie: str,
    seconds: float,
    readers: int = 3,
    request_timeout: float = 10.0,
) -> LoadResult:
    """Load `base_url` for `seconds`; `token` is an API token of a staff user, `session_cookie` that user's
    `sessionid=…` cookie for the WebSocket."""
    result = LoadResult()
    stop = threading.Event()
    subscribed = threading.Event()
    auth = {"Authorization": f"Bearer {token}"}

    def read(number: int) -> None:
        client = _Http(base_url, request_timeout)
        count = number
        while not stop.is_set():
            count += 1
            if count % 5 == 0:
                path, headers = ANONYMOUS_PATHS[(count // 5) % len(ANONYMOUS_PATHS)], {}
            else:
                path, headers = READ_PATHS[count % len(READ_PATHS)], auth
            started = time.monotonic()
            try:
                status, _ = client.request("GET", path, headers)
            except (OSError, http.client.HTTPException) as exc:
                result.record(started, f"GET {path}: {exc!r} after {time.monotonic() - started:.1f} s")
                continue
            result.record(started, "" if status == 200 else f"GET {path}: HTTP {status}")
        client.close()

    def post() -> None:
        client = _Http(base_url, request_timeout)
        headers = {**auth, "Content-Type": "application/json"}
        number = 0
        while not stop.wait(POST_EVERY_SECONDS):
            number += 1
            body = json.dumps({"description": f"load test task {number}: summarise the backups"}).encode()
            started = time.monotonic()
            try:
                status, answer = client.request("POST", "/api/v1/tasks", headers, body)
            except (OSError, http.client.HTTPException) as exc:
                result.record(started, f"POST /api/v1/tasks: {exc!r} after {time.monotonic() - started:.1f} s")
                continue
            if status == 201:
                result.record(started)
                with result.lock:
                    result.posted.add(int(json.loads(answer)["id"]))
            else:
                result.record(started, f"POST /api/v1/tasks: HTTP {status} {answer[:200]!r}")
        client.close()

    def listen() -> None:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        try:
            with connect(
                f"ws://{parts.netloc}/ws/events/",
                additional_headers={"Cookie": session_cookie, "Origin": origin},
                open_timeout=request_timeout,
            ) as ws:
                ws.send(json.dumps({"action": "subscribe", "event_types": ["task.created"]}))
                deadline = None
                while True:
                    if stop.is_set():
                        deadline = deadline or time.monotonic() + FEED_GRACE_SECONDS
                        with result.lock:
                            if not result.missed_by_feed or time.monotonic() > deadline:
                                return
                    try:
                        message = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if message["type"] == "subscribed":
                        subscribed.set()
                    elif message["type"] == "event":
                        with result.lock:
                            result.announced.add(int(message["payload"]["task_id"]))
        except (OSError, WebSocketException) as exc:
            result.feed_error = repr(exc)
        finally:
            subscribed.set()

    listener = threading.Thread(target=listen, name="load-feed")
    listener.start()
    subscribed.wait(request_timeout)
    threads = [threading.Thread(target=read, args=(n,), name=f"load-read-{n}") for n in range(readers)]
    threads.append(threading.Thread(target=post, name="load-post"))
    result.started = started = time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(request_timeout + 5)
    result.seconds = time.monotonic() - started
    listener.join(FEED_GRACE_SECONDS + request_timeout + 5)
    return result
