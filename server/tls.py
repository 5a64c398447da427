"""TLS for the service's ports, from PEM files, picking up renewed certificates by itself.

One ``ServerTls`` holds the server's certificate chain and key and, for mutual TLS, the
certificate authorities whose client certificates it requires. Both ports take it:
the gRPC server through dynamic credentials (gRPC asks for a newer configuration before
each handshake), the HTTP port as an ``ssl.SSLContext`` per new connection. ``refresh``
(a housekeeping step) notices changed files and loads them; until a renewed pair loads
cleanly (a certificate written before its key, say) the last good one stays in use.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import grpc
from limiter.server.reload import stamp

from limiter.errors import ConfigError

log = logging.getLogger("limiter.server")


class ServerTls:
    """The service's TLS material (see the module docstring)."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamps = [stamp(p) for p in self.paths]
        self._pem, self._context = self._load()  # raises ConfigError
        self._fresh: grpc.ServerCertificateConfiguration | None = None

    def _load(self) -> tuple[tuple[bytes, bytes, bytes | None], ssl.SSLContext]:
        """Read the files and check them by building the HTTP port's context."""
        try:
            cert, key = Path(self.cert).read_bytes(), Path(self.key).read_bytes()
            ca = Path(self.client_ca).read_bytes() if self.client_ca else None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.cert, self.key)
            if ca is not None:
                context.load_verify_locations(cadata=ca.decode("ascii"))
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"TLS files {', '.join(self.paths)}: {exc}") from None
        return (cert, key, ca), context

    def refresh(self) -> None:
        """Load the files again if they changed (a housekeeping step)."""
        stamps = [stamp(p) for p in self.paths]
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            self._pem, self._context = self._load()
        except ConfigError as exc:
            log.error("TLS files changed but do not load; keeping the last good ones: %s", exc)
            return
        cert, key, ca = self._pem
        self._fresh = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        log.info("TLS certificate reloaded", extra={"fields": {"cert": self.cert}})

    def context(self) -> ssl.SSLContext:
        """The HTTP port's context for a new connection (the latest that loaded)."""
        return self._context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for the gRPC port that follow ``refresh``."""
        cert, key, ca = self._pem
        first = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        return grpc.dynamic_ssl_server_credentials(
            first, self._fetch, require_client_authentication=ca is not None
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC asks before each handshake: a newer configuration, or None (no change)."""
        fresh, self._fresh = self._fresh, None
        return fresh
