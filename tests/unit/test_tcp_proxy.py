"""infra.tcp_proxy: forwards, stalls (black hole) and resets connections on command."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from infra.tcp_proxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[TcpProxy]:
    with TcpProxy(echo_port) as p:
        yield p


def _connect(proxy: TcpProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(sock, b"hello") == b"hello"
        assert _echo(sock, b"x" * 200_000) == b"x" * 200_000
    assert proxy.bytes_up >= 200_005 and proxy.bytes_down >= 200_005


def test_a_black_hole_holds_old_and_new_connections_and_the_heal_delivers_what_waited(proxy: TcpProxy) -> None:
    old = _connect(proxy)
    assert _echo(old, b"before") == b"before"
    proxy.mode = "blackhole"
    old.settimeout(0.5)
    old.sendall(b"during")
    with pytest.raises(TimeoutError):
        old.recv(100)  # nothing comes back, and the connection is not closed either
    new = _connect(proxy, timeout=0.5)  # accepted (no refusal), then held
    new.sendall(b"new")
    with pytest.raises(TimeoutError):
        new.recv(100)
    proxy.mode = "forward"
    old.settimeout(5)
    new.settimeout(5)
    assert old.recv(100) == b"during"
    assert new.recv(100) == b"new"
    old.close()
    new.close()


def test_reset_closes_every_connection_with_an_rst_until_the_mode_changes(proxy: TcpProxy) -> None:
    sock = _connect(proxy)
    assert _echo(sock, b"a") == b"a"
    proxy.mode = "reset"
    with pytest.raises(ConnectionResetError):
        sock.sendall(b"b")
        sock.recv(100)
    sock.close()
    # The RST may come while connecting (a loaded machine) or at the first send: either is a reset.
    with pytest.raises((ConnectionResetError, BrokenPipeError)), _connect(proxy) as refused:
        refused.sendall(b"c")
        if refused.recv(100) == b"":  # a close without RST would read as end of stream
            pytest.fail("the connection was closed, not reset")
    proxy.mode = "forward"
    with _connect(proxy) as again:
        assert _echo(again, b"d") == b"d"


def test_reset_all_is_a_one_off(proxy: TcpProxy) -> None:
    sock = _connect(proxy)
    assert _echo(sock, b"a") == b"a"
    proxy.reset_all()
    with pytest.raises(ConnectionResetError):
        sock.sendall(b"b")
        sock.recv(100)
    sock.close()
    assert proxy.mode == "forward"
    with _connect(proxy) as again:
        assert _echo(again, b"c") == b"c"


def test_a_server_that_is_down_looks_like_a_reset() -> None:
    from infra.net import free_port

    # The RST may come while connecting (a loaded machine) or at the first send: either is a reset.
    with (
        TcpProxy(free_port()) as proxy,
        pytest.raises((ConnectionResetError, BrokenPipeError)),
        _connect(proxy) as sock,
    ):
        sock.sendall(b"x")
        if sock.recv(100) == b"":
            pytest.fail("closed, not reset")


def test_modes_are_checked(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        proxy.set_mode("drop")  # type: ignore[arg-type]
