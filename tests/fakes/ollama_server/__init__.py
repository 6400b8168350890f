"""A fake Ollama server speaking the real HTTP API over real sockets (aiohttp).

Wire format, error table and scheduling follow ``shared/reference/ollama.md`` (ollama v0.5–0.13):
NDJSON streamed and flushed per token with headers held until the first chunk, ``stream`` defaulting to
true, stats only on the final object, 404/400/503 errors with Ollama's bodies, cancellation when the
client goes away, ``num_predict`` cutting the reply (``done_reason: "length"``), ``num_parallel`` slots
per loaded model with a FIFO wait, model load time, and eviction when ``max_loaded`` models are in memory.
``/v1/chat/completions`` (SSE) and ``GET /v1/models`` behave like llama-cpp-python's server.

Options that make it as harsh as real servers (constructor keywords; ``POST /_fake/config {"name": value}``
at run time, ``GET /_fake/config`` to read them; ``--kebab-case`` flags on the command line). Defaults are
the harsh behaviour, except where the rest of the test suite needs the kind one (marked *kind default*):

``subword_tokens`` (False, *kind default*)
    Count and stream sub-word tokens (:func:`tokenize_subword`): long words in 2–5 character pieces, every
    digit and punctuation character a token, so chunks start mid-word. Every reported count
    (``eval_count``, ``prompt_eval_count``, ``usage``) uses the active tokenizer.
``prompt_tokens_per_second`` (None = instant, *kind default*)
    Prompt reading time, spent after the slot and the load, before the first token. The prompt's tokens
    are each message's content tokens plus 4 of template a message (:func:`count_prompt_tokens`;
    ``/api/generate``: the prompt, and ``system`` if given, as messages). Reported truthfully as
    ``prompt_eval_count``/``prompt_eval_duration`` (Ollama) and ``usage.prompt_tokens`` (``/v1``).
``openai_ping_interval`` (15.0)
    ``/v1`` streams send 200 and the headers at once, before the slot, the load and the prompt; the first
    event carries only ``{"role": "assistant"}`` (right before the first text), then content deltas, a chunk
    with ``finish_reason`` (``stop``/``length``), ``data: [DONE]``. An SSE comment ``: ping - <UTC time>``
    goes out every this many seconds from the start, as sse-starlette does.
``interrupt_requests`` (True)
    Any new request (every route but ``/_fake/*``; ``GET /v1/models`` included) ends every ``/v1`` stream in
    progress at once with ``data: [DONE]`` and no finish-reason chunk.
``serialize_requests`` (True)
    ``GET /v1/models`` waits until every ``/v1`` completion that arrived before it has ended.
``num_ctx`` (None)
    The context window. Ollama routes use the request's ``options.num_ctx``, else this, else 2048: a longer
    prompt is silently cut (old messages dropped, system messages kept; then the start of what is left,
    system prompt included, keeping about half the window), ``prompt_eval_count`` is the cut count, and
    the reply ends with ``done_reason: "length"`` when prompt + reply fill the window. ``/v1``: None is no
    limit; else a prompt of ``num_ctx`` tokens or more gets llama-cpp-python's 400
    (``context_length_exceeded``), and the reply ends with ``finish_reason: "length"`` at the window.
``openai_overflow_empty_stream`` (True)
    With ``stream: true`` such a prompt gets what llama-cpp-python really sends: 200, the SSE headers and
    an empty stream (False: the 400 as for ``stream: false``).
``props_endpoint`` (False)
    Serve llama.cpp's ``GET /props`` (``default_generation_settings.n_ctx``); 404 otherwise.
``chatty_articles`` (False, *kind default*: the bot's tests expect ``# Title`` first)
    Articles (``/api/generate``, and a request asking for a "blog post" on any route) come the way small
    instruct models write them (:func:`chatty_article`): a preamble, ``# Title``/``Title:``/``**Title**``/no
    title, sometimes a ```` ```markdown ```` fence, sometimes a sign-off; False: ``# Title`` first.
    Their length follows ``num_predict``/``max_tokens``; scripted replies win.

Images: ``/api/chat`` messages take ``images`` (base64 strings), ``/v1`` messages ``content`` as a list of
``text`` and ``image_url`` parts (``data:image/<png|jpeg|jpg|webp|gif>;base64,…`` only, else 400 "invalid
image input", Ollama's ``openai.decodeImageURL``). Only the models named in ``VISION_MODELS`` (``llava``,
…) see them: ``POST /api/show`` lists ``capabilities`` ``["completion", "vision"]`` (``["completion"]``
for the others; ``details.families`` has ``clip`` for vision models, as older Ollama shows it); images
for any other model get the Ollama engine's 500 "Failed to create new sequence: this model is missing
data required for image input" (``/v1``: llama.cpp's 400 "image input is not supported …"); bytes that
are no PNG/JPEG/GIF/WebP a 500 "… image: unknown format". Each image counts 768 prompt tokens.

Control endpoints for tests and benchmarks live under ``/_fake/``: ``script``, ``faults``, ``requests``,
``probes``, ``stats``, ``config``, ``reset``. Faults (``POST /_fake/faults`` or :meth:`add_fault`,
``{"kind", "count", "after_tokens", "status", "model", "path"}``): ``status`` (an HTTP error), ``hang``
(nothing at all with ``after_tokens`` 0, else a stall mid-stream), ``die_mid_stream`` (the connection
aborted), ``error_line`` (an ``{"error"}`` line/event), ``done_without_finish`` (the ``/v1`` stream ends
with ``[DONE]`` and no finish_reason, an Ollama stream without ``done: true``), ``keepalive_only`` (headers,
and pings on ``/v1``, but never a token until the client leaves) and ``length_after`` (the reply ends with
``length`` after ``after_tokens`` tokens).

The request log (``server.requests``, ``GET /_fake/requests``) has one record per generation request with
``path``, ``body``, ``model``, ``status``, times (``received_at``, ``headers_at``, ``first_token_at``,
``finished_at``; ``time.monotonic()``), ``tokens`` sent, ``completion_text`` (the text actually sent),
``prompt_tokens``, ``prompt_truncated``, ``prompt_dropped_messages``, ``prompt_cut_tokens``,
``finish_reason`` (``stop``, ``length``, ``load``/``unload``, or None when interrupted or broken),
``interrupted``, ``disconnected``, ``pings`` and ``images`` (how many the request carried; the images
themselves are in ``body``). Health probes (``GET /v1/models``, ``/api/version``,
``/api/tags``, ``/api/ps``) are logged apart (``server.probes``, ``GET /_fake/probes``) with ``path``,
``received_at``, ``answered_at``, ``status`` and ``busy`` (a generation was in progress when it arrived).
"""

from tests.fakes.ollama_server.app import CONFIG_OPTIONS, FAULT_KINDS, FakeOllamaServer
from tests.fakes.ollama_server.replies import (
    CHATTY_VARIANTS,
    TEMPLATE_TOKENS_PER_MESSAGE,
    article,
    chatty_article,
    count_prompt_tokens,
    tokenize,
    tokenize_subword,
)

__all__ = [
    "CHATTY_VARIANTS",
    "CONFIG_OPTIONS",
    "FAULT_KINDS",
    "TEMPLATE_TOKENS_PER_MESSAGE",
    "FakeOllamaServer",
    "article",
    "chatty_article",
    "count_prompt_tokens",
    "tokenize",
    "tokenize_subword",
]
