"""The viewer's HTTP server: static front end plus a small JSON API (stdlib only).

Routes (GET and HEAD; POST only for the two group writes; every other method is refused):

    /                                   the single-page app (static/index.html)
    /static/NAME                        one of the packaged static files (no subfolders)
    /api/index                          runs and circuits under the given paths
    /api/circuit?id=C                   graph with layout, task-panel data, the circuit's run id
    /api/graph?id=C[&view=groups][&expand=G...][&trim=0.9]
                                        the graph trimmed and/or at group level, the circuit's groups
    POST /api/groups/save {circuit, name, nodes}   add or replace a user group (sidecar X.groups.json)
    POST /api/groups/delete {circuit, name}        remove a user group
    /api/node?circuit=C&node=N          node detail (corpus snippets, task values, attention), cached
    /api/node?run=R&node=N              the same without the task part
    /api/model?run=R[&circuit=C]        config, training curves, weight density, embedding channels
    /api/embedding?run=R&channels=1,2   top tokens of embedding channels
    /export/circuit.html?id=C           self-contained HTML of the circuit (download)
    /export/circuit.svg?id=C            static SVG of the circuit (download)

Entries are named by catalog ids only (see catalog.py): unknown ids are 404, ids that try to leave
the given paths are 403. When bound to a loopback address, a request is answered only when its Host
header is `localhost`, `[::1]` or the bound address itself (each with or without a port); anything else
(`127.evil.com`, `127.0.0.1.nip.io`) is 403, which stops DNS-rebinding pages from reading the API.
Binding beyond loopback needs `allow_remote=True` (`view --allow-remote`); the Host header is then not
checked. Idle connections are closed after `timeout` seconds; dropped connections are logged as one line.

The group writes are the only writes: refused (403) by a read-only server and by one serving beyond
loopback; they need `Content-Type: application/json` (a cross-site form cannot send that without a CORS
preflight, which this server never grants) and, when the browser sends an Origin, the server's own origin.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sparsecircuits.circuits.circuit_file import read_circuit
from sparsecircuits.errors import UserError
from sparsecircuits.viewer.catalog import Catalog, Forbidden, NotFound
from sparsecircuits.viewer.detail import NodeDetails, RunPool, decoded_vocab
from sparsecircuits.viewer.export import circuit_title, export_html, export_svg
from sparsecircuits.viewer.graph import build_graph, circuit_meta
from sparsecircuits.viewer.groups import (
    all_groups,
    circuit_nodes,
    delete_user_group,
    group_graph,
    groups_path,
    load_user_groups,
    save_user_group,
    trim,
)
from sparsecircuits.viewer.model_panel import default_channels, embedding_top_tokens, model_panel

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAX_CHANNELS = 64
MAX_BODY = 256 * 1024  # bytes of a POST body (a group of a few thousand node names)


class BadRequest(Exception):
    """A malformed request (HTTP 400)."""


class NotImplementedRoute(Exception):
    """A method the route does not take (HTTP 501)."""


def static_files() -> dict[str, bytes]:
    """Every packaged static file by name, read once (the server never opens a path from a request)."""
    folder = resources.files("sparsecircuits.viewer").joinpath("static")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}


class ViewerApp:
    """State shared by all request threads: the catalog, loaded runs and cached results."""

    def __init__(self, paths: list[str | Path], n_windows: int = 64, read_only: bool = False):
        self.catalog = Catalog(paths)
        self.read_only = read_only
        self.runs = RunPool(n_windows)
        self.static = static_files()
        self._vocab: dict[Path, list[str]] = {}
        self._density_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # ---- circuits ---------------------------------------------------------------------------------

    def circuit(self, circuit_id: str) -> dict[str, Any]:
        return read_circuit(self.catalog.circuit(circuit_id).path)

    def circuit_view(self, circuit_id: str) -> dict[str, Any]:
        circuit = self.circuit(circuit_id)
        run = self.catalog.run_of_circuit(circuit_id)
        return {
            "id": circuit_id,
            "name": self.catalog.circuit(circuit_id).path.name,
            "title": circuit_title(circuit),
            "run": run.id if run else None,
            "graph": build_graph(circuit),
            "meta": circuit_meta(circuit),
            "task_info": task_info(circuit),
        }

    def graph_view(self, query: dict[str, str], expand: list[str], writable: bool) -> dict[str, Any]:
        """The circuit's graph, trimmed for display (`trim` share) and/or at group level (`view=groups`,
        the groups in `expand` drawn as their members), with the circuit's groups. A broken sidecar is
        reported in `groups_error` (the head groups still work); the circuit file is never changed."""
        circuit_id = _required(query, "id")
        circuit = self.circuit(circuit_id)
        view = query.get("view") or "nodes"
        if view not in ("nodes", "groups"):
            raise BadRequest("view must be 'nodes' or 'groups'")
        shown, trim_info = circuit, None
        if query.get("trim"):
            try:
                share = float(query["trim"])
            except ValueError:
                raise BadRequest("trim must be a number in (0, 1]") from None
            shown, trim_info = trim(circuit, share)
        try:
            user, error = load_user_groups(self._groups_file(circuit_id), circuit_nodes(circuit)), None
        except UserError as e:
            user, error = [], str(e)
        groups = all_groups(circuit, user)
        graph = build_graph(shown) if query.get("graph") != "0" else None
        if graph is not None and view == "groups":
            graph = group_graph(graph, groups, set(expand))
        return {
            "id": circuit_id,
            "view": view,
            "graph": graph,
            "groups": [g.to_json() for g in groups],
            "groups_error": error,
            "groups_file": self._groups_file(circuit_id).name,
            "trim": trim_info,
            "writable": writable,
        }

    def _groups_file(self, circuit_id: str) -> Path:
        return groups_path(self.catalog.circuit(circuit_id).path)

    def save_group(self, body: dict[str, Any]) -> dict[str, Any]:
        circuit_id = _body_str(body, "circuit")
        circuit = self.circuit(circuit_id)
        path = self.catalog.circuit(circuit_id).path
        groups = save_user_group(path, circuit_nodes(circuit), body.get("name"), body.get("nodes"))
        return {"groups": groups}

    def delete_group(self, body: dict[str, Any]) -> dict[str, Any]:
        circuit_id = _body_str(body, "circuit")
        circuit = self.circuit(circuit_id)
        path = self.catalog.circuit(circuit_id).path
        return {"groups": delete_user_group(path, circuit_nodes(circuit), body.get("name"))}

    def node(self, query: dict[str, str]) -> dict[str, Any]:
        node = _required(query, "node")
        task, siblings = None, []
        if "circuit" in query:
            circuit = self.circuit(query["circuit"])
            run = self.catalog.run_of_circuit(query["circuit"])
            if run is None:
                raise NotFound("the circuit's run is not under the given paths; pass its run directory too")
            task = (circuit.get("task") or {}).get("name") if isinstance(circuit.get("task"), dict) else None
            siblings = [n for n in circuit.get("nodes") or [] if isinstance(n, str)]
        else:
            run = self.catalog.run(_required(query, "run"))
        details = NodeDetails(self.runs.get(run.path))
        return {"run": run.id, "task_name": task, **details.get(node, task, siblings)}

    # ---- runs -------------------------------------------------------------------------------------

    def vocab(self, run_path: Path) -> list[str]:
        """The run's decoded vocabulary; a tokenizer.json that no longer matches its recorded hash is refused."""
        from sparsecircuits.data.tokenizer import load_tokenizer
        from sparsecircuits.io import read_json
        from sparsecircuits.run import check_run_tokenizer

        with self._lock:
            if run_path not in self._vocab:
                config = read_json(run_path / "config.json", "run config")
                check_run_tokenizer(run_path, config if isinstance(config, dict) else {})
                self._vocab[run_path] = decoded_vocab(load_tokenizer(run_path / "tokenizer.json"))
            return self._vocab[run_path]

    def model(self, query: dict[str, str]) -> dict[str, Any]:
        run = self.catalog.run(_required(query, "run"))
        panel = model_panel(run.path, self._density_cache)
        circuit = self.circuit(query["circuit"]) if "circuit" in query else None
        d_model = int(panel["config"]["model"].get("d_model", 0))
        channels = default_channels(circuit, d_model)
        panel["embedding"] = embedding_top_tokens(
            run.path / "model.safetensors", self.vocab(run.path), channels
        )
        panel["id"] = run.id
        return panel

    def embedding(self, query: dict[str, str]) -> list[dict[str, Any]]:
        run = self.catalog.run(_required(query, "run"))
        try:
            channels = [int(c) for c in _required(query, "channels").split(",") if c.strip()]
        except ValueError:
            raise BadRequest("channels must be comma-separated integers") from None
        if not channels or len(channels) > MAX_CHANNELS:
            raise BadRequest(f"give 1 to {MAX_CHANNELS} channels")
        return embedding_top_tokens(run.path / "model.safetensors", self.vocab(run.path), channels)


def task_info(circuit: dict[str, Any]) -> dict[str, Any]:
    """Description and two example pairs of the circuit's task, or {"error"} when unavailable."""
    task = circuit.get("task") if isinstance(circuit.get("task"), dict) else {}
    name = task.get("name")
    try:
        from sparsecircuits.tasks import get_task

        t = get_task(name)
        pairs = t.pairs(2, "val", 0)
    except ImportError:
        return {"error": "the task API is not available in this version"}
    except (UserError, KeyError, ValueError, TypeError) as e:
        return {"error": f"task {name!r} unavailable: {e}"}
    return {
        "name": t.name,
        "description": t.description,
        "cue": t.cue,
        "examples": [
            {"text": p.text, "correct": p.correct, "wrong": p.wrong}
            for pair in pairs
            for p in (pair.pos, pair.neg)
        ],
    }


def _body_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"missing string {key!r} in the request body")
    return value


def _required(query: dict[str, str], key: str) -> str:
    value = query.get(key)
    if not value:
        raise BadRequest(f"missing query parameter {key!r}")
    return value


# ---- HTTP ---------------------------------------------------------------------------------------------


LOOPBACK_NAMES = ("localhost", "[::1]")
IDLE_TIMEOUT_S = 30.0  # a connection that sends no complete request within this is closed


def host_name(header: str | None) -> str | None:
    """The name part of a Host header ("127.0.0.1:8000" -> "127.0.0.1", "[::1]:80" -> "[::1]"), lower
    case; None when the header is missing or malformed (bad port, unbracketed IPv6, spaces)."""
    if not header or header != header.strip() or " " in header:
        return None
    if header.startswith("["):
        end = header.find("]")
        name, rest = header[: end + 1], header[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = header.partition(":")
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return name.lower() if name not in ("", "[]") else None


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        app: ViewerApp,
        verbose: bool = False,
        allow_remote: bool = False,
        timeout: float = IDLE_TIMEOUT_S,
    ):
        self.app, self.verbose, self.allow_remote, self.idle_timeout = app, verbose, allow_remote, timeout
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        if not (self.is_loopback() or allow_remote):
            self.server_close()
            raise UserError(
                f"refusing to serve on {address[0]}, which is reachable from other machines: "
                "bind a loopback address, or pass --allow-remote to serve beyond this machine"
            )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.server_address[0]).is_loopback
        except ValueError:
            return False

    def allowed_hosts(self) -> set[str]:
        """Host names answered while bound to loopback: localhost, [::1] and the bound address literal."""
        bound = str(ipaddress.ip_address(self.server_address[0]))
        return {*LOOPBACK_NAMES, f"[{bound}]" if ":" in bound else bound}

    def writable(self) -> bool:
        """Whether group writes are taken: not read-only, and bound to loopback (beyond it anyone on the
        network could write files)."""
        return not self.app.read_only and self.is_loopback()

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request with this Host header may be answered (any, when serving beyond loopback)."""
        if not self.is_loopback():
            return self.allow_remote
        return host_name(header) in self.allowed_hosts()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line for a connection the client dropped or let time out; a traceback for anything else."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            print(f"viewer: connection from {client_address[0]} dropped: {error!r}", file=sys.stderr)
        else:
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "sparsecircuits-viewer"
    sys_version = ""

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_POST(self) -> None:
        self._serve(head=False, post=True)

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # applied to the socket by StreamRequestHandler.setup
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:
        """Always one line (timeouts, malformed requests), whatever --verbose says."""
        print(f"viewer: {self.client_address[0]}: {format % args}", file=sys.stderr)

    # ---- dispatch ---------------------------------------------------------------------------------

    def _serve(self, head: bool, post: bool = False) -> None:
        try:
            self._check_host()
            status, ctype, body, extra = self._route_post() if post else self._route()
        except Forbidden as e:
            status, ctype, body, extra = _error(HTTPStatus.FORBIDDEN, str(e))
        except NotFound as e:
            status, ctype, body, extra = _error(HTTPStatus.NOT_FOUND, str(e))
        except (BadRequest, UserError) as e:
            status, ctype, body, extra = _error(HTTPStatus.BAD_REQUEST, str(e))
        except NotImplementedRoute as e:
            status, ctype, body, extra = _error(HTTPStatus.NOT_IMPLEMENTED, str(e))
        except Exception:  # a bug: keep serving, report it
            traceback.print_exc(file=sys.stderr)
            status, ctype, body, extra = _error(
                HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)"
            )
        self._send(status, ctype, body, extra, head)

    def _check_host(self) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or not self.server.host_allowed(hosts[0] if hosts else None):
            raise Forbidden("unexpected Host header")

    def _route(self) -> tuple[int, str, bytes, dict[str, str]]:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if "\x00" in path or ".." in path.split("/") or "\\" in path:
            raise Forbidden("path outside the viewer's roots")
        lists = parse_qs(parts.query, keep_blank_values=True)
        query = {k: v[-1] for k, v in lists.items()}
        app = self.server.app
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        api: dict[str, Callable[[dict[str, str]], Any]] = {
            "/api/index": lambda q: app.catalog.listing(),
            "/api/circuit": lambda q: app.circuit_view(_required(q, "id")),
            "/api/node": app.node,
            "/api/model": app.model,
            "/api/embedding": app.embedding,
            "/api/graph": lambda q: app.graph_view(q, lists.get("expand", []), self.server.writable()),
        }
        if path in api:
            return HTTPStatus.OK, "application/json", _json(api[path](query)), {}
        if path in ("/export/circuit.html", "/export/circuit.svg"):
            return self._export(path.rsplit(".", 1)[1], _required(query, "id"))
        raise NotFound(f"no such page: {path}")

    def _route_post(self) -> tuple[int, str, bytes, dict[str, str]]:
        """The two group writes; any other POST is 501, as before there were writes."""
        app = self.server.app
        routes = {"/api/groups/save": app.save_group, "/api/groups/delete": app.delete_group}
        path = urlsplit(self.path).path
        if path not in routes:
            raise NotImplementedRoute(f"POST is not supported for {path}")
        if not self.server.writable():
            raise Forbidden("this viewer is read-only: groups cannot be saved here")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host')}":
            raise Forbidden("cross-origin write refused")
        if self.headers.get_content_type() != "application/json":
            raise BadRequest("send the request body as application/json")
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            raise BadRequest("a POST needs a Content-Length") from None
        if not 0 < length <= MAX_BODY:
            raise BadRequest(f"the request body must be 1 to {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return HTTPStatus.OK, "application/json", _json(routes[path](body)), {}

    def _static(self, name: str) -> tuple[int, str, bytes, dict[str, str]]:
        files = self.server.app.static
        if "/" in name or name not in files:
            raise NotFound(f"no static file {name!r}")
        ctype = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
        return HTTPStatus.OK, ctype, files[name], {}

    def _export(self, kind: str, circuit_id: str) -> tuple[int, str, bytes, dict[str, str]]:
        app = self.server.app
        circuit = app.circuit(circuit_id)
        title = circuit_title(circuit, app.catalog.circuit(circuit_id).path.name)
        stem = app.catalog.circuit(circuit_id).path.name.removesuffix(".circuit.json")
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem) or "circuit"
        if kind == "svg":
            body, ctype = export_svg(circuit, title), CONTENT_TYPES[".svg"]
        else:
            body, ctype = export_html(circuit, title), CONTENT_TYPES[".html"]
        disposition = {"Content-Disposition": f'attachment; filename="{stem}.{kind}"'}
        return HTTPStatus.OK, ctype, body.encode("utf-8"), disposition

    def _send(self, status: int, ctype: str, body: bytes, extra: dict[str, str], head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _finite(obj: Any) -> Any:
    """obj with NaN and infinities replaced by None (JSON has no such numbers; files may hold them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json(obj: Any) -> bytes:
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


def _error(status: HTTPStatus, message: str) -> tuple[int, str, bytes, dict[str, str]]:
    return status, "application/json", _json({"error": message, "status": int(status)}), {}


def make_server(
    paths: list[str | Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    n_windows: int = 64,
    verbose: bool = False,
    allow_remote: bool = False,
    timeout: float = IDLE_TIMEOUT_S,
    read_only: bool = False,
) -> ViewerServer:
    """A ready server (call serve_forever, or use it in a thread); port 0 picks a free port.

    A non-loopback `host` is a UserError unless `allow_remote`; `timeout` closes idle connections;
    `read_only` refuses the group writes."""
    app = ViewerApp(paths, n_windows, read_only)
    return ViewerServer((host, port), app, verbose, allow_remote, timeout)
