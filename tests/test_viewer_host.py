"""The viewer's Host check (DNS rebinding), the --allow-remote opt-in and idle-connection timeouts.

Everything runs on loopback against an empty catalog (a tmp folder), so the tests need no model.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time

import pytest
from click.testing import CliRunner

from cli_helpers import run_cli
from sparsecircuits.errors import UserError
from sparsecircuits.viewer.commands import view
from sparsecircuits.viewer.server import ViewerServer, host_name, make_server

GOOD_HOSTS = [
    "127.0.0.1",
    "127.0.0.1:{port}",
    "127.0.0.1:80",
    "localhost",
    "localhost:{port}",
    "LocalHost:{port}",
    "[::1]",
    "[::1]:{port}",
]
HOSTILE_HOSTS = [
    "127.evil.com",
    "127.evil.com:{port}",
    "127.0.0.1.nip.io",
    "127.0.0.1.nip.io:{port}",
    "localhost.evil.com",
    "evil.localhost",
    "attacker.example:80",
    "127.0.0.2",  # loopback, but not the bound address
    "127.1",  # a non-canonical spelling of 127.0.0.1
    "2130706433",
    "0x7f.0.0.1",
    "::1",  # IPv6 without brackets
    "[::1]evil",
    "[::1",
    "[]",
    "127.0.0.1:80:80",
    "127.0.0.1:http",
    "localhost:99999999",
    ":{port}",
    "",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    httpd = make_server([tmp_path_factory.mktemp("empty")], "127.0.0.1", 0, timeout=1.0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def get_index(server: ViewerServer, host_headers: list[str]) -> int:
    """Status of GET /api/index sent with exactly these Host headers (none when the list is empty)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.putrequest("GET", "/api/index", skip_host=True)
        for h in host_headers:
            conn.putheader("Host", h)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_loopback_hosts_are_answered(server, host):
    assert get_index(server, [host.format(port=server.server_address[1])]) == 200


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_hosts_are_refused(server, host):
    assert get_index(server, [host.format(port=server.server_address[1])]) == 403


def test_missing_or_repeated_host_is_refused(server):
    assert get_index(server, []) == 403
    assert get_index(server, ["localhost", "evil.com"]) == 403


def test_host_name_parsing():
    assert host_name("127.0.0.1:8000") == "127.0.0.1"
    assert host_name("[::1]:8000") == "[::1]"
    assert host_name("LOCALHOST") == "localhost"
    assert host_name(" localhost") is None and host_name("local host") is None and host_name(None) is None


def test_non_loopback_bind_needs_allow_remote(tmp_path, capsys):
    with pytest.raises(UserError, match="--allow-remote"):
        make_server([tmp_path], "0.0.0.0", 0)
    capsys.readouterr()
    assert run_cli(["view", str(tmp_path), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-remote" in err
    # opted in: bound (nothing is served here), and the Host header is not checked
    httpd = make_server([tmp_path], "0.0.0.0", 0, allow_remote=True)
    try:
        assert not httpd.is_loopback() and httpd.host_allowed("my-machine.lan:8000")
    finally:
        httpd.server_close()


def test_idle_connection_times_out_with_one_log_line(server, capfd):
    capfd.readouterr()
    for partial in (b"", b"GET /api/index HTTP/1.1\r\nHost: localhost\r\n"):  # silent, then half a request
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            s.sendall(partial)
            t0 = time.monotonic()
            assert s.recv(1024) == b""  # the server closed the idle connection
            assert time.monotonic() - t0 < 8  # timeout is 1 s in this fixture
    time.sleep(0.2)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and all("timed out" in line for line in lines), err
    assert "Traceback" not in err


def test_abandoned_connection_logs_one_line_not_a_traceback(server, capfd):
    capfd.readouterr()
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    assert get_index(server, ["localhost"]) == 200  # still serving
    time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err


def test_dropped_connection_error_is_one_line(server, capfd):
    capfd.readouterr()
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        server.handle_error(None, ("127.0.0.1", 40000))
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "dropped" in err and "Traceback" not in err


def test_cli_help_documents_allow_remote():
    result = CliRunner().invoke(view, ["--help"])
    assert "--allow-remote" in result.output
