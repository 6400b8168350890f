"""What every backend client shares: the application's httpx client, timeouts, JSON GETs, opening streams."""

from __future__ import annotations

from typing import Any

import httpx

from bot.llm._errors import BackendError, BackendUnavailable
from bot.llm._stream import TextStream, WireFormat
from bot.llm._types import RetryPolicy, Timeouts


class HTTPBackendClient:
    """Base of the Ollama and OpenAI-compatible clients.

    It never creates its own HTTP client: pass the one the application owns, so connections are pooled
    and closed in one place.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        name: str = "",
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        # The read timeout of a stream is handled per phase by TextStream; httpx bounds connect and write.
        self._stream_timeout = httpx.Timeout(
            connect=connect_timeout, read=None, write=connect_timeout, pool=None
        )
        self._request_timeout = httpx.Timeout(connect_timeout, read=max(connect_timeout, 10.0))
        self._retry = retry or RetryPolicy()

    def _open_stream(
        self,
        path: str,
        body: dict[str, Any],
        wire: WireFormat,
        timeouts: Timeouts | None,
        retry: RetryPolicy | None,
    ) -> TextStream:
        url = self.base_url + path

        async def send() -> httpx.Response:
            request = self._http.build_request("POST", url, json=body, timeout=self._stream_timeout)
            try:
                return await self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise BackendUnavailable(
                    f"cannot connect to {self.name} (timed out)", backend=self.name
                ) from exc
            except (httpx.HTTPError, httpx.StreamError) as exc:
                # Transport errors, and the rarer protocol/decoding ones: none may escape the LLM layer.
                raise BackendUnavailable(
                    f"cannot connect to {self.name} ({type(exc).__name__})", backend=self.name
                ) from exc

        return TextStream(send, wire, timeouts=timeouts or Timeouts(), retry=retry or self._retry)

    async def _get_json(self, path: str) -> dict[str, Any]:
        return await self._json_request("GET", path)

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json_request("POST", path, body)

    async def _json_request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, self.base_url + path, json=body, timeout=self._request_timeout
            )
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise BackendUnavailable(
                f"cannot connect to {self.name} ({type(exc).__name__})", backend=self.name
            ) from exc
        if response.status_code != 200:
            raise BackendError(
                f"{path} answered HTTP {response.status_code}",
                status=response.status_code,
                retryable=response.status_code >= 500,
                backend=self.name,
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendError(
                f"{path} answered with invalid JSON", status=200, retryable=False, backend=self.name
            )
        return data
