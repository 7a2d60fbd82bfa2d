"""Client certificates: checked when a connection is saved, loaded into TLS contexts.

``load_identity`` is called by the model (an unusable certificate is a 422
naming the field) and by ``client_context`` when a request needs the TLS
context; ``CertificateError.field`` is relative to
``http.tls.client_certificate``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12


class CertificateError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """A certificate chain and its unencrypted key, both PEM."""

    chain_pem: bytes
    key_pem: bytes


def load_identity(
    cert_pem: str | None,
    key_pem: str | None,
    pfx_base64: str | None,
    passphrase: str | None,
) -> Identity:
    """The identity in these fields, or CertificateError naming the field at fault."""
    password = passphrase.encode() if passphrase else None
    if pfx_base64:
        if cert_pem or key_pem:
            raise CertificateError("pfx_base64", "give either pfx_base64 or cert_pem + key_pem")
        return _from_pfx(pfx_base64, password)
    if not cert_pem:
        raise CertificateError("cert_pem", "required (or pfx_base64)")
    if not key_pem:
        raise CertificateError("key_pem", "required with cert_pem: its private key, PEM")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError:
        raise CertificateError(
            "cert_pem", "not a PEM certificate ('-----BEGIN CERTIFICATE-----' blocks)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password)
    except TypeError:
        reason = "is encrypted; set passphrase" if password is None else "is not encrypted"
        raise CertificateError("key_pem" if password is None else "passphrase", reason) from None
    except ValueError:
        field = (
            "passphrase" if password is not None and b"ENCRYPTED" in key_pem.encode() else "key_pem"
        )
        reason = (
            "does not decrypt key_pem"
            if field == "passphrase"
            else "not a PEM private key ('-----BEGIN PRIVATE KEY-----')"
        )
        raise CertificateError(field, reason) from None
    return _identity(certs, key, "key_pem")


def _from_pfx(pfx_base64: str, password: bytes | None) -> Identity:
    try:
        raw = base64.b64decode(pfx_base64, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("pfx_base64", "not base64") from None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(raw, password)
    except ValueError:
        raise CertificateError(
            "pfx_base64", "not a PKCS#12 file, or the passphrase does not open it"
        ) from None
    if key is None or cert is None:
        raise CertificateError("pfx_base64", "must hold a certificate and its private key")
    return _identity([cert, *extra], key, "pfx_base64")


def _identity(certs: list[x509.Certificate], key: object, key_field: str) -> Identity:
    public = getattr(key, "public_key", None)
    if public is None:
        raise CertificateError(key_field, "is not a private key")
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if public().public_bytes(der, spki) != certs[0].public_key().public_bytes(der, spki):
        raise CertificateError(key_field, "the private key does not match the certificate")
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    key_pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Identity(chain, key_pem)


def load_into(context: ssl.SSLContext, identity: Identity) -> None:
    """Give *context* the identity; the key never touches a file system on Linux."""
    with _private_file(identity.chain_pem + identity.key_pem) as path:
        context.load_cert_chain(path)


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    # ssl only loads keys from paths: an anonymous memory file where there is
    # one, else a file readable only by us, removed at once.
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("sluice-client-cert")
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "identity.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(data)
        yield path
