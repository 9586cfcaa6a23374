"""A loopback TCP proxy that can break the network between a client and a server, on command.

Modes (``proxy.mode = ...`` or ``set_mode``), switched at any time:

- ``forward``: bytes flow both ways, as without the proxy.
- ``blackhole``: a network stall. Nothing flows: bytes already in a connection wait in the kernel's
  buffers, new connections are accepted and held; nothing is closed. Back to ``forward``, the held
  bytes flow again and held connections reach the server, as TCP does when a stalled link heals.
- ``reset``: every open connection is closed with an RST (both sides), and so is each new one,
  until the mode changes.

``reset_all()`` closes every open connection with an RST and keeps the mode (a one-off reset).

The proxy serves on its own thread (an asyncio loop), so blocking callers (tests, benches) use it
as they like: ``with TcpProxy(port) as proxy: ... proxy.mode = "blackhole"``.

By hand: ``python -m infra.tcp_proxy --target 127.0.0.1:8080 [--port N]``; type ``forward``,
``blackhole`` or ``reset`` (then Enter) to switch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Literal

from infra.net import HOST, free_port

Mode = Literal["forward", "blackhole", "reset"]
MODES: tuple[Mode, ...] = ("forward", "blackhole", "reset")
_CHUNK = 64 << 10


class _Link:
    """One client connection and, once the network lets it through, its connection to the server."""

    def __init__(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.client = client
        self.server: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.tasks: list[asyncio.Task] = []

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client[1]] + ([self.server[1]] if self.server else [])


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: what the peer sees when a connection is reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Listens on 127.0.0.1:``port`` (default: a free one) and forwards to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = HOST, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._mode: Mode = "forward"
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None  # set while the mode is "forward"
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        #: Counters, for reports: connections accepted, connections reset, bytes each way.
        self.accepted = self.resets = self.bytes_up = self.bytes_down = 0

    # -- control, from any thread -----------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self.set_mode(mode)

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._call(self._apply_mode, mode)

    def reset_all(self) -> None:
        """RST every open connection; the mode stays."""
        self._call(self._reset_links)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def start(self) -> TcpProxy:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="tcp-proxy", daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn`` on the proxy's loop and wait for it (before start: just record the mode)."""
        if self._loop is None:
            if fn == self._apply_mode:
                self._mode = args[0]  # type: ignore[assignment]  # a mode, checked by set_mode
            return
        done = asyncio.run_coroutine_threadsafe(self._async(fn, *args), self._loop)
        done.result(timeout=10)

    @staticmethod
    async def _async(fn: Callable[..., None], *args: object) -> None:
        fn(*args)

    # -- on the proxy's loop --------------------------------------------------------------------------
    def _main(self, ready: Future[None]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            if not ready.done():
                ready.set_exception(exc)
        finally:
            loop.close()

    async def _serve(self, ready: Future[None]) -> None:
        self._flowing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._apply_mode(self._mode)
        server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True)
        ready.set_result(None)
        try:
            await self._stopped.wait()
        finally:
            server.close()
            self._reset_links()
            await server.wait_closed()
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in left:  # connections held by a black hole, handlers of reset ones
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    def _apply_mode(self, mode: Mode) -> None:
        self._mode = mode
        assert self._flowing is not None  # set up before the first call
        if mode == "forward":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "reset":
            self._reset_links()

    def _reset_links(self) -> None:
        for link in list(self._links):
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.resets += 1
        for writer in link.writers():
            _rst(writer)
        for task in link.tasks:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link((reader, writer))
        self._links.add(link)
        if self._mode == "reset":
            self._drop(link)
            return
        assert self._flowing is not None
        await self._flowing.wait()  # a black hole holds the new connection: the SYN "gets through" on heal
        if link not in self._links:
            return
        try:
            link.server = await asyncio.open_connection(*self.target)
        except OSError:
            self._drop(link)  # the server is down: the client sees its connection reset
            return
        if link not in self._links:  # reset while connecting
            _rst(link.server[1])
            return
        up = asyncio.ensure_future(self._pump(link, reader, link.server[1], up=True))
        down = asyncio.ensure_future(self._pump(link, link.server[0], writer, up=False))
        link.tasks = [up, down]
        await asyncio.gather(up, down, return_exceptions=True)
        if link in self._links:
            self._links.discard(link)
            for w in link.writers():
                w.close()

    async def _pump(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        assert self._flowing is not None
        while True:
            await self._flowing.wait()  # stalled: leave the bytes in the kernel's buffers
            try:
                data = await src.read(_CHUNK)
            except OSError:
                data = b""
            if not data:  # the peer closed its side: pass the FIN on
                with contextlib.suppress(OSError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            await self._flowing.wait()  # read just before a stall began: hold it until the heal
            if link not in self._links:
                return
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            dst.write(data)
            try:
                await dst.drain()
            except OSError:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.tcp_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    with TcpProxy(int(port), host or HOST, args.port) as proxy:
        print(f"proxy on {HOST}:{proxy.port} -> {args.target}; type forward, blackhole or reset", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command in MODES:
                proxy.set_mode(command)  # checked against MODES
                print(f"mode: {command}", flush=True)
            elif command:
                print(f"unknown command {command!r}: forward, blackhole or reset", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
