"""What a `REDIS_URL` says: the one parser of every form slackq accepts (no client is built here;
`slackq.connection` builds them from what this module reads).

* `redis://`, `rediss://` (TLS), `unix://`: one Redis, as redis-py reads them.
* Sentinel: `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master>[/<db>]`
  (`rediss+sentinel://`), `sentinel_password` in the query string when the sentinels have their
  own, `sentinel_check_seconds` for the primary watch (slackq/sentinel_pool.py). A port left
  out is 26379.
* Cluster: `redis+cluster://[[user]:password@]host:port[,host:port…][/0]` (`rediss+cluster://`):
  any nodes of the cluster (the client discovers the rest). A port left out is 6379; a cluster
  has database 0 only.

The query string of any form carries redis-py's connection options (`ssl_ca_certs=…`); the
credentials are the data nodes'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
URL_SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379


@dataclass(frozen=True)
class SentinelAddress:
    """What a `redis+sentinel://` URL says: where the sentinels are, which primary to ask them
    for, and how to talk to the data nodes (`node`: database, credentials, query options)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    tls: bool
    node: dict[str, Any] = field(default_factory=dict)
    sentinel_password: str | None = None
    check_seconds: float | None = None  # the primary watch's period; None: no watch


@dataclass(frozen=True)
class ClusterAddress:
    """What a `redis+cluster://` URL says: nodes to discover the cluster from, and how to talk
    to every node (`node`: credentials, query options)."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    node: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Parts:
    scheme: str
    hosts: tuple[tuple[str, int], ...]
    path: list[str]
    node: dict[str, Any]


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        return host, int(port.lstrip(":") or default_port)
    host, colon, port = text.rpartition(":")
    return (host, int(port)) if colon else (text, default_port)


def _split(url: str, default_port: int) -> _Parts:
    """Scheme, hosts, path segments and the nodes' options (query, credentials) of a
    multi-host URL. ValueError when a port is not a number."""
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    try:
        addresses = tuple(_host_port(host, default_port) for host in hosts.split(",") if host)
    except ValueError:
        raise ValueError(f"{scheme}:// URL: a port is not a number") from None
    node: dict[str, Any] = dict(parse_url(f"redis://localhost/?{query}")) if query else {}
    node.pop("host", None)
    user, _, password = userinfo.partition(":")
    if user:
        node["username"] = unquote(user)
    if password:
        node["password"] = unquote(password)
    return _Parts(scheme, addresses, [unquote(part) for part in path.split("/") if part], node)


def sentinel_address(url: str) -> SentinelAddress | None:
    """The parts of a `redis+sentinel://` / `rediss+sentinel://` URL; None for other URLs.

    Raise ValueError (no password in it) when the URL names no sentinel or no primary.
    """
    if not url.startswith(SENTINEL_SCHEMES):
        return None
    parts = _split(url, DEFAULT_SENTINEL_PORT)
    scheme, names = parts.scheme, parts.path
    try:
        db = int(names[1]) if len(names) == 2 else None
    except ValueError:
        raise ValueError(f"{scheme}:// URL: the database is not a number") from None
    if not parts.hosts or not names or len(names) > 2:
        raise ValueError(f"{scheme}:// URL must be {scheme}://[[user]:password@]host:port"
                         "[,host:port…]/<master-name>[/<db>]")
    node = dict(parts.node)
    sentinel_password = node.pop("sentinel_password", None)
    try:
        check_seconds = float(node.pop("sentinel_check_seconds", 0)) or None
    except ValueError:
        raise ValueError(f"{scheme}:// URL: sentinel_check_seconds is not a number") from None
    if db is not None:
        node["db"] = db
    return SentinelAddress(parts.hosts, names[0], scheme.startswith("rediss"), node,
                           sentinel_password, check_seconds)


def cluster_address(url: str) -> ClusterAddress | None:
    """The parts of a `redis+cluster://` / `rediss+cluster://` URL; None for other URLs.

    Raise ValueError (no password in it) when the URL names no node, or a database other
    than 0 (a cluster has no other).
    """
    if not url.startswith(CLUSTER_SCHEMES):
        return None
    parts = _split(url, DEFAULT_REDIS_PORT)
    node = dict(parts.node)
    if parts.path not in ([], ["0"]) or node.pop("db", 0) not in (0, "0"):
        raise ValueError(f"{parts.scheme}:// URL: a cluster has database 0 only")
    if not parts.hosts:
        raise ValueError(f"{parts.scheme}:// URL must be {parts.scheme}://[[user]:password@]"
                         "host:port[,host:port…]")
    return ClusterAddress(parts.hosts, parts.scheme.startswith("rediss"), node)


def is_cluster(url: str) -> bool:
    """Whether `url` is a `redis+cluster://` / `rediss+cluster://` URL."""
    return url.startswith(CLUSTER_SCHEMES)


def with_sentinel_option(url: str, name: str, value: str) -> str:
    """`url` with the query option `name` (`sentinel_password`, `sentinel_check_seconds`) set to
    `value` (one the URL already has wins)."""
    if f"{name}=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}{name}={quote(value, safe='')}"


def with_sentinel_password(url: str, password: str) -> str:
    """`url` with the sentinels' password as its `sentinel_password` option (one the URL already
    has wins)."""
    return with_sentinel_option(url, "sentinel_password", password)


def redis_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis(...)` from a redis://, rediss:// or unix:// URL
    (for a Sentinel or Cluster URL: those of its data nodes, without host and port)."""
    address = sentinel_address(url) or cluster_address(url)
    if address is not None:
        return {**address.node, **({"ssl": True} if address.tls else {})}
    parsed: dict[str, Any] = dict(parse_url(url))
    connection_class = parsed.pop("connection_class", None)
    if connection_class is SSLConnection:
        parsed["ssl"] = True
    elif connection_class is UnixDomainSocketConnection:
        parsed["unix_socket_path"] = parsed.pop("path")
    return parsed


def _hosts(addresses: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{host}:{port}" for host, port in addresses)


def redis_location(url: str) -> str:
    """`scheme://user@host:port/db` (Sentinel: `…@s1:p1,s2:p2/master/db`; Cluster:
    `…@n1:p1,n2:p2`) for messages: never a password."""
    scheme = url.split("://", 1)[0]
    kwargs = redis_kwargs(url)
    sentinels, cluster = sentinel_address(url), cluster_address(url)
    if sentinels is not None:
        where = f"{_hosts(sentinels.sentinels)}/{sentinels.master}/{kwargs.get('db', 0)}"
    elif cluster is not None:
        where = _hosts(cluster.nodes)
    else:
        where = kwargs.get("unix_socket_path") or f"{kwargs.get('host', 'localhost')}:" \
            f"{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    user = kwargs.get("username")
    return f"{scheme}://{user + '@' if user else ''}{where}"


def is_unix_socket(url: str) -> bool:
    """Whether `url` names a unix socket (TCP options such as keepalive do not apply)."""
    return "unix_socket_path" in redis_kwargs(url)


def has_hash_tag(prefix: str) -> bool:
    """Whether every key starting with `prefix` hashes on a tag inside `prefix`: the first `{`
    is followed, within the prefix, by a non-empty name and `}` (Redis Cluster's rule)."""
    opening = prefix.find("{")
    closing = prefix.find("}", opening + 1) if opening >= 0 else -1
    return opening >= 0 and closing > opening + 1
