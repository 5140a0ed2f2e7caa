#!/usr/bin/env python3
"""A small Docker registry token server for the token-auth registry of pullkeeper's tests.

It implements the token protocol that CNCF distribution (Debian's docker-registry) speaks:
    GET /token?service=SERVICE&scope=repository:NAME:ACTIONS[&scope=...]  with HTTP Basic creds
answers {"token", "access_token", "expires_in", "issued_at"} where the token is an ES256 JWT whose
header carries the signing certificate in `x5c`; the registry trusts it because the same
certificate is its `rootcertbundle`. Wrong or missing credentials get 401, as a real token
server does for a login it cannot verify, so a client with a bad dockerconfigjson fails.

It also answers the OAuth2 form of the same request (`POST /token`, form fields grant_type=password,
username, password, service, scope), which containerd tries first when it holds a username and
password; wrong credentials get 401 there too.

Usage: token_server.py --port P --key KEY.pem --cert CERT.pem --issuer ISS --service SVC \
                       --users USERS.json   (a JSON object {"user": "password"}, re-read on every
                                             request so a credential broker can rotate passwords)
`GET /healthz` answers 200 once it is serving. Python stdlib plus `cryptography` (a moto dependency).
"""

import argparse
import base64
import hmac
import json
import secrets
import sys
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TOKEN_LIFETIME_S = 300
ALLOWED_ACTIONS = ("pull", "push")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Signer:
    def __init__(self, key_path: str, cert_path: str):
        with open(key_path, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(self.key, ec.EllipticCurvePrivateKey) or self.key.curve.name != "secp256r1":
            raise SystemExit("token_server: the signing key must be an EC P-256 key (ES256)")
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "ES256", "x5c": self.x5c}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def parse_scope(scope: str):
    """`repository:pullkeeper/test:pull,push` -> ("repository", "pullkeeper/test", ["pull", "push"]).
    The type ends at the first ':' and the actions start after the last one, so a name that holds a
    ':' (e.g. one with a host:port prefix) still parses."""
    parts = scope.rsplit(":", 1)
    if len(parts) != 2 or ":" not in parts[0]:
        return None
    typ, name = parts[0].split(":", 1)
    actions = [a for a in parts[1].split(",") if a]
    return typ, name, actions


def make_handler(signer: Signer, users_path: str, issuer: str, service: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "pullkeeper-test-token-server"

        def log_message(self, fmt, *args):  # one line per request on stderr, no credentials
            sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

        def reply(self, status: int, body: dict, extra_headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra_headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def unauthorized(self, message: str):
            self.reply(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": message}]},
                [("WWW-Authenticate", 'Basic realm="pullkeeper-test-token-server"')],
            )

        def authenticated_user(self):
            header = self.headers.get("Authorization", "")
            if not header.lower().startswith("basic "):
                return None
            try:
                user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return self.check_password(user, password)

        def check_password(self, user: str, password: str):
            with open(users_path) as f:
                expected = json.load(f).get(user)
            if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
                return None
            return user

        def issue(self, user: str, scopes):
            access = []
            for scope in scopes:
                for one in scope.split(" "):
                    parsed = parse_scope(one)
                    if parsed is None:
                        continue
                    typ, name, actions = parsed
                    if typ != "repository":
                        continue
                    granted = [a for a in actions if a in ALLOWED_ACTIONS]
                    access.append({"type": typ, "name": name, "actions": granted})
            now = int(time.time())
            claims = {
                "iss": issuer,
                "sub": user,
                "aud": service,
                "exp": now + TOKEN_LIFETIME_S,
                "nbf": now - 10,
                "iat": now,
                "jti": secrets.token_hex(16),
                "access": access,
            }
            token = signer.sign(claims)
            issued = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.reply(
                200,
                {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME_S, "issued_at": issued},
            )

        def do_POST(self):
            if urlsplit(self.path).path != "/token":
                self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            if form.get("service", [service])[0] != service:
                self.reply(400, {"error": "invalid_request", "error_description": "unknown service"})
                return
            if form.get("grant_type", [""])[0] != "password":
                self.reply(400, {"error": "unsupported_grant_type"})
                return
            user = self.check_password(form.get("username", [""])[0], form.get("password", [""])[0])
            if user is None:
                self.reply(401, {"error": "invalid_grant", "error_description": "wrong username or password"})
                return
            self.issue(user, form.get("scope", []))

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self.reply(200, {"ok": True})
                return
            if url.path != "/token":
                self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]})
                return
            query = parse_qs(url.query)
            if query.get("service", [service])[0] != service:
                self.reply(400, {"errors": [{"code": "INVALID_REQUEST", "message": "unknown service"}]})
                return
            user = self.authenticated_user()
            if user is None:
                self.unauthorized("authentication required: wrong or missing username/password")
                return
            self.issue(user, query.get("scope", []))

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--users", required=True)
    args = p.parse_args()
    with open(args.users) as f:
        json.load(f)  # fail at start on an unreadable or malformed file
    signer = Signer(args.key, args.cert)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(signer, args.users, args.issuer, args.service))
    sys.stderr.write("token server listening on %s:%d\n" % (args.host, args.port))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
