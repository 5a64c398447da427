"""TLS on both ports, mutual TLS, and certificates renewed in place.

Threat: anyone on the path between a gateway and the service reads or alters decisions,
or reaches the ports without a certificate of the operator's authority. The certificates
here are made by ``openssl`` in the test; the clients are a real gRPC client, httpx and
Python's ssl module.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest

from tests.service.conftest import request, rls_stub, wait_until

CONFIG = """domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 10}
"""


class Pki:
    """A certificate authority and certificates it signs, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = root / "ca.pem"
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=limiter-test-ca",
        )  # fmt: skip

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True)

    def issue(self, name: str, cn: str, usage: str) -> tuple[Path, Path]:
        """A certificate (``usage``: serverAuth or clientAuth) and its key."""
        ext = self.root / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        self._openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name,
        )  # fmt: skip
        return self.root / f"{name}.pem", self.root / f"{name}.key"


def client_context(pki: Pki, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(*map(str, client))
    return context


def served_name(port: int, context: ssl.SSLContext, alpn: str | None = None) -> str:
    """The CN of the certificate a new connection to ``port`` is shown."""
    if alpn:
        context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        subject = dict(item[0] for item in tls.getpeercert()["subject"])
    return subject["commonName"]


def grpc_channel(port: int, pki: Pki, client: tuple[Path, Path] | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    return grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def test_mutual_tls_on_both_ports_and_renewal(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path)
    cert, key = pki.issue("server", "first", "serverAuth")
    client = pki.issue("client", "envoy", "clientAuth")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    service = serve(
        CONFIG, "--tls-cert", str(live_cert), "--tls-key", str(live_key),
        "--tls-client-ca", str(pki.ca),
    )  # fmt: skip
    grpc_port, http_port = service.grpc_port, service.http_port

    with grpc_channel(grpc_port, pki, client) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("d", {"user": "u"}), timeout=10)
        assert answer.overall_code == answer.OK
    for channel in (grpc_channel(grpc_port, pki, None), grpc.insecure_channel(service.target)):
        with channel, pytest.raises(grpc.RpcError) as err:
            rls_stub(channel).ShouldRateLimit(request("d", {"user": "u"}), timeout=3)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    base = f"https://127.0.0.1:{http_port}"
    with httpx.Client(verify=client_context(pki, client), timeout=10) as http:
        assert http.get(f"{base}/healthcheck").status_code == 200
        body = {"domain": "d", "descriptors": [{"entries": [{"key": "user", "value": "u"}]}]}
        assert http.post(f"{base}/json", json=body).status_code == 200
    with (
        httpx.Client(verify=client_context(pki, None), timeout=5) as http,
        pytest.raises(httpx.HTTPError),  # no client certificate: the handshake fails
    ):
        http.get(f"{base}/healthcheck")
    with httpx.Client(timeout=5) as http, pytest.raises(httpx.HTTPError):
        http.get(f"http://127.0.0.1:{http_port}/healthcheck")  # plain HTTP: no answer

    # Renewal: new files in place (as a certificate manager writes them, atomically).
    assert served_name(http_port, client_context(pki, client)) == "first"
    new_cert, new_key = pki.issue("renewed", "renewed", "serverAuth")
    for new, live in ((new_key, live_key), (new_cert, live_cert)):
        os.replace(new, live)
    assert wait_until(lambda: served_name(http_port, client_context(pki, client)) == "renewed", 10)
    assert served_name(grpc_port, client_context(pki, client), alpn="h2") == "renewed"
    with grpc_channel(grpc_port, pki, client) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("d", {"user": "u"}), timeout=10)
        assert answer.overall_code == answer.OK
    assert "TLS certificate reloaded" in service.logs()


def test_tls_without_client_certificates_and_bad_files(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path)
    cert, key = pki.issue("server", "only", "serverAuth")
    service = serve(CONFIG, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ports", "grpc")
    with grpc_channel(service.grpc_port, pki, None) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("d", {"user": "u"}), timeout=10)
        assert answer.overall_code == answer.OK
    assert service.http("GET", "/healthcheck")[0] == 200  # the HTTP port stays plain
    # A key that is not the certificate's: refused at start, naming the files.
    _, other_key = pki.issue("other", "other", "serverAuth")
    with pytest.raises(RuntimeError, match="TLS files"):
        serve(CONFIG, "--tls-cert", str(cert), "--tls-key", str(other_key))
