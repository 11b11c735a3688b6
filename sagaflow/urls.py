"""Connection URLs: masking their secrets for anything printed or logged, and checking them.

One masking function for every URL sagaflow shows: saga store (SQLAlchemy) URLs, broker URLs
(redis://:pw@..., amqp://user:pw@..., kombu's `;`-separated failover lists) and result
backends. It works on the text, so a URL that no parser accepts is masked too, and a
password holding an unencoded `@`, `/`, `#` or `;` is hidden whole rather than cut short
(kombu itself splits broker URLs on `;`, so such a password only works in a store URL, and
one holding `;scheme://` is taken for the start of the next URL).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# kombu takes several broker URLs separated by ';' (failover): split only where the next one
# begins, since a ';' can also sit unencoded in a password.
_NEXT_URL = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.\-]*://)")
# Query parameters (and libpq's key=value words) that carry a secret rather than a setting.
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;\s])[\w.\-]*(?:password|passwd|pwd|secret|token|api_?key|access_?key|auth)"
    r"[\w.\-]*=)([^&#;\s]*)"
)
# URLs inside other text (error messages, logs, a child process's output).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")  # a quote after it is kept
# Literal passwords shorter than this are not searched for in free text: they would match
# ordinary words. URLs in the text are masked whatever their password's length.
MIN_SCRUBBED_SECRET = 4


def mask_url(url: str) -> str:
    """The URL with every password (and secret query parameter) replaced by ***."""
    return ";".join(_mask_one(part) for part in _NEXT_URL.split(url))


def _userinfo_end(rest: str) -> int | None:
    """Index of the '@' that ends the userinfo in `rest` (the URL after '://'), or None.

    The last '@': a password's own unencoded '@', '/', '?' or '#' then stays inside what is
    masked. An '@' in the path or query (rare) masks more than the password, never less.
    """
    if rest.startswith("/") or "@" not in rest:  # sqlite:///path: no authority at all
        return None
    return rest.rindex("@")


def _split_scheme(url: str) -> tuple[str, str]:
    """('scheme://', the rest); no scheme: ('', url), still masked (user:pw@host, typed
    without its scheme, is a password all the same)."""
    match = _SCHEME.match(url)
    return (match.group(0), url[match.end() :]) if match else ("", url)


def _mask_one(url: str) -> str:
    scheme, rest = _split_scheme(url)
    end = _userinfo_end(rest)
    if end is not None:
        user, colon, _password = rest[:end].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[end:]}"
    return scheme + _SECRET_PARAM.sub(rf"\1{MASK}", rest)


def secrets_of(url: str) -> set[str]:
    """The passwords a URL carries, as written and percent-decoded."""
    found: set[str] = set()
    for part in _NEXT_URL.split(url):
        _scheme, rest = _split_scheme(part)
        end = _userinfo_end(rest)
        if end is not None:
            _user, colon, password = rest[:end].partition(":")
            if colon and password:
                found |= {password, unquote(password)}
        for param in _SECRET_PARAM.finditer(part):
            if param.group(2):
                found |= {param.group(2), unquote(param.group(2))}
    return found


def scrub(text: str, urls: Iterable[str | None] = (), secrets: Iterable[str] = ()) -> str:
    """`text` with every URL in it masked and every password of `urls` (and every one of
    `secrets`) replaced: for output that may echo a connection string (a driver's message, a
    child process's log)."""
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    hidden = {s for url in urls if url for s in secrets_of(url)} | set(secrets)
    for secret in sorted(hidden, key=len, reverse=True):
        if len(secret) >= MIN_SCRUBBED_SECRET:
            text = text.replace(secret, MASK)
    return text


def database_url_problem(url: str) -> str | None:
    """Why `url` cannot be a saga store URL, or None. Only parses: connects to nothing."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return "not a SQLAlchemy URL of the form dialect+driver://user@host:port/database"
    try:
        dialect = parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        return f"no SQLAlchemy dialect named {parsed.drivername!r}"
    except Exception as exc:  # a dialect plug-in that fails to load
        return f"its dialect {parsed.drivername!r} cannot be loaded: {exc}"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return f"its driver for {parsed.drivername!r} is not installed ({exc})"
    return None


def broker_url_problem(url: str) -> str | None:
    """Why `url` cannot be a Celery broker URL, or None. Only parses: connects to nothing."""
    from kombu.transport import TRANSPORT_ALIASES

    for part in _NEXT_URL.split(url):
        match = _SCHEME.match(part)
        if match is None:
            return "not a URL of the form transport://host:port/..."
        name = match.group(1).split("+", 1)[0]  # redis+socket:// is the redis transport
        if name not in TRANSPORT_ALIASES:
            return f"no broker transport named {name!r}"
        try:
            urlsplit(part).port  # noqa: B018 - raises for a port that is not a number
        except ValueError as exc:
            return str(exc)
    return None
