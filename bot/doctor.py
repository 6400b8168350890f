"""``python -m bot doctor``: check what operators get wrong most, one line per check.

Uses plain HTTP (no gateway connection): the token against ``/users/@me``, the privileged intent through
the application's flags, and every backend's version and model list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from bot.config import Config
from bot.llm import LLMError
from bot.llm.pool import make_client, normalise_model

# Application flags Discord sets when the Message Content intent is switched on in the developer portal.
MESSAGE_CONTENT_FLAGS = (1 << 18) | (1 << 19)


@dataclass(frozen=True)
class Check:
    ok: bool
    name: str
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


async def run_checks(
    config: Config, token: str, *, emit: Callable[[Check], None] = lambda check: None
) -> list[Check]:
    """Run every check, reporting each as it finishes."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        emit(check)

    async with httpx.AsyncClient(timeout=10) as http:
        await _discord_checks(http, config, token, report)
        await _backend_checks(http, config, report)
    return checks


async def _discord_checks(
    http: httpx.AsyncClient, config: Config, token: str, report: Callable[[Check], None]
) -> None:
    headers = {"Authorization": f"Bot {token}"}
    base = config.discord.api_base.rstrip("/")
    try:
        me = await http.get(f"{base}/users/@me", headers=headers)
    except httpx.TransportError as exc:
        report(Check(False, "discord", f"cannot reach {base} ({type(exc).__name__})"))
        return
    if me.status_code == 401:
        report(
            Check(
                False, "token", "Discord rejected DISCORD_TOKEN: reset it in the developer portal (Bot tab)"
            )
        )
        return
    if me.status_code != 200:
        report(Check(False, "token", f"/users/@me answered HTTP {me.status_code}"))
        return
    user = me.json()
    report(Check(True, "token", f"valid, the bot is {user.get('username')} (id {user.get('id')})"))
    application = await http.get(f"{base}/oauth2/applications/@me", headers=headers)
    flags = int(application.json().get("flags") or 0) if application.status_code == 200 else 0
    if flags & MESSAGE_CONTENT_FLAGS:
        report(Check(True, "intents", "Message Content intent is enabled"))
    else:
        report(
            Check(
                False,
                "intents",
                "enable the Message Content intent (developer portal → Bot → Privileged Gateway Intents)",
            )
        )


async def _backend_checks(http: httpx.AsyncClient, config: Config, report: Callable[[Check], None]) -> None:
    wanted = {"chat": config.chat.model, "blog": config.blog.model}
    found: dict[str, list[str]] = {feature: [] for feature in wanted}
    reachable: list[str] = []

    async def check(backend_index: int) -> None:
        backend = config.backends[backend_index]
        client = make_client(backend, http)
        try:
            info = await client.probe()
        except LLMError as exc:
            report(Check(False, f"backend {backend.display_name}", f"{backend.url} does not answer ({exc})"))
            return
        reachable.append(backend.display_name)
        what = f"version {info.version}" if backend.kind == "ollama" else "OpenAI-compatible"
        if info.context_tokens:
            what += f", context window {info.context_tokens} tokens"
        report(Check(True, f"backend {backend.display_name}", f"{backend.url} answers ({what})"))
        models = {normalise_model(m) for m in info.models}
        for feature, model in wanted.items():
            if normalise_model(model) in models or _served_as_only_model(backend.kind, info.models):
                found[feature].append(backend.display_name)

    tasks: list[Awaitable[None]] = [check(index) for index in range(len(config.backends))]
    await asyncio.gather(*tasks)
    if not reachable:
        return
    kinds = {backend.kind for backend in config.backends}
    for feature, model in wanted.items():
        if found[feature]:
            verb = "pulled" if kinds == {"ollama"} else "available"
            report(
                Check(True, f"{feature} model", f"{model} is {verb} on {', '.join(sorted(found[feature]))}")
            )
            continue
        advice = []
        if "ollama" in kinds:
            advice.append(f"run `ollama pull {model}` on the Ollama server")
        if "openai" in kinds:
            advice.append("serve it on the OpenAI-compatible server, or configure the name that server uses")
        report(Check(False, f"{feature} model", f"{model} is not served: {'; or '.join(advice)}"))


def _served_as_only_model(kind: str, models: tuple[str, ...]) -> bool:
    """A llama.cpp-style server serves one model whatever name a request gives: that counts as served."""
    return kind == "openai" and len(models) == 1
