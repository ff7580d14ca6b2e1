#!/usr/bin/env python3
"""A fault-injecting HTTP proxy in front of a real S3 server (moto), for tests/scale_out.rs.

The S3 server stays real; this proxy forwards every request and response byte for byte (request
line, headers including Host and the signature, bodies with Content-Length or chunked framing,
keep-alive connections) and, when told to, answers a matching request itself instead:

    POST   /__faults__  {"action": "error", "status": 503, "code": "SlowDown", "count": 5,
                         "method": "PUT", "path_contains": "bucket/out/"}
           an S3-style XML error (500 InternalError, 503 SlowDown, ...) instead of forwarding;
    POST   /__faults__  {"action": "drop", "after_bytes": 1000, ...}
           reads that many bytes of the request body, then closes the client's connection
           without an answer (nothing reaches the server);
    POST   /__faults__  {"action": "hold", ...}
           holds the request (nothing reaches the server) until the rules are cleared, then
           forwards it: a test can kill a client while one of its requests is in flight;
    GET    /__faults__  {"rules": [... with "hits" and "remaining"], "held": n, "requests": n}
    DELETE /__faults__  removes every rule and releases held requests.

A rule matches when every field given matches: method, path_contains (a substring of the raw
request target, query included, or a list of substrings that must all occur); "count" is how many requests it takes (default 1, -1 for every request).
The first matching rule with a count left wins. Control requests never reach the server, and
bucket names cannot start with "__", so they never shadow an S3 request.

Usage: fault_proxy.py --upstream 127.0.0.1:PORT [--port 0] [--port-file FILE]
Prints "listening on 127.0.0.1:PORT" once it accepts connections. Standard library only.
"""

import argparse
import json
import os
import socket
import socketserver
import sys
import threading

CONTROL_PATH = "/__faults__"
MAX_HEAD_BYTES = 64 * 1024
ERROR_MESSAGES = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class Faults:
    """The rules, their hit counts and the held requests; shared by all connections."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []
        self.requests = 0
        self.held = 0
        self.release = threading.Event()

    def add(self, rule):
        action = rule.get("action", "error")
        if action not in ("error", "drop", "hold"):
            raise ValueError(f"unknown action {action!r}")
        if action == "error" and "status" not in rule:
            raise ValueError("an error rule needs a status")
        rule = dict(rule, action=action, hits=0, remaining=int(rule.get("count", 1)))
        with self.lock:
            if action == "hold":
                self.release.clear()
            self.rules.append(rule)

    def clear(self):
        with self.lock:
            self.rules = []
            self.release.set()

    def report(self):
        with self.lock:
            return {"rules": [dict(r) for r in self.rules], "held": self.held, "requests": self.requests}

    def match(self, method, target):
        """The rule this request takes (its counters updated), or None to forward it."""
        with self.lock:
            self.requests += 1
            for rule in self.rules:
                if rule["remaining"] == 0:
                    continue
                if rule.get("method") and rule["method"] != method:
                    continue
                wanted = rule.get("path_contains") or []
                if isinstance(wanted, str):
                    wanted = [wanted]
                if not all(w in target for w in wanted):
                    continue
                rule["hits"] += 1
                if rule["remaining"] > 0:
                    rule["remaining"] -= 1
                return dict(rule)
            return None

    def hold(self):
        with self.lock:
            self.held += 1
        self.release.wait()
        with self.lock:
            self.held -= 1


class Closed(Exception):
    """The peer closed the connection (or broke the framing)."""


class Stream:
    """A socket with a read buffer: heads read line by line, bodies relayed by their framing."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def read_head(self):
        """Bytes up to and including the blank line; Closed at a clean end between messages."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise Closed()
            self._fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:end], self.buf[end:]
        return head

    def read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def read_exact(self, n, sink):
        """Passes exactly n bytes to sink (in pieces)."""
        while n > 0:
            if not self.buf:
                self._fill()
            piece, self.buf = self.buf[:n], self.buf[n:]
            sink(piece)
            n -= len(piece)

    def read_to_close(self, sink):
        while True:
            if self.buf:
                sink(self.buf)
                self.buf = b""
            try:
                self._fill()
            except Closed:
                return

    def relay_body(self, headers, sink, to_close=False):
        """Relays a message body as framed (chunked, Content-Length, or up to close)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = self.read_line()
                sink(size_line)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, up to the blank line
                        line = self.read_line()
                        sink(line)
                        if line == b"\r\n":
                            return
                self.read_exact(size + 2, sink)
        elif "content-length" in headers:
            self.read_exact(int(headers["content-length"]), sink)
        elif to_close:
            self.read_to_close(sink)


def parse_head(head):
    """(first line parts, lower-cased header dict) of a request or response head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ", 2), headers


def response_has_body(method, status):
    return method != "HEAD" and not (100 <= status < 200 or status in (204, 304))


def send_simple(sock, status, reason, body, content_type, extra=""):
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    sock.sendall(head.encode("latin-1") + body)


def s3_error(rule, target):
    status = int(rule["status"])
    code, message = ERROR_MESSAGES.get(status, ("InternalError", "Injected error."))
    code = rule.get("code", code)
    message = rule.get("message", message)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{target}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    return status, code, body


class Handler(socketserver.BaseRequestHandler):
    faults = None  # set by main
    upstream = None  # (host, port)

    def handle(self):
        client = Stream(self.request)
        server = None
        try:
            while True:
                try:
                    head = client.read_head()
                except Closed:
                    return
                (method, target, *_), headers = parse_head(head)
                client_closes = "close" in headers.get("connection", "").lower()
                if target.startswith(CONTROL_PATH):
                    self.control(client, method, headers)
                    if client_closes:
                        return
                    continue
                rule = self.faults.match(method, target)
                if rule and rule["action"] == "error":
                    client.relay_body(headers, lambda _: None)
                    status, code, body = s3_error(rule, target)
                    send_simple(self.request, status, code, body, "application/xml")
                    if client_closes:
                        return
                    continue
                if rule and rule["action"] == "drop":
                    self.drop(client, headers, int(rule.get("after_bytes", 0)))
                    return
                if rule and rule["action"] == "hold":
                    self.faults.hold()
                if server is None:
                    server = Stream(socket.create_connection(self.upstream))
                if not self.forward(client, server, head, method, headers):
                    return
        except (Closed, OSError):
            return
        finally:
            if server is not None:
                server.sock.close()

    def forward(self, client, server, head, method, headers):
        """One request and its response, relayed as is. False when the connection must end."""
        server.sock.sendall(head)
        client.relay_body(headers, server.sock.sendall)
        response_head = server.read_head()
        while True:
            (_, status, *_), response_headers = parse_head(response_head)
            if int(status) != 100:
                break
            self.request.sendall(response_head)
            response_head = server.read_head()
        self.request.sendall(response_head)
        if response_has_body(method, int(status)):
            server.relay_body(response_headers, self.request.sendall, to_close=True)
        closing = "close" in response_headers.get("connection", "").lower()
        return not closing and (
            "content-length" in response_headers
            or "chunked" in response_headers.get("transfer-encoding", "").lower()
            or not response_has_body(method, int(status))
        )

    def drop(self, client, headers, after_bytes):
        """Reads up to after_bytes of the body, then closes without an answer."""
        length = int(headers.get("content-length", after_bytes))
        try:
            client.read_exact(min(after_bytes, length), lambda _: None)
        except Closed:
            pass
        self.request.shutdown(socket.SHUT_RDWR)

    def control(self, client, method, headers):
        chunks = []
        client.relay_body(headers, chunks.append)
        try:
            if method == "POST":
                self.faults.add(json.loads(b"".join(chunks) or b"{}"))
            elif method == "DELETE":
                self.faults.clear()
            elif method != "GET":
                raise ValueError(f"method {method} not supported on {CONTROL_PATH}")
        except (ValueError, TypeError) as e:
            send_simple(self.request, 400, "Bad Request", str(e).encode(), "text/plain")
            return
        body = json.dumps(self.faults.report()).encode()
        send_simple(self.request, 200, "OK", body, "application/json")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--port-file", help="write the port chosen here once listening")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    Handler.faults = Faults()
    Handler.upstream = (host, int(port))
    server = Server(("127.0.0.1", args.port), Handler)
    chosen = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{chosen}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"listening on 127.0.0.1:{chosen}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
