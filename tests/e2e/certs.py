"""A throwaway certificate authority for TLS tests: a CA, a server certificate for 127.0.0.1 /
localhost and a client certificate, all made in the test (cryptography), written as PEM."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer: x509.Name, signer, ca: bool, sans=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(root: Path) -> dict[str, Path]:
    """ca.pem, server.pem / server.key (SAN 127.0.0.1, localhost), client.pem / client.key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("qnext-test-ca", ca_key, _name("qnext-test-ca"), ca_key, ca=True)
    files = {"ca": root / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    sans = (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"))
    for who, names in (("server", sans), ("client", ())):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"qnext-test-{who}", key, ca.subject, ca_key, ca=False, sans=names)
        files[who] = root / f"{who}.pem"
        files[f"{who}_key"] = root / f"{who}.key"
        files[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}_key"].write_bytes(_pem_key(key))
    return files
