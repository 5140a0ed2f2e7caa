#!/usr/bin/env python3
"""A small TCP forwarder for the test node: listens on LISTEN_HOST:LISTEN_PORT and copies every
connection's bytes both ways to TARGET_HOST:TARGET_PORT. tests/cluster/up runs it on the
`kubernetes` Service address (10.0.0.1:443, made local on lo) towards the loopback kube-apiserver,
so that in-cluster clients reach the API server without any traffic leaving the machine. TLS
passes through untouched (the API server's certificate has IP:10.0.0.1 as a SAN).

Usage: forward.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT   (stops on SIGTERM/SIGINT)
"""

import asyncio
import signal
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # already closed by the other direction
            pass


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int):
    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        except OSError as e:
            sys.stderr.write("forward: cannot reach %s:%d: %s\n" % (target_host, target_port, e))
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, listen_host, listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stderr.write("forward: %s:%d -> %s:%d\n" % (listen_host, listen_port, target_host, target_port))
    sys.stderr.flush()
    async with server:
        await stop.wait()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit("usage: forward.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
