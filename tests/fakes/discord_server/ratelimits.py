"""Rate limits as Discord applies them (docs: topics/rate-limits.md).

* Every REST route has a bucket, counted separately for each top-level resource in its path (a channel id,
  a guild id, a webhook id + token). The hash in ``X-RateLimit-Bucket`` names the route, not the resource
  ("non-inclusive of top-level resources"), so it is the same hex string on every 200 and 429 of a route.
* ``X-RateLimit-Limit``/``-Remaining``/``-Reset``/``-Reset-After``/``-Bucket`` on every response of a
  rate-limited route; ``X-RateLimit-Scope`` (``user``/``global``/``shared``) and ``X-RateLimit-Global`` on
  429s only. 429 bodies are ``{"message", "retry_after", "global"}`` with ``Retry-After`` and a ``Via``
  header (without ``Via`` discord.py takes a 429 for a Cloudflare ban and gives up).
* The global limit: 50 requests per second per bot token. Interaction callbacks and webhook calls with a
  token (followups) are not bound to it (docs: interactions/receiving-and-responding.md, "Endpoints").
* Interaction callbacks carry no bucket at all: there is exactly one per interaction (a second one is
  400 40060), and hikari's route table (``routes.py``, ``has_ratelimits=False``) records that Discord sends
  no rate-limit headers there.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.discord_server.common import _json

#: Per-route limits (requests, seconds). Discord publishes no table; these are the shapes libraries and
#: bots observe (``shared/reference/discord.md``: ~5 message creates and ~5 edits per 5 s per channel;
#: one reaction per 0.25 s; webhooks, which interaction followups are, 5 per 2 s per webhook + token).
ROUTE_LIMITS: dict[str, tuple[int, float]] = {
    "POST /channels/{channel_id}/messages": (5, 5.0),
    "PATCH /channels/{channel_id}/messages/{id}": (5, 5.0),
    "DELETE /channels/{channel_id}/messages/{id}": (5, 1.0),
    "PUT /channels/{channel_id}/messages/{id}/reactions/{emoji}/@me": (1, 0.25),
    "DELETE /channels/{channel_id}/messages/{id}/reactions/{emoji}/@me": (1, 0.25),
    "POST /channels/{channel_id}/typing": (5, 5.0),
    "PATCH /channels/{channel_id}": (5, 10.0),
    "POST /webhooks/{webhook_id}/{webhook_token}": (5, 2.0),
    "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{id}": (5, 2.0),
    "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original": (5, 2.0),
}
#: Where Discord publishes nothing: reads are cheap, writes are not.
DEFAULT_READ_LIMIT = (20, 1.0)
DEFAULT_WRITE_LIMIT = (5, 1.0)
GLOBAL_LIMIT = 50
GLOBAL_PERIOD = 1.0
TOP_LEVEL = {"channels": "channel_id", "guilds": "guild_id", "webhooks": "webhook_id"}


@dataclass(frozen=True)
class Route:
    """One REST request as the rate limiter sees it."""

    name: str  # "POST /channels/{channel_id}/messages"
    resource: str  # the top-level resource, e.g. "channel_id=123"; "" when the path has none
    limit: int
    period: float
    bucket: str  # the hash sent in X-RateLimit-Bucket
    limited: bool  # False for interaction callbacks: no bucket, no headers
    global_exempt: bool


def route_of(method: str, path: str, limits: dict[str, tuple[int, float]]) -> Route:
    """Name ``path`` the way Discord's documentation writes routes and find its bucket."""
    parts = path.strip("/").split("/")
    template: list[str] = []
    resource = ""
    for index, part in enumerate(parts):
        previous = parts[index - 1] if index else ""
        if index == 1 and parts[0] in TOP_LEVEL:
            template.append("{" + TOP_LEVEL[parts[0]] + "}")
            resource = f"{TOP_LEVEL[parts[0]]}={part}"
        elif index == 2 and parts[0] == "webhooks":
            template.append("{webhook_token}")
            resource += f"/{part}"
        elif index == 1 and parts[0] == "interactions":
            template.append("{interaction_id}")
            resource = f"interaction_id={part}"
        elif index == 2 and parts[0] == "interactions":
            template.append("{interaction_token}")
        elif previous == "reactions":
            template.append("{emoji}")
        elif part.isdigit():
            template.append("{id}")
        else:
            template.append(part)
    name = f"{method} /" + "/".join(template)
    callback = parts[0] == "interactions"
    default = DEFAULT_READ_LIMIT if method == "GET" else DEFAULT_WRITE_LIMIT
    limit, period = limits.get(name, ROUTE_LIMITS.get(name, default))
    return Route(
        name=name,
        resource=resource,
        limit=limit,
        period=period,
        bucket=hashlib.md5(name.encode()).hexdigest(),  # 32 hex digits, like Discord's
        limited=not callback,
        global_exempt=callback or (parts[0] == "webhooks" and len(parts) >= 3),
    )


@dataclass
class Window:
    """A fixed window: it starts with its first request and resets ``period`` seconds later."""

    started: float
    used: int = 0


class RateLimiter:
    """Per-route buckets and the global limit; see the module docstring."""

    def __init__(
        self,
        limits: dict[str, tuple[int, float]] | None = None,
        global_limit: int = GLOBAL_LIMIT,
        global_period: float = GLOBAL_PERIOD,
    ) -> None:
        self.limits = dict(limits or {})
        self.global_limit = global_limit
        self.global_period = global_period
        self._windows: dict[tuple[str, str], Window] = {}
        self._global: dict[str, Window] = {}

    def route(self, method: str, path: str) -> Route:
        return route_of(method, path, self.limits)

    def _window(self, windows: dict, key: object, period: float, now: float) -> Window:
        window = windows.get(key)
        if window is None or now - window.started >= period:
            window = windows[key] = Window(now)
        return window

    def hit(self, route: Route, token: str | None) -> web.Response | None:
        """Count one request; a 429 if it exceeds the global limit or the route's bucket."""
        now = time.monotonic()
        if not route.global_exempt and self.global_limit > 0:
            window = self._window(self._global, token or "", self.global_period, now)
            if window.used >= self.global_limit:
                return too_many(route, window.started + self.global_period - now, "global")
            window.used += 1
        if not route.limited:
            return None
        window = self._window(self._windows, (route.name, route.resource), route.period, now)
        if window.used >= route.limit:
            return too_many(route, window.started + route.period - now, "user", remaining=0)
        window.used += 1
        return None

    def headers(self, route: Route) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers of a response on ``route`` (none for interaction callbacks)."""
        if not route.limited:
            return {}
        now = time.monotonic()
        window = self._windows.get((route.name, route.resource))
        if window is None or now - window.started >= route.period:
            window = Window(now)
        return bucket_headers(route, route.limit - window.used, window.started + route.period - now)


def bucket_headers(route: Route, remaining: int, reset_after: float) -> dict[str, str]:
    reset_after = max(0.0, reset_after)
    return {
        "X-RateLimit-Limit": str(route.limit),
        "X-RateLimit-Remaining": str(max(0, remaining)),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": route.bucket,
    }


def too_many(route: Route, retry_after: float, scope: str, *, remaining: int | None = None) -> web.Response:
    """A 429 as docs/topics/rate-limits.md shows one for each scope (user, global, shared)."""
    retry_after = max(0.001, retry_after)
    global_ = scope == "global"
    headers = {"Via": "1.1 google", "Retry-After": str(math.ceil(retry_after)), "X-RateLimit-Scope": scope}
    if global_:
        headers["X-RateLimit-Global"] = "true"
    else:
        # A shared-scope 429 concerns the resource, not this bot: its own bucket may have requests left.
        left = route.limit - 1 if remaining is None else remaining
        headers.update(bucket_headers(route, left, retry_after))
    message = "The resource is being rate limited." if scope == "shared" else "You are being rate limited."
    return _json({"message": message, "retry_after": round(retry_after, 3), "global": global_}, 429, headers)
