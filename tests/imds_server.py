"""A fake EC2 instance metadata service for the spot tests: IMDSv2 only (a PUT for a session
token first, as kindling's launch template requires), a spot interruption notice per instance
(told apart by the caller's address, as each namespace host has its own), and everything else
passed on to moto's metadata service (the instance role's credentials) when one is given."""

from __future__ import annotations

import json
import secrets
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOTICE_PATH = "/latest/meta-data/spot/instance-action"


class FakeImds:
    def __init__(self, address: str, upstream: str = ""):
        self.notices: dict[str, dict] = {}
        """Caller address -> its instance-action document."""
        self.notice_reads: dict[str, int] = {}
        self.tokens: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                if self.path != "/latest/api/token" or not self.headers.get(
                        "X-aws-ec2-metadata-token-ttl-seconds"):
                    self.send_error(400)
                    return
                token = secrets.token_hex(16)
                fake.tokens.add(token)
                self.answer(200, token.encode())

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in fake.tokens:
                    self.send_error(401)  # IMDSv1 is off
                    return
                caller = self.client_address[0]
                if self.path == NOTICE_PATH:
                    fake.notice_reads[caller] = fake.notice_reads.get(caller, 0) + 1
                    notice = fake.notices.get(caller)
                    if notice is None:
                        self.send_error(404)
                    else:
                        self.answer(200, json.dumps(notice).encode())
                    return
                if not upstream:
                    self.send_error(404)
                    return
                try:
                    with urllib.request.urlopen(upstream + self.path, timeout=10) as answer:
                        self.answer(answer.status, answer.read())
                except urllib.error.HTTPError as exc:
                    self.send_error(exc.code)

            def answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.endpoint = f"http://{address}:{self.server.server_address[1]}"

    def notify(self, caller: str, time: str = "2026-12-06T18:00:00Z") -> None:
        """EC2's two-minute notice for the instance at caller's address."""
        self.notices[caller] = {"action": "terminate", "time": time}

    def clear(self, caller: str) -> None:
        self.notices.pop(caller, None)


@contextmanager
def fake_imds(address: str, upstream: str = ""):
    imds = FakeImds(address, upstream)
    thread = threading.Thread(target=imds.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield imds
    finally:
        imds.server.shutdown()
        imds.server.server_close()
