#!/usr/bin/env python3
"""A small HTTP/1.1 file server for the image-source tests and the benchmark.

Serves the files of ROOT on 127.0.0.1 (never another address), prints its port on the
first line of stdout, and adds what Python's http.server lacks for these tests:
  - it counts GET/HEAD requests per path:      GET /__count?path=/x.img -> "N"
    and, apart, the GETs answered with the file's body: /__count?path=/x.img&what=body
  - it answers a conditional GET (If-None-Match / If-Modified-Since) with 304 when the
    file is unchanged
  - it can hold a body midway:                 GET /__hold?path=/x.img&after=N makes
    responses for /x.img stop after N body bytes until GET /__release?path=/x.img
  - it can drop a connection midway:           GET /__drop?path=/x.img&after=N&times=K
    makes the next K requests for /x.img send the full Content-Length, then only N
    bytes of the body, then close the socket
  - ETag (size and mtime) and Last-Modified on every file response
  - paths under /private/ need the request header "X-Token: let-me-in" (else 401)
  - /redirect/REST answers 302 to /REST; /redirect-file/ANY answers 302 to file:///etc/passwd
With --tls CERT KEY it speaks https instead. Control paths (/__...) are not counted. It stops when stdin closes (its parent died)
or on SIGTERM.
"""
import email.utils
import http.server
import os
import socketserver
import ssl
import sys
import threading
import urllib.parse

ROOT = sys.argv[1]
counts = {}
bodies = {}
drops = {}
holds = {}  # path -> (after, threading.Event)
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def control(self, url):
        q = urllib.parse.parse_qs(url.query)
        path = q.get("path", [""])[0]
        with lock:
            if url.path == "/__count":
                table = bodies if q.get("what", [""])[0] == "body" else counts
                return self.reply(200, str(table.get(path, 0)).encode())
            if url.path == "/__hold":
                holds[path] = (int(q["after"][0]), threading.Event())
                return self.reply(200, b"ok")
            if url.path == "/__release":
                hold = holds.pop(path, None)
                if hold:
                    hold[1].set()
                return self.reply(200, b"ok")
            if url.path == "/__drop":
                drops[path] = [int(q["after"][0]), int(q.get("times", ["1"])[0])]
                return self.reply(200, b"ok")
        return self.reply(404, b"no such control")

    def serve(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/__"):
            return self.control(url)
        with lock:
            counts[url.path] = counts.get(url.path, 0) + 1
            drop = drops.get(url.path)
            drop_after = None
            if drop and drop[1] > 0:
                drop[1] -= 1
                drop_after = drop[0]
        if url.path.startswith("/redirect/"):
            return self.reply(302, b"", [("Location", url.path[len("/redirect"):])])
        if url.path.startswith("/redirect-file/"):
            return self.reply(302, b"", [("Location", "file:///etc/passwd")])
        if url.path.startswith("/private/") and self.headers.get("X-Token") != "let-me-in":
            return self.reply(401, b"token required\n")
        rel = urllib.parse.unquote(url.path).lstrip("/")
        full = os.path.realpath(os.path.join(ROOT, rel))
        if not full.startswith(os.path.realpath(ROOT) + os.sep) or not os.path.isfile(full):
            return self.reply(404, b"not found\n")
        st = os.stat(full)
        etag = '"%x-%x"' % (st.st_size, st.st_mtime_ns)
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        unchanged = False
        if inm is not None:
            unchanged = etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
        elif ims is not None:
            try:
                unchanged = int(st.st_mtime) <= email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                unchanged = False
        if unchanged and self.command == "GET":
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        if self.command == "GET":
            with lock:
                bodies[url.path] = bodies.get(url.path, 0) + 1
                hold = holds.get(url.path)
        else:
            hold = None
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if drop_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.wfile.flush()
        with open(full, "rb") as f:
            if hold is not None:
                self.wfile.write(f.read(hold[0]))
                self.wfile.flush()
                hold[1].wait()
            if drop_after is None:
                self.connection.sendfile(f, f.tell())
            else:
                self.wfile.write(f.read(drop_after))
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

    do_GET = serve
    do_HEAD = serve


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that stops reading (a refused image, a cancelled import) is expected.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError)):
            super().handle_error(request, client_address)


def main():
    server = Server(("127.0.0.1", 0), Handler)
    if len(sys.argv) == 5 and sys.argv[2] == "--tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # returns when the parent closes our stdin or exits
    server.shutdown()


if __name__ == "__main__":
    main()
