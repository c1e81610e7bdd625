"""TLS for both ports: one certificate, key and optional client CA, read at start-up, serve
gRPC and the HTTP API alike, so that turning TLS on never leaves one door in plain text.

With a client CA both ports require and verify client certificates (mutual TLS). SIGHUP
reads the files again (app.py): `ReloadableTls` serves the new ones from the next connection
on, on both ports at once; connections already open keep theirs.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsError(ValueError):
    """The TLS settings or files cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None

    @classmethod
    def load(cls, cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerTls | None:
        """The files read and checked, or None when no certificate is configured. Raises
        TlsError for half a pair, an unreadable file, or a pair the TLS library rejects."""
        if not cert and not key:
            if client_ca:
                raise TlsError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS")
            return None
        if not (cert and key):
            raise TlsError("TLS needs both tls_cert and tls_key")
        pems = {}
        for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", client_ca)):
            if path is None:
                continue
            try:
                pems[name] = path.read_bytes()
            except OSError as err:
                raise TlsError(f"{name} {path}: {err.strerror or err}") from None
        tls = cls(
            cert, key, client_ca, pems["tls_cert"], pems["tls_key"], pems.get("tls_client_ca")
        )
        tls.ssl_context()  # a bad pair fails here, at start, not at the first handshake
        return tls

    @property
    def mutual(self) -> bool:
        return self.client_ca_pem is not None

    def grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.cert_pem)], root_certificates=self.client_ca_pem
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTP port's context: the same pair and, for mutual TLS, the same client CA,
        from the bytes gRPC serves (not the files again, which may have changed since)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # The ssl module loads a pair from a file only: a private one, gone at once.
            with tempfile.TemporaryDirectory() as folder:
                pair = Path(folder) / "pair.pem"
                pair.touch(mode=0o600)
                pair.write_bytes(self.cert_pem + b"\n" + self.key_pem)
                context.load_cert_chain(pair)
                os.remove(pair)
            if self.client_ca_pem is not None:
                context.load_verify_locations(cadata=self.client_ca_pem.decode("ascii"))
                context.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, UnicodeDecodeError, OSError) as err:
            raise TlsError(f"tls_cert {self.cert} / tls_key {self.key}: {err}") from None
        return context


class ReloadableTls:
    """The TLS in use on both ports, replaced whole by `replace`: gRPC asks for it at each
    new connection (dynamic credentials), and the HTTP port takes it at each handshake (its
    context's SNI callback, which runs whether or not the client names a server)."""

    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self._http = tls.ssl_context()
        # gRPC's fetcher runs on gRPC's threads, `replace` on the event loop: the fetcher
        # only reads `_grpc_current`, so no replacement is ever lost between the two.
        self._grpc_current = self._grpc_served = tls.grpc_configuration()

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_current,
            self._grpc_fetch,
            require_client_authentication=self.tls.mutual,
        )

    def _grpc_fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core at each new connection: None keeps the configuration it has.
        current = self._grpc_current
        if current is self._grpc_served:
            return None
        self._grpc_served = current
        return current

    def ssl_context(self) -> ssl.SSLContext:
        """The listening context: the first one, whose SNI callback hands each handshake the
        context in use (itself until a `replace`)."""
        self._http.sni_callback = self._pick
        return self._http

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self._http

    def replace(self, tls: ServerTls) -> None:
        """Serve `tls` (the same files, read again: client certificates stay required or
        not, as gRPC fixed at start) from the next connection on."""
        self._http = tls.ssl_context()
        self._grpc_current = tls.grpc_configuration()
        self.tls = tls
