#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that counts the bytes clients send to the target (request heads and
bodies: what an upload puts on the wire). For scripts/bench-diff.sh.

    count_proxy.py LISTEN_PORT TARGET_PORT COUNT_FILE

COUNT_FILE always holds the bytes sent so far (rewritten at most every 50 ms and at the end)."""
import asyncio
import os
import sys
import time

listen, target, count_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sent = 0
written = 0.0


def save(force=False):
    global written
    now = time.monotonic()
    if force or now - written > 0.05:
        written = now
        tmp = count_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{sent}\n")
        os.replace(tmp, count_file)


async def pipe(reader, writer, count):
    global sent
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if count:
                sent += len(data)
                save()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        save(True)
        try:
            writer.close()
        except Exception:
            pass


async def serve(client_reader, client_writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, up_writer, True), pipe(up_reader, client_writer, False))


async def main():
    save(True)
    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())
