#!/usr/bin/env python3
"""Idle and slow connections for bench/soak.sh (standard library only).

    soak_conns.py HOST PORT SECONDS IDLE SLOW FILE_PATH

Keeps, for SECONDS:
- IDLE connections open that send nothing (the server's header timeout closes them: each is
  reopened at once, so the server always has IDLE of them to carry);
- SLOW connections that send a valid GET one byte every 0.5 s (slowloris): either the request
  completes and is answered, or the header timeout ends it; reopened either way;
- SLOW/5 slow readers: a complete GET of FILE_PATH (a large file) whose response is read 512
  bytes every 0.2 s, to check that a slow client costs the server bounded memory.
Prints one JSON line: connections opened, closed by the server, and the status codes of the
responses that arrived.
"""
import asyncio
import json
import sys
import time

HOST, PORT, SECONDS, IDLE, SLOW, FILE_PATH = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
END = time.monotonic() + SECONDS
stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0, "statuses": {}, "slow_read_bytes": 0}


def status_of(head: bytes):
    try:
        return head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
    except Exception:
        return "unparsable"


def count(status):
    stats["statuses"][status] = stats["statuses"].get(status, 0) + 1


async def connect():
    try:
        r, w = await asyncio.open_connection(HOST, PORT)
        stats["opened"] += 1
        return r, w
    except OSError:
        stats["connect_errors"] += 1
        await asyncio.sleep(0.5)
        return None


async def idle():
    while time.monotonic() < END:
        c = await connect()
        if not c:
            continue
        r, w = c
        try:
            data = await asyncio.wait_for(r.read(4096), timeout=max(0.1, END - time.monotonic()))
            stats["closed_by_server"] += 1
            if data:
                count(status_of(data))
        except asyncio.TimeoutError:
            pass
        except OSError:
            stats["closed_by_server"] += 1
        w.close()


async def slow_writer():
    req = f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {'a' * 20}\r\n\r\n".encode()
    while time.monotonic() < END:
        c = await connect()
        if not c:
            continue
        r, w = c
        try:
            for b in req:
                if time.monotonic() >= END:
                    break
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(0.5)
            else:
                head = await asyncio.wait_for(r.read(4096), timeout=30)
                if head:
                    count(status_of(head))
                continue
        except (OSError, asyncio.TimeoutError):
            stats["closed_by_server"] += 1
        finally:
            w.close()


async def slow_reader():
    req = f"GET {FILE_PATH} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < END:
        c = await connect()
        if not c:
            continue
        r, w = c
        try:
            w.write(req)
            await w.drain()
            first = True
            while time.monotonic() < END:
                chunk = await asyncio.wait_for(r.read(512), timeout=60)
                if not chunk:
                    break
                if first:
                    count(status_of(chunk))
                    first = False
                stats["slow_read_bytes"] += len(chunk)
                await asyncio.sleep(0.2)
        except (OSError, asyncio.TimeoutError):
            stats["closed_by_server"] += 1
        finally:
            w.close()


async def main():
    tasks = [idle() for _ in range(IDLE)] + [slow_writer() for _ in range(SLOW)]
    tasks += [slow_reader() for _ in range(max(1, SLOW // 5))]
    await asyncio.gather(*tasks)
    print(json.dumps(stats, sort_keys=True))


asyncio.run(main())
