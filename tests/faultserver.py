#!/usr/bin/env python3
"""faultserver.py: a fault-injecting HTTP/1.1 server for the download tests (stdlib only).

    python3 tests/faultserver.py --port 0 --root DIR --portfile FILE [--timeout S]
                                 [--tls-cert PEM --tls-key PEM]

Binds 127.0.0.1 only, writes the port it got to FILE (atomically), serves the
files under DIR and exits on SIGTERM or SIGINT, or after --timeout seconds
(default 120) so that a test which dies cannot leave it behind. With
--tls-cert and --tls-key it speaks HTTPS instead.

A plain path /NAME serves DIR/NAME with a strong ETag (the file's SHA-256),
answers If-None-Match with 304, and a single "Range: bytes=A-[B]" with 206 and
Content-Range (or 416 and "bytes */SIZE" when A is past the end); If-Range
with another ETag gets the whole file. A first path segment picks a fault:

    /drop-half[-K]/NAME   announce the whole body, send half of it, close
    /short[-K]/NAME       announce the whole body, send 90% of it, close
    /fail500[-K]/NAME     answer 500
    /fail429[-K]/NAME     answer 429 with Retry-After: 1
    /fail503[-K]/NAME     answer 503 with Retry-After: an HTTP-date 2 s ahead
    /trickle[-K]/NAME     send 16 bytes every 0.25 s
    /range-half[-K]/NAME  answer 206 with the first half of the bytes asked for
    /long/NAME            send 4096 bytes more than announced, then close
    /wrong/NAME           the same length with the middle byte flipped
    /norange/NAME         ignore Range and If-None-Match: always 200
    /badrange/NAME        answer any Range with 206 for the whole file (bytes 0-)
    /chunked/NAME         Transfer-Encoding: chunked, no Content-Length
    /linked/SHA/NAME      add X-Linked-Etag: "SHA"
    /linked-redirect/SHA/NAME   302 to /NAME with X-Linked-Etag: "SHA"
    /redirect-ok/NAME     302 to /NAME
    /redirect-loop/N      302 to /redirect-loop/N+1, forever
    /redirect-ftp/NAME    302 to ftp://127.0.0.1/NAME
    /redirect-file/NAME   302 to file:///etc/passwd

With -K the fault hits only the first K requests of that exact path, after
which the path is served like a plain one; without it, every request.
GET /_stats answers {"requests": {path: n}, "bytes": {path: n}}: requests
seen and file body bytes actually sent, per path. GET /_reset clears the counters.
"""
import argparse
import email.utils
import hashlib
import http.server
import json
import os
import re
import signal
import ssl
import sys
import threading
import time

COUNTED = re.compile(r"^(drop-half|short|fail500|fail429|fail503|trickle|range-half)(?:-(\d+))?$")
lock = threading.Lock()
requests = {}   # path -> requests seen
sent = {}       # path -> body bytes sent


def count_request(path):
    with lock:
        requests[path] = requests.get(path, 0) + 1
        return requests[path]


def count_bytes(path, n):
    with lock:
        sent[path] = sent.get(path, 0) + n


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."

    def log_message(self, fmt, *args):  # quiet: the tests print what matters
        pass

    def do_HEAD(self):
        self.handle_any(head=True)

    def do_GET(self):
        self.handle_any(head=False)

    def reply(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)  # error pages are not counted: only files' bodies are

    def send_body(self, body, step=65536, pause=0.0):
        """Writes body in pieces, counting what went out. A piece is counted
        before it is written, so that a client which has read everything and
        asks /_stats at once sees it; a piece whose write fails is taken back."""
        path = self.path.split("?")[0]
        for i in range(0, len(body), step):
            piece = body[i:i + step]
            count_bytes(path, len(piece))
            try:
                self.wfile.write(piece)
            except OSError:
                count_bytes(path, -len(piece))
                self.close_connection = True
                return
            if pause:
                time.sleep(pause)

    def handle_any(self, head):
        path = self.path.split("?")[0]
        if path == "/_stats":
            with lock:
                doc = json.dumps({"requests": requests, "bytes": sent}).encode()
            return self.reply(200, [("Content-Type", "application/json")], doc)
        if path == "/_reset":
            with lock:
                requests.clear()
                sent.clear()
            return self.reply(200, body=b"ok\n")
        nth = count_request(path)
        parts = path.lstrip("/").split("/")
        mode, fault = "plain", False
        m = COUNTED.match(parts[0])
        if m:
            mode, fault = m.group(1), m.group(2) is None or nth <= int(m.group(2))
            parts = parts[1:]
        elif parts[0] in ("long", "wrong", "norange", "badrange", "chunked", "redirect-ok",
                          "redirect-loop", "redirect-ftp", "redirect-file"):
            mode, fault, parts = parts[0], True, parts[1:]
        elif parts[0] in ("linked", "linked-redirect") and len(parts) >= 3:
            mode, fault, parts = parts[0], True, parts[1:]
        if not fault:
            mode = "plain"
        extra = []
        if mode in ("linked", "linked-redirect"):
            extra.append(("X-Linked-Etag", '"%s"' % parts[0]))
            parts = parts[1:]
        name = "/".join(parts)
        if mode == "fail500":
            return self.reply(500, body=b"injected failure\n")
        if mode == "fail429":
            return self.reply(429, [("Retry-After", "1")], b"slow down\n")
        if mode == "fail503":
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return self.reply(503, [("Retry-After", when)], b"come back later\n")
        if mode == "redirect-loop":
            n = int(name) if name.isdigit() else 0
            return self.reply(302, [("Location", "/redirect-loop/%d" % (n + 1))])
        if mode == "redirect-ftp":
            return self.reply(302, [("Location", "ftp://127.0.0.1/" + name)])
        if mode == "redirect-file":
            return self.reply(302, [("Location", "file:///etc/passwd")])
        if mode in ("redirect-ok", "linked-redirect"):
            return self.reply(302, extra + [("Location", "/" + name)])
        self.serve_file(name, mode, extra, head)

    def serve_file(self, name, mode, extra, head):
        full = os.path.realpath(os.path.join(self.root, name))
        if not full.startswith(os.path.realpath(self.root) + os.sep) or not os.path.isfile(full):
            return self.reply(404, body=b"not found\n")
        with open(full, "rb") as fh:
            data = fh.read()
        etag = '"%s"' % hashlib.sha256(data).hexdigest()
        if mode == "wrong" and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0x01]) + data[mid + 1:]
        headers = extra + [("ETag", etag), ("Accept-Ranges", "bytes")]
        ignore = mode in ("norange", "chunked")
        inm = self.headers.get("If-None-Match")
        if inm and not ignore and (inm.strip() == "*" or
                                   etag in [t.strip() for t in inm.split(",")]):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        status, start, end = 200, 0, len(data)  # end exclusive
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        r = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip()) if rng else None
        if r and not ignore and (if_range is None or if_range.strip() == etag):
            first = int(r.group(1))
            last = int(r.group(2)) if r.group(2) else len(data) - 1
            if first >= len(data):
                return self.reply(416, headers + [("Content-Range", "bytes */%d" % len(data))])
            if first <= last:
                status, start, end = 206, first, min(last + 1, len(data))
        if mode == "badrange" and status == 206:
            start, end = 0, len(data)
        if mode == "range-half" and len(data) > 1:
            status, end = 206, start + max(1, (end - start) // 2)
        if status == 206:
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end - 1, len(data))))
        body = data[start:end]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not head:
                self.send_chunked(body)
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if mode == "drop-half":
            body, self.close_connection = body[:len(body) // 2], True
        elif mode == "short":
            body, self.close_connection = body[:len(body) * 9 // 10], True
        elif mode == "long":
            body, self.close_connection = body + b"X" * 4096, True
        if mode == "trickle":
            self.close_connection = True
            self.send_body(body, step=16, pause=0.25)
        else:
            self.send_body(body)

    def send_chunked(self, body, step=65536):
        path = self.path.split("?")[0]
        try:
            for i in range(0, len(body), step):
                piece = body[i:i + step]
                count_bytes(path, len(piece))  # before the write, as in send_body
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                except OSError:
                    count_bytes(path, -len(piece))
                    raise
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True  # a trickling handler must not keep the process alive

    def handle_error(self, request, client_address):
        # Clients hang up on purpose here (size limits, low-speed aborts).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--root", required=True)
    ap.add_argument("--portfile", required=True)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    Handler.root = args.root
    server = Server(("127.0.0.1", args.port), Handler)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tmp = args.portfile + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("%d\n" % server.server_address[1])
    os.replace(tmp, args.portfile)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    stop.wait(args.timeout)
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
