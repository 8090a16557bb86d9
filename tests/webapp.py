"""A small web app to run inside a capsule (stdlib only, on the guest's python3), for the port-proxy tests and
benchmarks. GET answers the request it saw as JSON, /bytes/N answers N bytes, /redirect redirects to the app's
own loopback address (/redirect?to=URL to URL); POST echoes its body (sized or chunked); HEAD answers headers
only; a WebSocket upgrade gets an echo socket (text frames come back as `echo:<text>`).

It binds 127.0.0.1 only, so reaching it from outside also proves envd's port forwarding.
"""

from __future__ import annotations

SOURCE = r'''
import base64, hashlib, http.server, json, sys, urllib.parse

PORT = int(sys.argv[1])
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path.startswith("/bytes/"):
            return self.send(200, b"x" * int(self.path[7:]), "application/octet-stream")
        if self.path == "/redirect":
            return self.send(302, b"", extra=[("Location", f"http://127.0.0.1:{PORT}/echo?from=redirect")])
        if self.path.startswith("/redirect?to="):
            return self.send(302, b"", extra=[("Location", urllib.parse.unquote(self.path[13:]))])
        seen = {"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        self.send(200, json.dumps(seen).encode())

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size + 2)[:-2]
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send(200, body, "application/octet-stream")

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.end_headers()

    def websocket(self):
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            if size == 126:
                size = int.from_bytes(self.rfile.read(2), "big")
            elif size == 127:
                size = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(size)))
            if opcode == 8:
                return self.frame(8, data[:2])
            if opcode == 9:
                self.frame(10, data)
            elif opcode in (1, 2):
                self.frame(opcode, b"echo:" + data if opcode == 1 else data)

    def frame(self, opcode, data):
        size = len(data)
        if size < 126:
            head = bytes([0x80 | opcode, size])
        elif size < 65536:
            head = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
        self.wfile.write(head + data)
        self.wfile.flush()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
'''

PATH = "/tmp/webapp.py"
