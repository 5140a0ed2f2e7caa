#!/usr/bin/env python3
"""The demo's credential broker: a generic HTTP token endpoint for pullkeeper's `http` provider.

GET  /token   -> {"username", "password", "expires_in"}: the registry login currently valid.
POST /rotate  -> issues a new password and makes it the only one the registry's token server
                 accepts (it rewrites the token server's users file, which is re-read per request),
                 so the previous credential stops working at once, as a real rotation does.
Usage: broker.py --port P --users USERS.json --user NAME --password INITIAL   (loopback only)
"""

import argparse
import json
import os
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--users", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    state = {"password": args.password, "rotations": 0}
    lock = threading.Lock()

    def publish(password):
        tmp = args.users + ".tmp"
        with open(tmp, "w") as f:
            json.dump({args.user: password}, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, args.users)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/token":
                self.reply(404, {"error": "not found"})
                return
            with lock:
                self.reply(200, {"username": args.user, "password": state["password"], "expires_in": 60})

        def do_POST(self):
            if self.path != "/rotate":
                self.reply(404, {"error": "not found"})
                return
            with lock:
                state["password"] = secrets.token_urlsafe(18)
                state["rotations"] += 1
                publish(state["password"])
                self.reply(200, {"rotations": state["rotations"]})

        def log_message(self, fmt, *a):
            # Never print credentials: log only the request line.
            sys.stderr.write("broker: %s\n" % (self.requestline,))

    publish(state["password"])
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    sys.stderr.write("broker listening on 127.0.0.1:%d\n" % args.port)
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
