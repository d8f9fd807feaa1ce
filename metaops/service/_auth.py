"""Who may do what: the service's secret token, and read-only, run-scoped public access tokens.

The secret (``metaops serve --token``) may do everything. A **public access token**
is a JWT that a holder of the secret mints for a browser or any other reader that
must not hold the secret: HS256, signed with the UTF-8 bytes of the secret itself,
exactly the token the official SDK's ``auth.createPublicToken({scopes: {read: {runs:
[runId]}}})`` signs on its own (header ``{"alg": "HS256"}``; claims ``sub``, ``pub:
true``, ``scopes``, ``iss`` ``https://id.trigger.dev``, ``aud``
``https://api.trigger.dev``, ``iat``, ``exp``). Tokens minted here (the route ``POST
/api/v1/auth/public-tokens``, the command ``metaops token RUN_ID``) and tokens the SDK
signs are interchangeable.

A public token:

* only ever **reads** (``GET``/``HEAD``), and only on the read routes that name a run
  (:data:`PUBLIC_READ_ROUTES`): the run's metadata, its Realtime shape, its streams;
  anything else is 403, whatever its scopes say;
* reads the runs its scopes name: ``read:runs:<runId>`` that run; ``read:runs``,
  ``read:all``, ``read``, ``admin``, ``*`` every run (still read-only); other scopes
  (``read:tasks:...``, ``read:tags:...``, ``read:batch:...``) name nothing metaops
  has, and grant nothing. Another run is 403 (before anything says whether it
  exists);
* **expires**: ``exp`` is required, checked on every request (401 once past).

A bad token (malformed, wrong signature, wrong issuer or audience, expired) is 401.
The secret's length is the key's length, and a public token is handed to browsers:
anyone holding one can test guesses of a short secret offline, and the secret does
everything. Use 32 bytes or more (``metaops serve`` makes a random one of 43
characters); the command line says so in one line (:func:`weak_secret`) where PyJWT
would print its own warning, with a file name, at every other call.
"""

from __future__ import annotations

import hmac
import json
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import jwt
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from metaops._errors import InvalidArgumentError

__all__ = [
    "DEFAULT_EXPIRATION",
    "PUBLIC_READ_ROUTES",
    "PUBLIC_TOKEN_AUDIENCE",
    "PUBLIC_TOKEN_ISSUER",
    "TOKEN_ENV",
    "Access",
    "Authority",
    "access_of",
    "auth_routes",
    "expiration_time",
    "mint_public_token",
    "quiet_key_length_warnings",
    "read_scopes",
    "weak_secret",
]

PUBLIC_TOKEN_ISSUER = "https://id.trigger.dev"
PUBLIC_TOKEN_AUDIENCE = "https://api.trigger.dev"
DEFAULT_EXPIRATION = "15m"
"""How long a public token lives when nobody says (the official SDK's default)."""
TOKEN_ENV = "METAOPS_SERVER_TOKEN"
"""The environment variable holding the server's secret, for `metaops serve` and `metaops token`."""
CLAIMS = {"sub": "metaops", "pub": True}
"""What ``POST /api/v1/auth/jwt/claims`` answers; the SDK signs these into its tokens."""

PUBLIC_READ_ROUTES: tuple[re.Pattern[str], ...] = (
    re.compile(r"/api/v1/runs/(?P<run>[^/]+)/metadata"),
    re.compile(r"/realtime/v1/runs/(?P<run>[^/]+)"),
    re.compile(r"/realtime/v1/streams/(?P<run>[^/]+)/[^/]+"),
    re.compile(r"/runs/(?P<run>[^/]+)"),
)
"""The paths a public token may ``GET``; group ``run`` is the run they read."""

_EVERY_RUN = frozenset({"read:runs", "read:all", "read", "admin", "*", "*:all", "*:runs"})
_RUN_SCOPE = "read:runs:"
_JWT_SHAPE = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_DURATION = re.compile(
    r"\s*(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|w)\s*",
    re.IGNORECASE,
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_TOKEN_REQUEST = 64 * 1024
MIN_SECRET_BYTES = 32
"""An HS256 key shorter than this can be guessed offline from any token signed with it (RFC 7518)."""


@dataclass(frozen=True, slots=True)
class Access:
    """What one request's bearer may do: everything (the secret), or read some runs until ``expires_at``."""

    secret: bool
    runs: frozenset[str] | None = None
    """The runs a public token reads; ``None``: every run (or the secret)."""
    expires_at: float | None = None

    def may_read(self, run_id: str) -> bool:
        """Whether this bearer may read ``run_id``."""
        return self.secret or self.runs is None or run_id in self.runs


SECRET = Access(secret=True)


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def expiration_time(value: object, now: float) -> int:
    """``exp`` (Unix seconds) for an ``expirationTime`` as the official SDK takes it.

    A duration string relative to ``now`` (``"15m"``, ``"1h"``, ``"2 days"``,
    ``"90s"``), a number of **absolute** Unix seconds, or ``None`` for the default
    (15 minutes). :class:`~metaops.InvalidArgumentError` for anything else, or a
    time not after ``now``.

    >>> expiration_time("1h", 1000.0), expiration_time(None, 0.0), expiration_time(5000, 0.0)
    (4600, 900, 5000)
    """
    if value is None:
        value = DEFAULT_EXPIRATION
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            msg = f"expirationTime: expected a duration such as '15m', '1h' or '2 days', got {value!r}"
            raise InvalidArgumentError(msg)
        unit = match["unit"].lower()
        unit = "m" if unit.startswith("min") else unit[0]
        exp = int(now + float(match["amount"]) * _UNITS[unit])
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        if value in (float("inf"), float("-inf")):
            msg = f"expirationTime: expected Unix seconds, got {value!r}"
            raise InvalidArgumentError(msg)
        exp = int(value)
    else:
        msg = f"expirationTime: expected a duration string or Unix seconds, got {type(value).__name__}"
        raise InvalidArgumentError(msg)
    if exp <= now:
        msg = f"expirationTime: the token would expire at {exp}, not after now ({int(now)})"
        raise InvalidArgumentError(msg)
    return exp


def weak_secret(secret: str) -> str | None:
    """Why ``secret`` is too short to sign public tokens with, or ``None``.

    >>> weak_secret("s" * 32) is None
    True
    >>> weak_secret("secret")[:60]
    'it is 6 bytes long: anyone holding a public access token sig'
    """
    length = len(secret.encode("utf-8", "surrogatepass"))
    if length >= MIN_SECRET_BYTES:
        return None
    return (
        f"it is {length} bytes long: anyone holding a public access token signed with it can test "
        f"guesses of it offline, and it does everything; use {MIN_SECRET_BYTES} bytes or more"
    )


def quiet_key_length_warnings() -> None:
    """Silence PyJWT's own warning about short HMAC keys (for the command line, which says it
    once in its own words: :func:`weak_secret`)."""
    category = getattr(jwt, "InsecureKeyLengthWarning", None)  # PyJWT 2.10 and later
    if isinstance(category, type) and issubclass(category, Warning):
        warnings.filterwarnings("ignore", category=category)


def read_scopes(scopes: object) -> list[str]:
    """``scopes`` as a public token may carry them: a non-empty list of read scopes.

    Public tokens are read-only here, so a write scope is refused rather than
    silently ignored (:class:`~metaops.InvalidArgumentError` naming it).
    """
    if not isinstance(scopes, list) or not scopes:
        msg = 'scopes: expected a non-empty list such as ["read:runs:run_1234"]'
        raise InvalidArgumentError(msg)
    for index, scope in enumerate(scopes):
        if not isinstance(scope, str) or not scope:
            msg = f"scopes[{index}]: expected a non-empty string"
            raise InvalidArgumentError(msg)
        run = scope[len(_RUN_SCOPE) :] if scope.startswith(_RUN_SCOPE) else None
        if scope not in _EVERY_RUN and not run:
            expected = "expected read:runs:<runId> or read:runs"
            msg = f"scopes[{index}]: public tokens are read-only: {expected}, got {scope!r}"
            raise InvalidArgumentError(msg)
    return list(scopes)


def mint_public_token(
    secret: str,
    run_ids: Iterable[str] | None = None,
    *,
    scopes: Sequence[str] | None = None,
    expiration: str | float | None = None,
    now: float | None = None,
) -> str:
    """A public access token reading ``run_ids`` (or ``scopes``), signed with ``secret``.

    ``expiration`` as :func:`expiration_time` takes it (default 15 minutes).

    >>> token = mint_public_token("s" * 32, ["run_1"], expiration="1h", now=0)
    >>> Authority("s" * 32, clock=lambda: 10).authenticate(b"Bearer " + token.encode())
    Access(secret=False, runs=frozenset({'run_1'}), expires_at=3600.0)
    """
    if not secret:
        msg = "the secret must not be empty"
        raise InvalidArgumentError(msg)
    issued = time.time() if now is None else now
    wanted = list(scopes or ()) + [f"{_RUN_SCOPE}{run_id}" for run_id in run_ids or ()]
    claims: dict[str, Any] = {
        **CLAIMS,
        "scopes": read_scopes(wanted),
        "iss": PUBLIC_TOKEN_ISSUER,
        "aud": PUBLIC_TOKEN_AUDIENCE,
        "iat": int(issued),
        "exp": expiration_time(expiration, issued),
    }
    # No "typ" in the header: the same bytes the official SDK's jose signs.
    return jwt.encode(claims, secret.encode(), algorithm="HS256", headers={"typ": None})


def _scoped_runs(claims: dict[str, Any]) -> frozenset[str] | None:
    scopes = claims.get("scopes")
    if not isinstance(scopes, list):
        return frozenset()
    runs: set[str] = set()
    for scope in scopes:
        if not isinstance(scope, str):
            continue
        if scope in _EVERY_RUN:
            return None
        if scope.startswith(_RUN_SCOPE) and len(scope) > len(_RUN_SCOPE):
            runs.add(scope[len(_RUN_SCOPE) :])
    return frozenset(runs)


class Authority:
    """Decides, from a request's headers alone, whether it may go on (see the module's docstring).

    ``public_reads`` are the paths (full matches) a public token may ``GET``, each with
    a group ``run``; ``clock`` gives Unix seconds (token expiry).
    """

    def __init__(
        self,
        secret: str,
        *,
        public_reads: Sequence[re.Pattern[str]] = PUBLIC_READ_ROUTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            msg = "the bearer token must not be empty"
            raise InvalidArgumentError(msg)
        self._secret = secret
        self._key = secret.encode()
        self._public_reads = tuple(public_reads)
        self._clock = clock

    @property
    def secret(self) -> str:
        """The service's secret token (the public tokens' signing key)."""
        return self._secret

    def mint(self, run_ids: Iterable[str] | None = None, **options: Any) -> str:
        """:func:`mint_public_token` with this authority's secret and clock."""
        options.setdefault("now", self._clock())
        return mint_public_token(self._secret, run_ids, **options)

    def authenticate(self, authorization: bytes | None) -> Access:
        """The access an ``Authorization`` header's value grants; raises :class:`_Denied` (401)."""
        scheme, _, token = (authorization or b"").partition(b" ")
        token = token.strip()
        # compare_digest in any case, so that the time taken says nothing about the secret.
        is_secret = hmac.compare_digest(token, self._key)
        if scheme.lower() != b"bearer" or not token:
            raise _Denied(401, "Invalid or Missing API key")
        if is_secret:
            return SECRET
        if _JWT_SHAPE.fullmatch(token) is None:
            raise _Denied(401, "Invalid or Missing API key")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=PUBLIC_TOKEN_AUDIENCE,
                issuer=PUBLIC_TOKEN_ISSUER,
                # Times are checked below against this authority's clock (the one that mints).
                options={
                    "require": ["exp", "iat"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError as error:
            raise _Denied(401, f"Invalid public access token: {error}") from None
        now = self._clock()
        expires, not_before = claims["exp"], claims.get("nbf", now)
        for name, value in (("exp", expires), ("nbf", not_before)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Denied(401, f"Invalid public access token: {name} is not a number")
        if now >= expires:
            raise _Denied(401, "Public access token expired")
        if now < not_before:
            raise _Denied(401, "Public access token not valid yet (nbf)")
        return Access(secret=False, runs=_scoped_runs(claims), expires_at=float(expires))

    def check(self, scope: Scope) -> tuple[int, str] | None:
        """``None`` when the request may go on (its :class:`Access` is put in ``scope["state"]["access"]``),
        else ``(status, message)``: 401 no or a bad token, 403 a public token outside its reach."""
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        try:
            access = self.authenticate(header)
            if not access.secret:
                self._authorize_public(access, scope["method"], scope["path"])
        except _Denied as denied:
            return denied.status, str(denied)
        scope.setdefault("state", {})["access"] = access
        return None

    def _authorize_public(self, access: Access, method: str, path: str) -> None:
        if method not in ("GET", "HEAD"):
            raise _Denied(403, "Public access tokens are read-only")
        for pattern in self._public_reads:
            match = pattern.fullmatch(path)
            if match is not None:
                if not access.may_read(match["run"]):
                    raise _Denied(403, f"This public access token cannot read run {match['run']!r}")
                return
        raise _Denied(403, f"Public access tokens cannot use {path}")


def access_of(request: Request) -> Access:
    """The :class:`Access` :meth:`Authority.check` granted this request (the secret when unguarded)."""
    access = getattr(request.state, "access", None)
    return access if isinstance(access, Access) else SECRET


def _json(status: int, payload: object) -> Response:
    # An unread body (408, 413) leaves the connection unfit for another request.
    headers = {"Connection": "close"} if status in (408, 413) else None
    return Response(
        json.dumps(payload, separators=(",", ":")).encode(), status, headers, media_type="application/json"
    )


async def _small_json_object(request: Request, timeout: float) -> dict[str, Any]:
    body = b""
    try:
        with anyio.fail_after(timeout):
            async for part in request.stream():
                body += part
                if len(body) > _MAX_TOKEN_REQUEST:
                    raise _Denied(413, f"Request body is over the limit of {_MAX_TOKEN_REQUEST:,} bytes")
    except TimeoutError:
        raise _Denied(408, f"Request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        # Nobody is left to answer, and nothing was minted.
        raise _Denied(400, "Request body: the client went away before it arrived") from None
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError) as error:
        raise _Denied(400, f"Invalid JSON body: {error}") from None
    if not isinstance(value, dict):
        raise _Denied(400, "Invalid JSON body: expected a JSON object")
    return value


def _not_json(name: str) -> None:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def auth_routes(authority: Authority, *, request_timeout: float = 30.0) -> list[Route]:
    """``POST /api/v1/auth/jwt/claims`` (what the official SDK asks before it signs a public
    token itself) and ``POST /api/v1/auth/public-tokens`` (``{"scopes": [...],
    "expirationTime"?: ...}`` → ``{"token": ...}``, as the platform answers it). Both
    need the secret: a public token cannot mint another. A body that takes longer than
    ``request_timeout`` seconds to arrive is answered 408."""

    def secret_only(request: Request) -> None:
        if not access_of(request).secret:
            raise _Denied(403, "Public access tokens cannot mint tokens")

    async def claims(request: Request) -> Response:
        try:
            secret_only(request)
        except _Denied as denied:
            return _json(denied.status, {"error": str(denied)})
        return _json(200, CLAIMS)

    async def public_tokens(request: Request) -> Response:
        try:
            secret_only(request)
            body = await _small_json_object(request, request_timeout)
            scopes = read_scopes(body.get("scopes"))
            token = authority.mint(scopes=scopes, expiration=body.get("expirationTime"))
        except _Denied as denied:
            return _json(denied.status, {"error": str(denied)})
        except InvalidArgumentError as error:
            return _json(400, {"error": str(error)})
        return _json(200, {"token": token})

    return [
        Route("/api/v1/auth/jwt/claims", claims, methods=["POST"]),
        Route("/api/v1/auth/public-tokens", public_tokens, methods=["POST"]),
    ]
