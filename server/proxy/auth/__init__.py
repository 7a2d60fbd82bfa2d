"""How a connection authenticates, one module per ``http.auth.type``
(basic, digest, oauth2, cookie, token); ``authenticator.Authenticator`` is
what the engine calls."""
