"""The endpoints: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from macprovider.server import api, chat_prompt
from macprovider.server.engine import Event, JobFailed, JobFinished, Sampled, TextDelta
from macprovider.server.errors import (
    ApiError,
    BadRequest,
    ContextLengthExceeded,
    NotFound,
    NotReady,
    ServerError,
    ShuttingDown,
)
from macprovider.server.logprobs import Logprobs, TokenSpeller
from macprovider.server.provider import Generation, Provider, Tokenization

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Hypercorn holds the response headers back until the first body bytes; this SSE comment
# (ignored by clients) sends them at once, so a queued request is visibly accepted.
SSE_ACCEPTED = b": accepted\n\n"


@dataclass(frozen=True)
class Shape:
    """How one endpoint spells its responses: the only difference between chat and completions."""

    id_prefix: str
    full_object: str
    chunk_object: str
    prompt_param: str

    def full_choice(
        self, text: str, finish: str, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self.prompt_param == "messages":
            message = {"role": "assistant", "content": text, "refusal": None}
            return {"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}

    def chunk_choice(
        self, text: str, finish: str | None, first: bool, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self.prompt_param == "messages":
            delta: dict[str, str] = {"role": "assistant"} if first else {}
            if text or not finish:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}


CHAT = Shape("chatcmpl", "chat.completion", "chat.completion.chunk", "messages")
COMPLETION = Shape("cmpl", "text_completion", "text_completion", "prompt")


@dataclass(frozen=True)
class Reply:
    """The fields every response object of one request shares."""

    shape: Shape
    id: str
    created: int
    model: str
    include_usage: bool = False
    logprobs: Logprobs | None = None  # None: not asked for

    def logprobs_of(self, batch: list[Event]) -> dict[str, Any] | None:
        """The logprobs of the tokens in `batch`, or None where the request did not ask."""
        if self.logprobs is None:
            return None
        return self.logprobs.render(_sampled(batch))

    def envelope(self, obj: str, **fields: Any) -> dict[str, Any]:
        head = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        return head | fields

    def chunk(self, choices: list[dict[str, Any]], used: dict[str, int] | None = None) -> bytes:
        """One stream chunk. As OpenAI's spec says, `usage` is there only when the client
        set `stream_options.include_usage`: null on every chunk but the last, which has
        `choices: []`. (Usage on more chunks than one gets counted twice by LangChain.)"""
        extra = {"usage": used} if self.include_usage else {}
        return _sse(self.envelope(self.shape.chunk_object, choices=choices, **extra))

    def text_chunk(self, text: str) -> bytes:
        """A mid-stream chunk: the hot path, so only the text is encoded per token."""
        head, tail = self._text_chunk_frame
        return head + json.dumps(text).encode() + tail

    @functools.cached_property
    def _text_chunk_frame(self) -> tuple[bytes, bytes]:
        # Rendered once through the general path, so both paths agree byte for byte.
        marker = "\u0000"
        frame = self.chunk([self.shape.chunk_choice(marker, None, first=False)])
        head, tail = frame.split(json.dumps(marker).encode())
        return head, tail


def usage(finished: JobFinished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


# OpenAI's finish reasons are a closed set with no "aborted": a job the shutdown cut short
# reports "length", the one that says the text ended before the model ended it, and the
# error event after it says why.
CUT_FINISH = "length"


def _cut_by_shutdown() -> ShuttingDown:
    return ShuttingDown("the server is shutting down; the request was cancelled")


def _outcome(batch: list[Event]) -> tuple[str, JobFinished | None]:
    """The text of a batch of events and, if the job ended, how; raises if it failed."""
    text = "".join(e.text for e in batch if isinstance(e, TextDelta))
    end = batch[-1]
    if isinstance(end, JobFailed):
        raise ServerError(end.message)
    return text, end if isinstance(end, JobFinished) else None


def _sampled(batch: list[Event]) -> list[Sampled]:
    return [e.sampled for e in batch if isinstance(e, TextDelta) and e.sampled is not None]


def _cut(end: JobFinished | None) -> bool:
    return end is not None and end.finish_reason == "cancelled"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def stream_chunks(generation: Generation, reply: Reply) -> AsyncIterator[bytes]:
    shape, first = reply.shape, True
    yield SSE_ACCEPTED
    try:
        async for batch in generation.batches():
            text, end = _outcome(batch)
            logprobs = reply.logprobs_of(batch)
            if end is None and not first and logprobs is None:
                yield reply.text_chunk(text)
                continue
            finish = (CUT_FINISH if _cut(end) else end.finish_reason) if end else None
            yield reply.chunk([shape.chunk_choice(text, finish, first, logprobs)])
            first = False
            if end and reply.include_usage:
                yield reply.chunk([], usage(end))
            if _cut(end):
                raise _cut_by_shutdown()
    except ApiError as error:
        yield _sse(error.body())
    yield b"data: [DONE]\n\n"


async def collect(generation: Generation, reply: Reply) -> dict[str, Any]:
    parts: list[str] = []
    steps: list[Event] = []
    try:
        async for batch in generation.batches():
            text, end = _outcome(batch)
            parts.append(text)
            if reply.logprobs is not None:
                steps += batch
            if _cut(end):
                raise _cut_by_shutdown()
            if end is not None:
                logprobs = reply.logprobs_of(steps)
                choice = reply.shape.full_choice("".join(parts), end.finish_reason, logprobs)
                return reply.envelope(reply.shape.full_object, choices=[choice], usage=usage(end))
    finally:
        generation.close()
    raise ServerError("generation ended without a result")


class ClosingBody:
    """A streaming body whose `aclose` frees the job even if streaming never started."""

    def __init__(self, chunks: AsyncIterator[bytes], generation: Generation):
        self._chunks = chunks
        self._generation = generation

    def __aiter__(self) -> ClosingBody:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        self._generation.close()
        await self._chunks.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ChatPrompt:
    """A chat's messages and their rendering, which is what bounds its size (templates may
    trim or drop content); the ids come from the messages (`chat_prompt.encode`)."""

    messages: chat_prompt.Messages
    text: str


def chat_rejected(exc: chat_prompt.ChatPromptError) -> BadRequest:
    return BadRequest(f"messages rejected by the chat template: {exc}")


async def render_chat(provider: Provider, req: api.ChatRequest) -> ChatPrompt:
    # Rendering is plain Python, quick even for MB of text; a thread keeps the loop free.
    try:
        text = await trio.to_thread.run_sync(chat_prompt.render, provider.tokenizer, req.messages)
    except chat_prompt.ChatPromptError as exc:
        raise chat_rejected(exc) from None
    return ChatPrompt(req.messages, text)


def too_long(shape: Shape, size: str, limit: int) -> ContextLengthExceeded:
    """OpenAI's wording, word for word up to the count: LiteLLM and others recognise a
    context overflow by its first sentence."""
    what = shape.prompt_param
    return ContextLengthExceeded(
        f"This model's maximum context length is {limit} tokens. However, your {what} "
        f"resulted in {size}. Please reduce the length of the {what}.",
        param=what,
        code="context_length_exceeded",
    )


async def tokenize(
    provider: Provider, shape: Shape, prompt: str | tuple[int, ...] | ChatPrompt
) -> list[int]:
    """The prompt's tokens, refused (413) as soon as its size says it cannot fit: text
    whose bytes alone need more tokens than the context never reaches a tokenizer, where
    a few MB would hold a lane for seconds only to be refused."""
    limit = provider.config.max_context
    tokenizer: Any = provider.tokenizer
    if isinstance(prompt, str | ChatPrompt):
        text = prompt.text if isinstance(prompt, ChatPrompt) else prompt
        text_bytes = len(text.encode())
        tokenization = provider.tokenization
        least = tokenization.min_tokens(text_bytes)
        if least > limit:
            longest = tokenization.max_token_bytes
            size = f"at least {least} tokens ({text_bytes} bytes of text, no token longer than"
            raise too_long(shape, f"{size} {longest} bytes)", limit)
        tokens = await encode(tokenization, prompt)
    else:
        tokens = list(prompt)
        vocab = len(tokenizer)
        if max(tokens) >= vocab:
            raise BadRequest(f"token ids must be below the vocabulary size {vocab}", param="prompt")
    if len(tokens) > limit:
        raise too_long(shape, f"{len(tokens)} tokens", limit)
    return tokens


async def encode(tokenization: Tokenization, prompt: str | ChatPrompt) -> list[int]:
    """A completion's prompt is the caller's whole text, special-token text parsed as the
    tokens it spells (as mlx_lm.server and vLLM do); a chat's messages stay text, and only
    the template writes control tokens."""
    if isinstance(prompt, str):
        return await tokenization.encode(prompt, special_tokens=True)
    try:
        return await tokenization.encode_chat(prompt.messages, prompt.text)
    except chat_prompt.ChatPromptError as exc:
        raise chat_rejected(exc) from None


def check_logit_bias(params: api.GenerationParams, vocab: int) -> None:
    too_big = [token for token, _ in params.logit_bias if token >= vocab]
    if too_big:
        raise BadRequest(
            f"'logit_bias' token id {too_big[0]} is not below the vocabulary size {vocab}",
            param="logit_bias",
        )


async def generate(
    provider: Provider,
    shape: Shape,
    params: api.GenerationParams,
    prompt: str | tuple[int, ...] | ChatPrompt,
) -> Response:
    tokens = await tokenize(provider, shape, prompt)
    if not tokens:
        raise BadRequest("the prompt encodes to no tokens", param=shape.prompt_param)
    tokenizer: Any = provider.tokenizer
    check_logit_bias(params, len(tokenizer))
    generation = provider.admit(tokens, params)
    reply = Reply(
        shape,
        f"{shape.id_prefix}-{uuid.uuid4().hex[:24]}",
        int(time.time()),
        provider.served_id,
        include_usage=params.include_usage,
        logprobs=None
        if params.top_logprobs is None
        else Logprobs(TokenSpeller(tokenizer), chat=shape is CHAT),
    )
    if params.stream:
        chunks = stream_chunks(generation, reply)
        body = ClosingBody(chunks, generation)
        return Response(body, mimetype="text/event-stream", headers=SSE_HEADERS)
    return Response(json.dumps(await collect(generation, reply)), mimetype="application/json")


def check_model(provider: Provider, params: api.GenerationParams) -> None:
    if not provider.accepts_model(params.model):
        raise NotFound(
            f"model {params.model!r} is not served here; this server serves {provider.served_id!r}",
            param="model",
            code="model_not_found",
        )


async def _json_body(provider: Provider) -> dict[str, Any]:
    body = api.decode_json_body(await request.get_data())
    provider.check_admitting()
    if not provider.ready:
        raise NotReady("the model is still loading", code="model_loading")
    return body


def register(app: QuartTrio, provider: Provider) -> None:
    max_context = provider.config.max_context

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        req = api.parse_chat_request(await _json_body(provider), max_context=max_context)
        check_model(provider, req.params)
        prompt = await render_chat(provider, req)
        return await generate(provider, CHAT, req.params, prompt)

    @app.post("/v1/completions")
    async def completions() -> Response:
        req = api.parse_completion_request(await _json_body(provider), max_context=max_context)
        check_model(provider, req.params)
        return await generate(provider, COMPLETION, req.params, req.prompt)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        if not provider.ready:
            raise NotReady("the model is still loading", code="model_loading")
        entry = {
            "id": provider.served_id,
            "object": "model",
            "created": provider.created,
            "owned_by": "macprovider",
        }
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": provider.ready}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(provider.metrics.render(), mimetype="text/plain; version=0.0.4")
