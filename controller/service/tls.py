"""TLS for the search service: the server's certificate (and, for mutual TLS, the CA its clients'
certificates must chain to), and the client's channel credentials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.cluster_auth import read_pem  # a ValueError naming the option

__all__ = ["ServerTls", "client_credentials", "read_pem"]


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key; ``client_ca`` set: clients must present a
    certificate it signed (mutual TLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
        """Read the PEM files (ValueError names the option of a bad one)."""
        return cls(read_pem(cert, "--tls-cert"), read_pem(key, "--tls-key"),
                   read_pem(client_ca, "--tls-client-ca") if client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials for ``add_secure_port``."""
        return grpc.ssl_server_credentials([(self.key, self.cert)],
                                           root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def client_credentials(ca: bytes | None, cert: bytes | None = None,
                       key: bytes | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting ``ca`` (None: the system's roots), presenting ``cert`` and
    ``key`` when the server asks for a client certificate."""
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)
