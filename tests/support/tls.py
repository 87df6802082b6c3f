"""Throwaway certificates for tests (trustme): a CA, the servers' certificate for the
loopback names, and client certificates, written as PEM files.

`pair_tls()` makes what tools.pair.Launcher needs for a pair over mutual TLS;
`stranger()` a client certificate from another CA, which the servers must refuse.
"""

from __future__ import annotations

from pathlib import Path

import trustme

from tools.pair import PairTls
from tools.processes import ClientTls

# What the servers' certificate is valid for: the addresses the tests connect to.
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


def _write(ca: trustme.CA, folder: Path, name: str, *identities: str) -> tuple[Path, Path]:
    """A certificate for `identities` signed by `ca`, as `name.pem` and `name.key`."""
    issued = ca.issue_cert(*identities)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def pair_tls(folder: Path) -> PairTls:
    """A new CA under `folder`, and the servers' and the clients' certificates it signs."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_path = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server_cert, server_key = _write(ca, folder, "server", *SERVER_NAMES)
    client_cert, client_key = _write(ca, folder, "client", "delivery-service")
    return PairTls(ca_path, server_cert, server_key, client_cert, client_key)


def stranger(folder: Path, trusted: PairTls) -> ClientTls:
    """A client that trusts the pair's CA but holds a certificate from a CA of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = _write(trustme.CA(), folder, "stranger", "rogue-mta-client")
    return ClientTls(trusted.ca, cert, key)
