"""A real HTTP backend for the end-to-end test: c workers, capacity changeable at run time.

``python -m tests.adaptive.backend PORT WORKERS SERVICE_MS`` (PORT 0: the kernel picks,
and the first line printed is ``listening on PORT``). ``GET /work`` waits
for a free worker (FIFO), holds it for SERVICE_MS (lognormal, sigma 0.3) and answers
200; ``GET /capacity/N`` sets the number of workers (capacity = N / service time).
"""

from __future__ import annotations

import asyncio
import collections
import random
import sys


class Workers:
    """A FIFO of waiting requests in front of a resizable pool of workers."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.busy = 0
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.busy < self.n and not self.waiting:
            self.busy += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        await fut

    def release(self) -> None:
        self.busy -= 1
        self.wake()

    def resize(self, n: int) -> None:
        self.n = n
        self.wake()

    def wake(self) -> None:
        while self.waiting and self.busy < self.n:
            fut = self.waiting.popleft()
            if not fut.done():
                self.busy += 1
                fut.set_result(None)


async def main(port: int, workers: int, service_ms: float) -> None:
    pool = Workers(workers)
    rng = random.Random(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                path = line.split()[1].decode()
                if path.startswith("/capacity/"):
                    pool.resize(int(path.rsplit("/", 1)[1]))
                else:
                    await pool.acquire()
                    try:
                        await asyncio.sleep(service_ms / 1000 * rng.lognormvariate(-0.045, 0.3))
                    finally:
                        pool.release()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
