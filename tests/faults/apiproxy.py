#!/usr/bin/env python3
"""A fault-injecting HTTPS proxy in front of the test platform's kube-apiserver (tests/faults.rs).

It terminates TLS with a throw-away certificate, forwards every request to the real API server
(streaming the answer, so watches work), and answers a share of the writes to Secrets and
ServiceAccounts itself with 429 Too Many Requests (Retry-After: 1) or 503, as an overloaded API
server does. The share is read from STATE (JSON {"fail_share": 0.3}) on every request, so a test
changes it while the proxy runs. With "stall_before": T (seconds since the epoch) in STATE, every
watch request that started before T stalls silently, as a half-dead connection does: the next time
its answer would move on (an event, or the API server ending it), the proxy forwards nothing more
and keeps the connection open without a byte, forever. Watches started after T are forwarded.
Every request is logged to LOG as one line: "INJECT|FWD METHOD PATH CODE"; a stalled watch as
"STALL METHOD PATH".

usage: apiproxy.py UPSTREAM CA_FILE STATE LOG PORT_FILE
"""
import http.client
import http.server
import json
import os
import random
import re
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

UPSTREAM, CA, STATE, LOG, PORT_FILE = sys.argv[1:6]
up = urllib.parse.urlsplit(UPSTREAM)
upstream_ctx = ssl.create_default_context(cafile=CA)
WRITE = re.compile(r"^/api/v1/namespaces/[^/]+/(secrets|serviceaccounts)(/[^/?]+)?(\?.*)?$")
log_lock = threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
       "proxy-connection", "content-length"}


def log(line):
    with log_lock, open(LOG, "a") as f:
        f.write(line + "\n")


def state():
    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def share():
    try:
        return float(state().get("fail_share", 0))
    except (TypeError, ValueError):
        return 0.0


def stalled(started):
    before = state().get("stall_before")
    return isinstance(before, (int, float)) and started < before


def is_watch(path):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    return query.get("watch", [""])[0] in ("true", "1")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        started = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command in ("POST", "PUT", "PATCH") and WRITE.match(self.path) \
                and random.random() < share():
            code = random.choice([429, 503])
            reason = "TooManyRequests" if code == 429 else "ServiceUnavailable"
            status = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                 "status": "Failure", "message": f"injected {code}",
                                 "reason": reason, "details": {"retryAfterSeconds": 1},
                                 "code": code}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(status)))
            if code == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(status)
            log(f"INJECT {self.command} {self.path} {code}")
            return
        conn = http.client.HTTPSConnection(up.hostname, up.port, context=upstream_ctx,
                                           timeout=600)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        log(f"FWD {self.command} {self.path} {resp.status}")
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        watch = is_watch(self.path)
        try:
            while True:
                chunk = resp.read1(65536)
                if watch and stalled(started):
                    conn.close()
                    log(f"STALL {self.command} {self.path}")
                    threading.Event().wait()
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    d = tempfile.mkdtemp(prefix="pk-apiproxy.")
    cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = Server(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with open(PORT_FILE + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(PORT_FILE + ".tmp", PORT_FILE)
    server.serve_forever()


main()
