"""The sandbox gateway's HTTP server: the national service URL, faults, and ``/_sandbox/*`` controls.

Start it in-process with :func:`start_sandbox` (tests) or as ``python -m sandbox`` (demo, compose).
It speaks HTTP/1.1 with keep-alive, so a client's pooled connections are reused, and answers each
connection on its own thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from os import PathLike
from typing import Any
from urllib.parse import urlsplit

from sandbox.business import Gateway
from sandbox.catalog import load_catalog
from sandbox.checks import TOO_MANY_REQUESTS, NonceCache, Refusal, parse_envelope, verify_signature
from sandbox.faults import FaultInjector, FaultSettings
from sandbox.state import (
    DROPPED,
    ERROR_5XX,
    HUNG,
    OK_REPLY_LOST,
    RATE_LIMITED,
    SandboxState,
    now_cst,
)

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_SERVICE_PATH = "/fsi/api/rsfComIfsService/callService"
CONTROL_PREFIX = "/_sandbox/"
MAX_BODY_BYTES = 16 * 1024 * 1024
# Seconds an idle keep-alive connection stays open.
IDLE_TIMEOUT = 300

_ERROR_PAGES = {
    502: b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
    503: b"<html><head><title>503 Service Unavailable</title></head><body><h1>503 Service Unavailable</h1>"
    b"</body></html>",
}


class SandboxServer:
    """
    A fake national gateway on a local port, running on a background thread once started.

    :param host: Address to listen on.
    :param port: Port to listen on; 0 picks a free one (see :attr:`port`).
    :param catalog: The interface catalog file; the bundled ``include/interfaces.json`` when None.
    :param app_id: The app id signed requests must carry; any when None.
    :param app_secret: When set, every message must carry valid signed headers.
    :param service_path: The path messages are posted to.
    :param faults: Initial fault settings (see :class:`~sandbox.faults.FaultSettings`).
    """

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        catalog: str | PathLike[str] | None = None,
        app_id: str | None = None,
        app_secret: str | None = None,
        service_path: str = DEFAULT_SERVICE_PATH,
        **faults: Any,
    ) -> None:
        self.catalog = load_catalog(catalog)
        self.state = SandboxState()
        self.gateway = Gateway(self.catalog, self.state)
        self.faults = FaultInjector(**faults)
        self.app_id = app_id
        self.app_secret = app_secret
        self.service_path = service_path
        self._nonces = NonceCache()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """Return the address the server listens on."""
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        """Return the port the server listens on."""
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8900``."""
        return f"http://{self.host}:{self.port}"

    @property
    def service_url(self) -> str:
        """Return the URL messages are posted to."""
        return self.url + self.service_path

    def start(self) -> SandboxServer:
        """Serve on a background thread and return self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sandbox-gateway",
            daemon=True,
        )
        self._thread.start()
        changed = {k: v for k, v in self.faults.as_dict().items() if v != getattr(FaultSettings, k)}
        logger.info(
            "Sandbox gateway listening on %s (%d interfaces, signed headers %s, faults %s)",
            self.service_url,
            len(self.catalog),
            "required" if self.app_secret else "off",
            changed or "none",
        )
        return self

    def stop(self) -> None:
        """Stop serving, wake hung and waiting requests and close every connection."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.debug("Sandbox gateway on %s stopped", self.url)

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Change fault settings (names as on the command line, with ``_``) and return them all."""
        return self.faults.update(**settings)

    def reset(self, *, faults: bool = False) -> None:
        """Forget messages, settlements, visits and sign-ins; also clear the faults when asked."""
        self.state.reset()
        if faults:
            self.faults.reset()

    def stats(self) -> dict[str, Any]:
        """Return what ``GET /_sandbox/stats`` shows."""
        return self.state.stats()

    def messages(self) -> dict[str, Any]:
        """Return what ``GET /_sandbox/messages`` shows: ``{"messages": [...]}``."""
        return {"messages": self.state.messages()}

    def __enter__(self) -> SandboxServer:
        return self if self._thread else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- requests ---------------------------------------------------------------------------

    def serve_message(self, handler: _Handler, body: bytes) -> None:
        """Answer one message posted to the service path, with the faults drawn for it."""
        received_at = now_cst()
        try:
            envelope, parse_refusal = parse_envelope(body), None
        except Refusal as refusal:
            envelope, parse_refusal = None, refusal
        msgid, infno, code = (_text(envelope, name) for name in ("msgid", "infno", "fixmedins_code"))
        plan = self.faults.plan()

        # Refused at the door, before any processing: signature, then the institution's rate.
        door_refusal = self._door_refusal(handler, body, code)
        if door_refusal is not None:
            self._unprocessed(envelope, msgid, infno, door_refusal.outcome)
            if self._pause(handler, plan.delay_seconds):
                reply = self.gateway.reply(received_at=received_at, infcode=-1, err_msg=door_refusal.err_msg)
                retry_after = [("Retry-After", "1")] if door_refusal.status == 429 else []
                handler.send_body(door_refusal.status, _json_bytes(reply), headers=retry_after)
            return

        # Network and server faults: the message is never processed.
        if plan.hang:
            self._unprocessed(envelope, msgid, infno, HUNG)
            self._stopping.wait()
            handler.close_connection = True
            return
        if plan.drop:
            self._unprocessed(envelope, msgid, infno, DROPPED)
            handler.close_connection = True
            return
        if not self._pause(handler, plan.delay_seconds):
            self._unprocessed(envelope, msgid, infno, DROPPED)
            return
        if plan.error_status:
            self._unprocessed(envelope, msgid, infno, ERROR_5XX)
            handler.send_error_page(plan.error_status)
            return

        if parse_refusal is not None:
            self.state.record(None, None, parse_refusal.outcome)
            reply = self.gateway.reply(received_at=received_at, infcode=-1, err_msg=parse_refusal.err_msg)
            handler.send_body(200, _json_bytes(reply))
            return
        try:
            result = self.gateway.process(
                envelope, received_at=received_at, business_error=plan.business_error
            )
        except Exception as err:
            # The sandbox's own failure; the traceback stays at debug as it may quote input values.
            logger.error("Sandbox failed on infno %s msgid %s: %s", infno, msgid, type(err).__name__)
            logger.debug("Sandbox failure", exc_info=True)
            self.state.record(msgid, infno, ERROR_5XX)
            handler.send_error_page(500)
            return
        if result.applied_write and plan.lost_reply:
            self.state.record(msgid, infno, OK_REPLY_LOST)
            handler.close_connection = True
            return
        self.state.record(msgid, infno, result.outcome)
        handler.send_body(200, _json_bytes(result.reply))

    def serve_control(self, handler: _Handler, method: str, path: str, body: bytes) -> None:
        """Answer a ``/_sandbox/*`` request; never signed, never faulty."""
        name = path[len(CONTROL_PREFIX) :].rstrip("/")
        if method == "GET" and name == "health":
            answer: Any = {"status": "ok"}
        elif method == "GET" and name == "stats":
            answer = self.stats()
        elif method == "GET" and name == "messages":
            answer = self.messages()
        elif method == "GET" and name == "faults":
            answer = self.faults.as_dict()
        elif method == "POST" and name in ("faults", "reset"):
            try:
                settings = json.loads(body or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("the body must be a JSON object")
                if name == "faults":
                    answer = self.set_faults(**settings)
                else:
                    self.reset(faults=bool(settings.get("faults")))
                    answer = {"status": "ok"}
            except ValueError as err:
                handler.send_body(400, _json_bytes({"error": str(err)}))
                return
        else:
            handler.send_body(404, _json_bytes({"error": f"no control endpoint {method} {path}"}))
            return
        handler.send_body(200, _json_bytes(answer))

    def _door_refusal(self, handler: _Handler, body: bytes, fixmedins_code: str | None) -> Refusal | None:
        if self.app_secret:
            try:
                verify_signature(
                    handler.headers, body, app_id=self.app_id, app_secret=self.app_secret, nonces=self._nonces
                )
            except Refusal as refusal:
                return refusal
        if not self.faults.admit(fixmedins_code or ""):
            return Refusal(TOO_MANY_REQUESTS, status=429, outcome=RATE_LIMITED)
        return None

    def _pause(self, handler: _Handler, seconds: float) -> bool:
        """Wait ``seconds`` of injected latency; False (connection to close) when the server stops."""
        if seconds > 0 and self._stopping.wait(seconds):
            handler.close_connection = True
            return False
        return True

    def _unprocessed(self, envelope: Any, msgid: str | None, infno: str | None, outcome: str) -> None:
        self.gateway.note_unprocessed(envelope)
        self.state.record(msgid, infno, outcome)

    def _track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)
        if self._stopping.is_set():
            _shut(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)


def start_sandbox(
    port: int = 0,
    *,
    host: str = DEFAULT_HOST,
    catalog: str | PathLike[str] | None = None,
    app_id: str | None = None,
    app_secret: str | None = None,
    service_path: str = DEFAULT_SERVICE_PATH,
    **faults: Any,
) -> SandboxServer:
    """
    Start a sandbox gateway on a background thread and return it; call ``stop()`` when done.

    :param port: Port to listen on; 0 picks a free one.
    :param host: Address to listen on.
    :param catalog: The interface catalog file; the bundled one when None.
    :param app_id: The app id signed requests must carry; any when None.
    :param app_secret: When set, every message must carry valid signed headers.
    :param service_path: The path messages are posted to.
    :param faults: Fault settings: ``latency_ms``, ``jitter_ms``, ``error_5xx``, ``drop``,
        ``lost_reply``, ``business_error``, ``rate_limit``, ``hang``, ``seed``.
    """
    server = SandboxServer(
        host=host,
        port=port,
        catalog=catalog,
        app_id=app_id,
        app_secret=app_secret,
        service_path=service_path,
        **faults,
    )
    return server.start()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Threads are not joined on close: stop() shuts their connections instead.
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[_Handler], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a machine without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MedinsSandbox/1.0"
    timeout = IDLE_TIMEOUT
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sandbox._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        sandbox = self.server.sandbox
        if path.startswith(CONTROL_PREFIX):
            sandbox.serve_control(self, method, path, body)
        elif path != sandbox.service_path:
            self.send_body(
                404, _json_bytes({"error": f"no service at {path}; post to {sandbox.service_path}"})
            )
        elif method != "POST":
            self.send_body(405, _json_bytes({"error": "post the message"}), headers=[("Allow", "POST")])
        else:
            sandbox.serve_message(self, body)

    def _read_body(self) -> bytes | None:
        """Read the request body; None when it cannot be read (the connection is then closed)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self.send_body(413 if length > 0 else 400, _json_bytes({"error": "bad Content-Length"}))
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _read_chunked(self) -> bytes | None:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                self.send_body(413, _json_bytes({"error": "body too large"}))
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def send_body(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json; charset=utf-8",
        headers: list[tuple[str, str]] | tuple[()] = (),
    ) -> None:
        """Send a complete response with its length, so the connection can be kept alive."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error_page(self, status: int) -> None:
        """Send a gateway failure: a JSON error for 500, a proxy's HTML page for 502 and 503."""
        if status in _ERROR_PAGES:
            self.send_body(status, _ERROR_PAGES[status], content_type="text/html; charset=utf-8")
        else:
            body = _json_bytes({"infcode": -1, "err_msg": "系统内部错误", "output": None})
            self.send_body(status, body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def _json_bytes(payload: Any) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from a \\u escape cannot be UTF-8: fall back to escaped ASCII.
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def _text(envelope: dict[str, Any] | None, name: str) -> str | None:
    value = envelope.get(name) if envelope else None
    return value if isinstance(value, str) else None


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
