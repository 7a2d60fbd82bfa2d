"""TLS client contexts for connections: CA bundle, verification, client certificate.

Contexts are built once per distinct setting (hashed) and reused: loading
CAs and keys costs more than a small request.
"""

from __future__ import annotations

import hashlib
import json
import ssl

from server.connections.certificates import load_identity, load_into
from server.connections.model import TLSSettings

MAX_CONTEXTS = 1000


class TLSContexts:
    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}

    def __repr__(self) -> str:
        return f"<TLSContexts cached={len(self._contexts)}>"

    def for_settings(self, tls: TLSSettings | None) -> ssl.SSLContext | bool:
        """True/False (default verification or none) or a context of our own.

        Raises CertificateError if the client certificate cannot be loaded.
        """
        if tls is None:
            return True
        cert = tls.client_certificate
        if cert is None and not tls.ca_bundle_pem:
            return tls.verify
        key = hashlib.sha256(
            json.dumps(tls.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()
        ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        ctx = ssl.create_default_context(cadata=tls.ca_bundle_pem or None)
        if not tls.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert is not None:
            identity = load_identity(cert.cert_pem, cert.key_pem, cert.pfx_base64, cert.passphrase)
            load_into(ctx, identity)
        if len(self._contexts) >= MAX_CONTEXTS:
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[key] = ctx
        return ctx
