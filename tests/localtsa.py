"""A real RFC 3161 time-stamping authority on loopback: `openssl ts -reply` behind a small HTTP server.

A root CA and a TSA certificate (extendedKeyUsage critical timeStamping) are made with the
openssl command; each POSTed request is answered by `openssl ts -reply`. No network needed.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OPENSSL = shutil.which("openssl")

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/ca.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL, "the openssl command is needed for the local TSA"
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class LocalTsa:
    url: str
    ca_file: Path
    root: Path
    requests: int = 0


def make_authority(root: Path) -> None:
    """A root CA and a TSA certificate signed by it (EC P-256: quick to make)."""
    root.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
        "-subj", "/CN=Loopback Test Root CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=Loopback Test TSA",
        cwd=root,
    )  # fmt: skip
    (root / "ext.cnf").write_text(
        "extendedKeyUsage=critical,timeStamping\nkeyUsage=critical,digitalSignature\n"
        "basicConstraints=CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tsa.pem", "-days", "3650", "-extfile", "ext.cnf", cwd=root,
    )  # fmt: skip
    (root / "serial").write_text("01\n")
    (root / "tsa.cnf").write_text(_CONFIG.format(dir=root))


@contextmanager
def running_tsa(root: Path) -> Iterator[LocalTsa]:
    """Serve `openssl ts -reply` on a loopback port until the block ends."""
    make_authority(root)
    lock = threading.Lock()
    tsa = LocalTsa(url="", ca_file=root / "ca.pem", root=root)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:  # one serial file, one answer at a time
                tsa.requests += 1
                query, reply = root / "query.tsq", root / "reply.tsr"
                query.write_bytes(body)
                done = subprocess.run(
                    [OPENSSL or "openssl", "ts", "-reply", "-config", str(root / "tsa.cnf"),
                     "-queryfile", str(query), "-out", str(reply)],
                    capture_output=True, timeout=60, check=False,
                )  # fmt: skip
                answer = reply.read_bytes() if done.returncode == 0 else b""
            if not answer:
                self.send_error(500, "openssl ts -reply failed")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tsa.url = f"http://127.0.0.1:{server.server_address[1]}/tsa"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tsa
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
