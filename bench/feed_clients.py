"""Clients of the live activity feed for bench/feed.py, many in one asyncio process (the `websockets` library).

Opens --clients connections to /ws/events/ with the staff session in BENCH_SESSIONID, subscribes each, and prints
"ready <clients>" once all are subscribed. From then on every client records the receive time (time.time()) of each
event, and fetches each `skipped` range from /api/v1/events, oldest first, as a browser must. With --ping, one more
connection, never subscribed, sends a ping about every --ping-every seconds and records the round trip: the transport
baseline. A watchdog records how late this process's event loop wakes up, to show whether the clients kept up.

Then it reads one line from stdin, "stop <commit file>", and waits until every client holds every event of that file
above its subscription position (received or fetched), at most --drain seconds; closes everything, writes the
figures to --out as JSON and prints "done".
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

CONNECTING_AT_ONCE = 50
OPEN_TIMEOUT = 60
API_PAGE = 500
LAG_TICK = 0.05


class FeedClient:
    def __init__(self, *, url: str, origin: str, cookie: str, api: str, fetcher: ThreadPoolExecutor) -> None:
        self.url, self.origin, self.cookie, self.api, self.fetcher = url, origin, cookie, api, fetcher
        self.ws: ClientConnection | None = None
        self.position = 0
        self.received: dict[int, float] = {}
        self.fetched: set[int] = set()
        self.skipped: list[tuple[int, int, int]] = []
        self.duplicates = 0
        self.errors: list[str] = []
        self.fetches: list[asyncio.Task[None]] = []
        self.listener: asyncio.Task[None] | None = None

    async def open(self, handshakes: asyncio.Semaphore) -> None:
        async with handshakes:
            self.ws = await connect(
                self.url,
                origin=self.origin,  # type: ignore[arg-type]
                additional_headers={"Cookie": f"sessionid={self.cookie}"},
                compression=None,
                ping_interval=None,  # daphne pings idle connections itself; the library answers
                open_timeout=OPEN_TIMEOUT,
            )
            await self.ws.send(json.dumps({"action": "subscribe", "channel": "events"}))
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), OPEN_TIMEOUT))
            if reply.get("type") != "subscribed":
                raise RuntimeError(f"expected 'subscribed', got {reply}")
            self.position = reply["last_id"]
        self.listener = asyncio.create_task(self.listen())

    async def listen(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.time()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "event":
                    event_id = message["payload"]["id"]
                    if event_id in self.received or event_id in self.fetched:
                        self.duplicates += 1
                    else:
                        self.received[event_id] = now
                elif kind == "skipped":
                    self.skipped.append((message["from_id"], message["to_id"], message["count"]))
                    self.fetches.append(asyncio.create_task(self.fetch(message["from_id"], message["to_id"])))
                elif len(self.errors) < 10:
                    self.errors.append(f"unexpected message {str(message)[:200]}")
        except ConnectionClosed as exc:
            self.errors.append(f"connection closed: {exc}")

    async def fetch(self, from_id: int, to_id: int) -> None:
        try:
            ids = await asyncio.get_running_loop().run_in_executor(self.fetcher, self.fetch_range, from_id, to_id)
        except OSError as exc:
            self.errors.append(f"fetching {from_id}..{to_id}: {exc}")
            return
        for event_id in ids:
            if event_id in self.received or event_id in self.fetched:
                self.duplicates += 1
            else:
                self.fetched.add(event_id)

    def fetch_range(self, from_id: int, to_id: int) -> list[int]:
        """What the page does on `skipped`: GET /api/v1/events?since_id=<from_id - 1>, paging on the last id."""
        ids: list[int] = []
        after = from_id - 1
        while after < to_id:
            request = urllib.request.Request(  # noqa: S310 (self.api is our loopback server)
                f"{self.api}?since_id={after}&limit={API_PAGE}",
                headers={"Cookie": f"sessionid={self.cookie}", "Accept": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                events = json.load(response)["events"]
            if not events:
                break
            ids += [e["id"] for e in events if e["id"] <= to_id]
            after = events[-1]["id"]
        return ids

    def holds(self, expected: list[int]) -> bool:
        if any(not task.done() for task in self.fetches):
            return False
        return all(i in self.received or i in self.fetched for i in expected if i > self.position)

    async def close(self) -> None:
        for task in self.fetches:
            if not task.done():
                task.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.listener is not None:
            await self.listener

    def figures(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "received": sorted(self.received.items()),
            "fetched": sorted(self.fetched),
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "errors": self.errors,
        }


async def pinger(url: str, origin: str, cookie: str, every: float, samples: list[tuple[float, float]]) -> None:
    headers = {"Cookie": f"sessionid={cookie}"}
    async with connect(url, origin=origin, additional_headers=headers, compression=None, ping_interval=None) as ws:  # type: ignore[arg-type]
        while True:
            sent_at = time.time()
            start = time.perf_counter()
            await ws.send('{"action": "ping"}')
            while json.loads(await ws.recv()).get("type") != "pong":
                pass
            samples.append((sent_at, (time.perf_counter() - start) * 1000))
            # Jittered, so the pings do not lock onto the feed's own period (a poll or an event every 100 ms)
            # and land on the same side of every fan-out.
            await asyncio.sleep(every * random.uniform(0.5, 1.5))


async def watch_lag(samples: list[tuple[float, float]]) -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(LAG_TICK)
        samples.append((time.time(), (time.perf_counter() - start - LAG_TICK) * 1000))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # In the environment rather than on the command line, where `ps` would show it.
    cookie = os.environ["BENCH_SESSIONID"]
    fetcher = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fetch")
    clients = [
        FeedClient(url=args.url, origin=args.origin, cookie=cookie, api=args.api, fetcher=fetcher)
        for _ in range(args.clients)
    ]
    handshakes = asyncio.Semaphore(CONNECTING_AT_ONCE)
    outcomes = await asyncio.gather(*(c.open(handshakes) for c in clients), return_exceptions=True)
    failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    if failures:
        print(f"failed {len(failures)} {failures[0][:300]}", flush=True)
        return {"connect_failures": failures}

    pings: list[tuple[float, float]] = []
    lags: list[tuple[float, float]] = []
    background = [asyncio.create_task(watch_lag(lags))]
    if args.ping:
        background.append(asyncio.create_task(pinger(args.url, args.origin, cookie, args.ping_every, pings)))
    print(f"ready {len(clients)}", flush=True)

    command = (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).split()
    if command[:1] != ["stop"] or len(command) != 2:
        raise RuntimeError(f"expected 'stop <commit file>', got {command}")
    stop_at = time.time()
    expected = [int(line.split()[0]) for line in Path(command[1]).read_text(encoding="ascii").splitlines()]
    deadline = time.monotonic() + args.drain
    while not all(c.holds(expected) for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    drained_s = time.time() - stop_at

    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in clients))
    fetcher.shutdown(wait=False, cancel_futures=True)
    return {
        "connect_failures": [],
        "clients": [c.figures() for c in clients],
        "pings": pings,
        "lags": lags,
        "drained_s": drained_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws/events/")
    parser.add_argument("--origin", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--api", required=True, help="http://127.0.0.1:PORT/api/v1/events")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--ping", action="store_true", help="also measure ping->pong round trips")
    parser.add_argument("--ping-every", type=float, default=0.1, help="seconds between pings")
    parser.add_argument("--drain", type=float, default=30, help="seconds to wait for the last events after 'stop'")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    args.out.write_text(json.dumps(figures), encoding="utf-8")
    print("done", flush=True)


if __name__ == "__main__":
    main()
