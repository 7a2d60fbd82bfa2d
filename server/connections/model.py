"""A REST API connection, field for field as the product guide describes it.

The JSON shape is the ``Connection`` schema of ``/v1/openapi.json``, made
from these models; ``http`` is what templates see as ``connection.http``.
Every rule reports the field it is about (``http.auth.param_name``), and no
error carries the value it rejected: ``server.connections.documents`` turns
errors, secrets and views of these models into what the API and the store
need.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from cryptography import x509
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from server.proxy.success_path import parse_path
from server.proxy.templating import check_template
from server.proxy.urls import URLError, join_uri
from sluice.connect import ConnectProtocolError, is_ipv4_shorthand, normalise_host

Mode = Literal["cloud", "on_premise"]
MediaType = Literal["json", "xml", "urlencoded", "plaintext", "csv"]
RefreshMethod = Literal["GET", "POST", "PUT", "PATCH"]
PingMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH"]

MAX_NAME_CHARS: Final = 200

_MEDIA_TYPES: Final[dict[str, str]] = {
    "json": "application/json",
    "xml": "application/xml",
    "urlencoded": "application/x-www-form-urlencoded",
    "plaintext": "text/plain",
    "csv": "text/csv",
}
_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_AGENT_ID_RE: Final = re.compile(r"^agt_[a-z0-9]+$")
_LINE_BREAK_RE: Final = re.compile(r"[\r\n\x00]")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


def media_type_header(media_type: str) -> str:
    """The Content-Type/Accept value for a connection's media type."""
    return _MEDIA_TYPES[media_type]


# -- single-value rules --------------------------------------------------------
def _no_line_breaks(value: str) -> str:
    if _LINE_BREAK_RE.search(value):
        raise ValueError("must not contain CR, LF or NUL characters")
    return value


def _http_token(value: str) -> str:
    _no_line_breaks(value)
    if not _TOKEN_RE.match(value):
        raise ValueError(
            "must be an HTTP token: letters, digits and !#$%&'*+-.^_`|~, no spaces or colons"
        )
    return value


# Headers that frame the message or name the target: the relay sets them from
# the request itself; one set by a connection would smuggle, cut or stall it.
RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "expect",
    }
)


def _header_name(value: str) -> str:
    _http_token(value)
    if value.lower() in RESERVED_HEADERS:
        raise ValueError(
            f"'{value}' is set by the relay from the request itself and cannot be configured"
        )
    return value


def _template(value: str) -> str:
    _no_line_breaks(value)
    check_template(value)
    return value


def _body_template(value: str) -> str:
    check_template(value)
    return value


def _json_path(value: str) -> str:
    parse_path(value)
    return value


NoLineBreaks = Annotated[str, AfterValidator(_no_line_breaks)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
Template = Annotated[str, AfterValidator(_template)]
BodyTemplate = Annotated[str, AfterValidator(_body_template)]
JSONPath = Annotated[str, AfterValidator(_json_path)]


def _field_errors(model: str, errors: list[tuple[str, str]]) -> ValidationError:
    """A ValidationError placing each (field, message) on that field of *model*.

    Cross-field rules run after the model is built; raising this from there
    puts the error on the field it is about, not on the whole object.
    """
    details = [
        InitErrorDetails(
            type=PydanticCustomError("invalid_combination", message),
            loc=tuple(field.split(".")),
            input=None,
        )
        for field, message in errors
    ]
    return ValidationError.from_exception_data(model, details, hide_input=True)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


# -- the models ----------------------------------------------------------------
class Header(_Model):
    name: HeaderName
    value: Template


class Refresh(_Model):
    """How to get a new token: on a 401, and first if no token is set."""

    method: RefreshMethod
    relative_uri: Template = ""
    headers: list[Header] = Field(default_factory=list)
    body: BodyTemplate | None = None
    media_type: MediaType | None = None
    token_path: JSONPath | None = None
    # Which API answers mean "the token is no longer good": refresh, then retry once.
    fail_status_codes: list[Annotated[int, Field(ge=400, le=599)]] = Field(
        default_factory=lambda: [401], min_length=1, max_length=20
    )
    # Where a rotated refresh token sits in the refresh answer; when found, it
    # replaces http.encrypted.refresh_token.
    refresh_token_path: JSONPath | None = None

    @field_validator("token_path", "refresh_token_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("body")
    @classmethod
    def _body_needs_post(cls, value: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if value and method is not None and method != "POST":
            raise ValueError(f"a request body is only sent with POST, not {method}")
        return value


class TokenAuth(_Model):
    type: Literal["token"] = "token"
    token: NoLineBreaks | None = None
    location: Literal["header", "url"] = "header"
    header_name: HeaderName | None = Field(default="Authorization", validate_default=True)
    scheme: str | None = None
    param_name: NoLineBreaks | None = Field(default=None, validate_default=True)
    refresh: Refresh | None = None

    @field_validator("header_name", "scheme", "param_name", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        return _http_token(value) if value is not None else None

    @field_validator("header_name")
    @classmethod
    def _header_name_for_header(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value and info.data.get("location") == "header":
            raise ValueError("required when location is 'header' (e.g. Authorization)")
        return value

    @field_validator("param_name")
    @classmethod
    def _param_name_for_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value and info.data.get("location") == "url":
            raise ValueError("required when location is 'url': the query parameter's name")
        return value

    @model_validator(mode="after")
    def _token_or_refresh(self) -> TokenAuth:
        # token comes before refresh, so this rule waits for the whole object.
        if not self.token and self.refresh is None:
            raise _field_errors(
                "TokenAuth", [("token", "required unless a token refresh is configured")]
            )
        return self


def _no_colon(value: str) -> str:
    _no_line_breaks(value)
    if ":" in value:
        raise ValueError("must not contain ':' (RFC 7617 separates user and password with it)")
    return value


def _absolute_url(value: str) -> str:
    if _CONTROL_RE.search(value) or " " in value:
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("is not a valid URL (check the host and port)") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute URL starting with http:// or https://")
    if "@" in parts.netloc or "#" in value:
        raise ValueError("must not contain a user name, password or fragment")
    return value


UserName = Annotated[str, AfterValidator(_no_colon)]
AbsoluteURL = Annotated[str, AfterValidator(_absolute_url)]


class BasicAuth(_Model):
    """``Authorization: Basic`` (RFC 7617, UTF-8) on every request."""

    type: Literal["basic"] = "basic"
    username: UserName
    password: NoLineBreaks | None = None

    @model_validator(mode="after")
    def _password(self) -> BasicAuth:
        if self.password is None:
            raise _field_errors("BasicAuth", [("password", "required")])
        return self


class DigestAuth(_Model):
    """RFC 7616 digest: answer the API's challenge (MD5, SHA-256; qop=auth)."""

    type: Literal["digest"] = "digest"
    username: NoLineBreaks
    password: NoLineBreaks | None = None

    @model_validator(mode="after")
    def _password(self) -> DigestAuth:
        if self.password is None:
            raise _field_errors("DigestAuth", [("password", "required")])
        return self


GrantType = Literal["client_credentials", "password", "refresh_token"]


class OAuth2Auth(_Model):
    """An OAuth 2.0 access token from ``token_uri``, sent as ``Authorization: Bearer``."""

    type: Literal["oauth2"] = "oauth2"
    grant_type: GrantType = "client_credentials"
    token_uri: AbsoluteURL
    client_id: NoLineBreaks | None = None
    client_secret: NoLineBreaks | None = None
    scope: NoLineBreaks | None = None
    audience: NoLineBreaks | None = None
    client_credentials_location: Literal["basic_header", "body"] = "basic_header"
    username: NoLineBreaks | None = None
    password: NoLineBreaks | None = None
    refresh_token: NoLineBreaks | None = None
    extra_params: dict[str, NoLineBreaks] = Field(default_factory=dict)

    @field_validator("client_id", "client_secret", "scope", "audience", "username", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("extra_params")
    @classmethod
    def _reserved(cls, value: dict[str, str]) -> dict[str, str]:
        taken = {"grant_type", "client_id", "client_secret", "username", "password"}
        taken |= {"refresh_token"}
        for key in value:
            if key in taken:
                raise ValueError(f"'{key}' is set from its own field; remove it here")
        return value

    @model_validator(mode="after")
    def _grant_needs(self) -> OAuth2Auth:
        needed = {
            "client_credentials": ("client_id", "client_secret"),
            "password": ("username", "password"),
            "refresh_token": ("refresh_token",),
        }[self.grant_type]
        missing = [name for name in needed if not getattr(self, name)]
        if missing:
            raise _field_errors(
                "OAuth2Auth",
                [(name, f"required for grant_type {self.grant_type}") for name in missing],
            )
        return self


class CookieAuth(_Model):
    """Log in at ``uri``, keep the session cookies it sets, log in again once on a 401."""

    type: Literal["cookie"] = "cookie"
    uri: Template
    method: RefreshMethod = "POST"
    headers: list[Header] = Field(default_factory=list)
    body: BodyTemplate | None = None
    media_type: MediaType | None = None
    success_status: int = Field(default=200, ge=200, le=399)

    @field_validator("uri")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required: the login URI, relative to base_uri or absolute")
        return value

    @field_validator("body")
    @classmethod
    def _body_needs_method(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("method") == "GET":
            raise ValueError("a request body is not sent with GET")
        return value


class NoAuth(_Model):
    """No auth of the relay's own (headers and templates may still carry one)."""

    type: Literal["none"] = "none"


AUTH_TYPES: Final = ("token", "basic", "digest", "oauth2", "cookie", "none")
Auth = Annotated[
    TokenAuth | BasicAuth | DigestAuth | OAuth2Auth | CookieAuth | NoAuth,
    Field(discriminator="type"),
]


class Ping(_Model):
    """The request that tests a connection (required by the test endpoint).

    ``body`` (a handlebars template, POST/PUT/PATCH) serves GraphQL or SOAP
    health checks; a 2xx whose JSON has one of ``fail_values`` at
    ``fail_path`` fails; on failure the value at ``error_path`` is the message.
    """

    method: PingMethod = "GET"
    relative_uri: Template
    body: BodyTemplate | None = None
    success_path: JSONPath | None = None
    success_values: list[str] = Field(default_factory=list)
    fail_path: JSONPath | None = None
    fail_values: list[str] = Field(default_factory=list)
    error_path: JSONPath | None = None

    @field_validator("relative_uri")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required: the URI to ping, relative to base_uri (e.g. /health)")
        return value

    @field_validator("body", "success_path", "fail_path", "error_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("body")
    @classmethod
    def _body_needs_a_method_with_one(cls, value: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if value and method in ("GET", "HEAD"):
            raise ValueError(f"a request body is sent with POST, PUT or PATCH, not {method}")
        return value

    @field_validator("success_path", "fail_path", "error_path")
    @classmethod
    def _path_needs_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("method") == "HEAD":
            raise ValueError("needs a response body, which HEAD never has")
        return value

    @field_validator("success_values")
    @classmethod
    def _values_need_path(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not info.data.get("success_path") and "success_path" in info.data:
            raise ValueError("only used with success_path; set that too")
        return value

    @field_validator("fail_values")
    @classmethod
    def _fail_values_need_path(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not info.data.get("fail_path") and "fail_path" in info.data:
            raise ValueError("only used with fail_path; set that too")
        return value


class ClientCertificate(_Model):
    """The certificate the relay presents in the end-to-end TLS session.

    Either ``cert_pem`` + ``key_pem`` or ``pfx_base64`` (PKCS#12), each with
    an optional ``passphrase``. The key, the PFX and the passphrase are
    secrets: write-only, sealed at rest.
    """

    cert_pem: str | None = None
    key_pem: str | None = None
    pfx_base64: str | None = None
    passphrase: str | None = None

    @model_validator(mode="after")
    def _loads(self) -> ClientCertificate:
        from server.connections.certificates import CertificateError, load_identity

        try:
            load_identity(self.cert_pem, self.key_pem, self.pfx_base64, self.passphrase)
        except CertificateError as exc:
            raise _field_errors("ClientCertificate", [(exc.field, exc.reason)]) from None
        return self


class TLSSettings(_Model):
    verify: bool = True
    ca_bundle_pem: str | None = None
    client_certificate: ClientCertificate | None = None

    @field_validator("ca_bundle_pem")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if not value:
            return None
        if "PRIVATE KEY" in value:
            raise ValueError("holds a private key; only CA certificates belong here")
        try:
            x509.load_pem_x509_certificates(value.encode())
        except ValueError:
            raise ValueError(
                "not a PEM bundle of CA certificates ('-----BEGIN CERTIFICATE-----' blocks)"
            ) from None
        return value


class Timeouts(_Model):
    connect: float = Field(default=10.0, gt=0, le=600)
    total: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("total")
    @classmethod
    def _not_below_connect(cls, value: float, info: ValidationInfo) -> float:
        connect = info.data.get("connect")
        if connect is not None and value < connect:
            raise ValueError("must be at least the connect timeout")
        return value


class RateLimit(_Model):
    """When an answer means "too many requests", and how the relay waits it out.

    An answer with ``fail_status``, or a 200 whose JSON body has one of
    ``fail_values`` at ``fail_path``, is a limit. The relay waits what
    ``retry_header`` says (seconds or an HTTP-date), else backs off
    exponentially with full jitter, and retries up to ``max_retries`` times.
    """

    fail_status: int | None = Field(default=429, ge=400, le=599)
    fail_path: JSONPath | None = None
    fail_values: list[str] = Field(default_factory=list)
    retry_header: HeaderName | None = "Retry-After"
    max_retries: int = Field(default=3, ge=0, le=10)
    max_wait_seconds: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("fail_path", "retry_header", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _values_need_path(self) -> RateLimit:
        if self.fail_values and not self.fail_path:
            raise _field_errors(
                "RateLimit", [("fail_values", "only used with fail_path; set that too")]
            )
        if self.fail_path and not self.fail_values:
            raise _field_errors(
                "RateLimit",
                [("fail_values", "required with fail_path: the values that mean 'limited'")],
            )
        return self


class Health(_Model):
    """Scheduled pings: the connection's status is kept up to date."""

    # The relay refuses intervals below its health_min_interval_seconds (30).
    interval_seconds: float = Field(default=300.0, gt=0, le=86400)


class HTTPSettings(_Model):
    base_uri: str
    headers: list[Header] = Field(default_factory=list)
    media_type: MediaType = "json"
    auth: Auth | None = None
    encrypted: dict[str, str] = Field(default_factory=dict)
    unencrypted: dict[str, str] = Field(default_factory=dict)
    ping: Ping | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    rate_limit: RateLimit | None = None
    concurrency_level: int | None = Field(default=None, ge=1, le=100)
    queue_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    health: Health | None = None

    @field_validator("auth", mode="before")
    @classmethod
    def _token_by_default(cls, value: object) -> object:
        # Documents written before auth had other types carry no 'type'.
        if isinstance(value, dict) and "type" not in value:
            return {**value, "type": "token"}
        return value

    @field_validator("base_uri")
    @classmethod
    def _base_uri(cls, value: str) -> str:
        if _CONTROL_RE.search(value) or " " in value:
            raise ValueError("must not contain spaces or control characters")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise ValueError("is not a valid URL (check the host and port)") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("must be an absolute URL starting with http:// or https://")
        if "@" in parts.netloc:
            raise ValueError(
                "must not contain a user name or password; use auth or encrypted values"
            )
        if not parts.hostname:
            raise ValueError("must name a host, e.g. https://api.example.com")
        if port == 0:
            raise ValueError("port must be between 1 and 65535")
        if is_ipv4_shorthand(parts.hostname):
            raise ValueError(
                "the host is neither a name nor a dotted-quad IPv4 address "
                "(write an IPv4 address as four numbers, like 192.0.2.10)"
            )
        if "#" in value:
            raise ValueError("must not contain a fragment ('#…')")
        try:
            join_uri(value, "")  # what every request will do with it
        except URLError:
            raise ValueError(
                "the host cannot be encoded (IDNA); write it in its xn-- form"
            ) from None
        return value

    @field_validator("encrypted", "unencrypted")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _KEY_RE.match(key):
                raise ValueError(
                    "keys are 1-100 letters, digits, '_' or '-', so templates can name "
                    "them ({{connection.http.encrypted.<key>}})"
                )
        return value


class Connection(_Model):
    name: str = Field(max_length=MAX_NAME_CHARS)
    mode: Mode
    agent_id: str | None = Field(default=None, validate_default=True)
    http: HTTPSettings

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("required: a name to tell this connection apart")
        if _CONTROL_RE.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("agent_id")
    @classmethod
    def _agent_matches_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if mode == "on_premise" and not value:
            raise ValueError("required when mode is on_premise: the id of the agent to use")
        if mode == "cloud" and value:
            raise ValueError("must be empty when mode is cloud (no agent is used)")
        if value and not _AGENT_ID_RE.match(value):
            raise ValueError("is not an agent id (agt_…, from 'sluice-server agents list')")
        return value or None

    @model_validator(mode="after")
    def _on_premise_host(self) -> Connection:
        """An agent connects only to plain DNS names and IP addresses."""
        if self.mode == "on_premise":
            host = urlsplit(self.http.base_uri).hostname or ""
            try:
                normalise_host(host)
            except ConnectProtocolError as exc:
                raise _field_errors(
                    "Connection",
                    [
                        (
                            "http.base_uri",
                            f"the host cannot be reached through an agent: {exc.reason}",
                        )
                    ],
                ) from None
        return self
