"""A real RFC 3161 timestamp authority on loopback: stdlib ``http.server`` in a thread, answering each
``application/timestamp-query`` POST with a signed ``TimeStampResp`` made by pyHanko's own ``DummyTimeStamper`` from a
TSA certificate of the test CA. ``answer`` makes it misbehave the ways a real authority can."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from asn1crypto import core, keys, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyhanko.sign.timestamps import DummyTimeStamper

from tests.pki import Identity

#: stamp: a granted, signed timestamp; garbage: 200 with the reply's content type and bytes that are no TimeStampResp;
#: rejection: a well-formed TimeStampResp with status "rejection"; hang: never answers until the server stops.
Answer = Literal["stamp", "garbage", "rejection", "hang"]


class _Refusal(core.Sequence):
    """A TimeStampResp without a token, as RFC 3161 sends a refusal (asn1crypto's own class requires the token)."""

    _fields = [("status", tsp.PKIStatusInfo)]


@dataclass
class TSA:
    """A running authority: its URL, and the requests it received (parsed ``TimeStampReq``s)."""

    url: str
    answer: Answer
    requests: list[tsp.TimeStampReq] = field(default_factory=list)


@contextmanager
def tsa_server(identity: Identity, *, answer: Answer = "stamp", at: datetime | None = None) -> Iterator[TSA]:
    """Serve timestamps on 127.0.0.1 and a free port, signed with ``identity`` (an RSA key with the timeStamping
    extended key usage); ``at``: the time every timestamp states (default: the time of the request)."""
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    key = serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
    stamper = DummyTimeStamper(
        tsa_cert=asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)),
        tsa_key=keys.PrivateKeyInfo.load(key.private_bytes(serialization.Encoding.DER,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption())),
        fixed_dt=at)
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Type") != "application/timestamp-query":
                self._reply(415, b"expected application/timestamp-query", "text/plain")
                return
            request = tsp.TimeStampReq.load(body)
            tsa.requests.append(request)
            if answer == "hang":
                stop.wait()
                return
            if answer == "garbage":
                self._reply(200, b"<html>not a timestamp</html>", "application/timestamp-reply")
            elif answer == "rejection":
                refused = _Refusal({"status": {"status": "rejection", "status_string": ["policy not accepted"],
                                               "fail_info": {"unaccepted_policy"}}})
                self._reply(200, refused.dump(), "application/timestamp-reply")
            else:
                self._reply(200, stamper.request_tsa_response(request).dump(), "application/timestamp-reply")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # quiet: the tests read ``requests`` instead
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tsa = TSA(url=f"http://127.0.0.1:{server.server_address[1]}/tsa", answer=answer)
    thread = threading.Thread(target=server.serve_forever, name="test-tsa", daemon=True)
    thread.start()
    try:
        yield tsa
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: a port bound and released (a connection is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/tsa"
