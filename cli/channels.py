"""The client channel the CLI clients (`qnext chat`, `qnext-admin`, `qnext bench` with asyncio)
open: plaintext, or TLS trusting a root certificate file. Imports grpc only when called (help
stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


def open_channel(addr: str, tls_ca: Path | None, aio: bool = False) -> grpc.Channel:
    """A channel to `addr` (a grpc.aio one with `aio`); with `tls_ca`, TLS trusting that PEM
    file. ValueError naming --tls-ca when the file cannot be read."""
    import grpc

    kind = grpc.aio if aio else grpc
    if tls_ca is None:
        return kind.insecure_channel(addr)
    try:
        root = tls_ca.read_bytes()
    except OSError as err:
        raise ValueError(f"--tls-ca {tls_ca}: {err.strerror}") from err
    return kind.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=root))
