"""Request parsing is pure: table-driven accept/refuse cases."""

from __future__ import annotations

from typing import Any

import pytest

from macprovider.server.api import (
    MAX_JSON_DEPTH,
    decode_json_body,
    parse_chat_request,
    parse_completion_request,
)
from macprovider.server.errors import BadRequest

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        ({"messages": MSG}, "max_tokens", None),
        ({"messages": MSG, "max_tokens": 5}, "max_tokens", 5),
        ({"messages": MSG, "max_completion_tokens": 6, "max_tokens": 5}, "max_tokens", 6),
        # An explicit null is "unset", as LangChain sends it for every field it leaves alone.
        ({"messages": MSG, "max_completion_tokens": None, "max_tokens": 5}, "max_tokens", 5),
        ({"messages": MSG, "max_completion_tokens": 4, "max_tokens": None}, "max_tokens", 4),
        ({"messages": MSG, "max_tokens": 10**2}, "max_tokens", 100),
        ({"messages": MSG}, "temperature", 1.0),
        ({"messages": MSG, "temperature": 0}, "temperature", 0.0),
        ({"messages": MSG, "top_p": 0.5}, "top_p", 0.5),
        ({"messages": MSG, "stop": "END"}, "stop", ("END",)),
        ({"messages": MSG, "stop": ["a", "", "b"]}, "stop", ("a", "b")),
        ({"messages": MSG, "seed": -1}, "seed", 2**32 - 1),
        ({"messages": MSG, "stream": True}, "stream", True),
        ({"messages": MSG, "stream_options": {"include_usage": True}}, "include_usage", True),
        ({"messages": MSG, "top_p": 1}, "top_p", 1.0),
        ({"messages": MSG, "top_p": 0, "temperature": 1.5}, "temperature", 0.0),  # greedy
        ({"messages": MSG, "top_p": 0}, "top_p", 1.0),
        ({"messages": MSG, "seed": 10**30}, "seed", 10**30 % 2**32),
        (
            {"messages": MSG, "logit_bias": {"7": -100, "3": 0.5}},
            "logit_bias",
            ((3, 0.5), (7, -100.0)),
        ),
        # Penalties: OpenAI's two in [-2, 2], mlx-lm's repetition penalty above 0.
        ({"messages": MSG}, "presence_penalty", 0.0),
        ({"messages": MSG, "presence_penalty": -2}, "presence_penalty", -2.0),
        ({"messages": MSG, "frequency_penalty": 2}, "frequency_penalty", 2.0),
        ({"messages": MSG, "frequency_penalty": 0.5}, "frequency_penalty", 0.5),
        ({"messages": MSG}, "repetition_penalty", 1.0),
        ({"messages": MSG, "repetition_penalty": 1.3}, "repetition_penalty", 1.3),
        ({"messages": MSG, "repetition_penalty": 0.01}, "repetition_penalty", 0.01),
        # Chat logprobs: None is "not asked"; `logprobs: true` alone is the chosen token's.
        ({"messages": MSG}, "top_logprobs", None),
        ({"messages": MSG, "logprobs": False}, "top_logprobs", None),
        ({"messages": MSG, "logprobs": True}, "top_logprobs", 0),
        ({"messages": MSG, "logprobs": True, "top_logprobs": 20}, "top_logprobs", 20),
        ({"messages": MSG, "logprobs": True, "top_logprobs": 3}, "top_logprobs", 3),
        ({"messages": MSG, "top_logprobs": 0}, "top_logprobs", None),  # asks for nothing
        # Not-honoured fields at their "not asked for" values pass.
        ({"messages": MSG, "logprobs": False, "frequency_penalty": 0}, "stream", False),
        ({"messages": MSG, "tools": [], "tool_choice": "none"}, "stream", False),
        ({"messages": MSG, "response_format": {"type": "text"}}, "stream", False),
    ],
)
def test_chat_params_are_read(body: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(parse_chat_request(body, max_context=100).params, field) == value


def test_text_parts_are_joined() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    req = parse_chat_request({"messages": [{"role": "user", "content": content}]}, max_context=9)
    assert req.messages == ({"role": "user", "content": "ab"},)


@pytest.mark.parametrize(
    ("prompt", "parsed"),
    [("hello", "hello"), (["hello"], "hello"), ([1, 2], (1, 2)), ([[3, 4]], (3, 4))],
)
def test_completion_prompt_forms(prompt: Any, parsed: Any) -> None:
    assert parse_completion_request({"prompt": prompt}, max_context=9).prompt == parsed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ({"messages": MSG, "max_tokens": 101}, "max_tokens"),
        ({"messages": MSG, "top_p": 1.5}, "top_p"),
        ({"messages": MSG, "temperature": float("nan")}, "temperature"),
        ({"messages": MSG, "stop": ["a"] * 5}, "stop"),
        ({"messages": MSG, "stream_options": 3}, "stream_options"),
        ({"messages": MSG, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        # Wrong JSON types anywhere are a 400 naming the field, never a TypeError.
        ({"messages": [{"role": {}, "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": [], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": 1, "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a\udcffb"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": [{"type": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [None, 1]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content"),
        ({"messages": MSG, "max_tokens": True}, "max_tokens"),
        ({"messages": MSG, "max_tokens": 5.0}, "max_tokens"),
        ({"messages": MSG, "max_tokens": 10**400}, "max_tokens"),
        ({"messages": MSG, "max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens"),
        ({"messages": MSG, "temperature": float("inf")}, "temperature"),
        ({"messages": MSG, "temperature": 10**400}, "temperature"),
        ({"messages": MSG, "temperature": True}, "temperature"),
        ({"messages": MSG, "top_p": -0.0001}, "top_p"),
        ({"messages": MSG, "seed": True}, "seed"),
        ({"messages": MSG, "seed": "7"}, "seed"),
        ({"messages": MSG, "stop": {"a": 1}}, "stop"),
        ({"messages": MSG, "stop": 5}, "stop"),
        ({"messages": MSG, "stop": ["\ud800"]}, "stop"),
        ({"messages": MSG, "logit_bias": []}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"x": 1}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"\ud800": 1}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"5": "1"}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"5": None}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"5": 10**400}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"5": float("nan")}}, "logit_bias"),
        ({"messages": MSG, "stream_options": []}, "stream_options"),
        ({"messages": MSG, "stream_options": False}, "stream_options"),
        ({"messages": MSG, "n": True}, "n"),
        ({"messages": MSG, "n": 1.0}, "n"),
        ({"messages": MSG, "n": {}}, "n"),
        ({"messages": MSG, "model": "\ud800"}, "model"),
        ({"messages": MSG, "presence_penalty": 2.01}, "presence_penalty"),
        ({"messages": MSG, "presence_penalty": -2.5}, "presence_penalty"),
        ({"messages": MSG, "presence_penalty": "1"}, "presence_penalty"),
        ({"messages": MSG, "frequency_penalty": -3}, "frequency_penalty"),
        ({"messages": MSG, "frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"messages": MSG, "frequency_penalty": True}, "frequency_penalty"),
        ({"messages": MSG, "repetition_penalty": 0}, "repetition_penalty"),
        ({"messages": MSG, "repetition_penalty": -1.2}, "repetition_penalty"),
        ({"messages": MSG, "repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"messages": MSG, "repetition_penalty": 10**400}, "repetition_penalty"),
        ({"messages": MSG, "repetition_penalty": True}, "repetition_penalty"),
        ({"messages": MSG, "logprobs": 1}, "logprobs"),  # chat's is a boolean
        ({"messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": 2.0}, "top_logprobs"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": True}, "top_logprobs"),
        # As OpenAI: alternatives need `logprobs: true`.
        ({"messages": MSG, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": MSG, "logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        # Fields OpenAI defines that are not honoured yet: refused, not silently ignored.
        ({"messages": MSG, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": MSG, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": MSG, "tool_choice": "auto"}, "tool_choice"),
    ],
)
def test_chat_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(body, max_context=100)
    assert caught.value.param == param
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"", b"nul", b"\xff\xfe", b'"text"', b"3"])
def test_non_object_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_json_body(raw)


NULLS_FOR_EVERY_OPTIONAL_FIELD = {
    key: None
    for key in [
        "model",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "logit_bias",
        "user",
        "echo",
        "suffix",
        "best_of",
        "logprobs",
        "top_logprobs",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "tools",
        "tool_choice",
        "response_format",
    ]
}


def test_null_means_unset_for_every_optional_field() -> None:
    chat = parse_chat_request({"messages": MSG, **NULLS_FOR_EVERY_OPTIONAL_FIELD}, max_context=9)
    plain = parse_chat_request({"messages": MSG}, max_context=9)
    assert chat == plain
    body = {"prompt": "hi", **NULLS_FOR_EVERY_OPTIONAL_FIELD}
    assert parse_completion_request(body, max_context=9) == parse_completion_request(
        {"prompt": "hi"}, max_context=9
    )


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        ({"prompt": "hi"}, "top_logprobs", None),
        ({"prompt": "hi", "logprobs": 0}, "top_logprobs", 0),
        ({"prompt": "hi", "logprobs": 5}, "top_logprobs", 5),
        # Chat's fields are unknown extras here, so ignored.
        ({"prompt": "hi", "top_logprobs": 3}, "top_logprobs", None),
        ({"prompt": "hi", "presence_penalty": 1.5}, "presence_penalty", 1.5),
        ({"prompt": "hi", "frequency_penalty": -1}, "frequency_penalty", -1.0),
        ({"prompt": "hi", "repetition_penalty": 2}, "repetition_penalty", 2.0),
    ],
)
def test_completion_params_are_read(body: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(parse_completion_request(body, max_context=100).params, field) == value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "\ud800"}, "prompt"),
        ({"prompt": ["a\udcffb"]}, "prompt"),
        ({"prompt": [True, 2]}, "prompt"),
        ({"prompt": [1.0]}, "prompt"),
        ({"prompt": {"a": 1}}, "prompt"),
        ({"prompt": "hi", "max_tokens": 0.5}, "max_tokens"),
        ({"prompt": "hi", "max_completion_tokens": 0.5, "max_tokens": 3}, None),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": "hi", "suffix": "end"}, "suffix"),
        ({"prompt": "hi", "best_of": 2}, "best_of"),
        ({"prompt": "hi", "logprobs": 6}, "logprobs"),
        ({"prompt": "hi", "logprobs": -1}, "logprobs"),
        ({"prompt": "hi", "logprobs": True}, "logprobs"),  # completions' is a count
        ({"prompt": "hi", "logprobs": 1.0}, "logprobs"),
        ({"prompt": "hi", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "hi", "frequency_penalty": -2.1}, "frequency_penalty"),
        ({"prompt": "hi", "repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_completion_refusals_name_the_field(body: dict[str, Any], param: str | None) -> None:
    if param is None:  # the chat-only field is an unknown extra here, so ignored
        parse_completion_request(body, max_context=100)
        return
    with pytest.raises(BadRequest) as caught:
        parse_completion_request(body, max_context=100)
    assert caught.value.param == param


def nested(depth: int) -> bytes:
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (nested(MAX_JSON_DEPTH), False),
        (nested(MAX_JSON_DEPTH + 1), True),
        (b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}", False),
        (b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}", True),
        (b'{"prompt": "' + b"[{" * 1_000 + b'"}', False),  # brackets in a string are text
        (nested(1_000), True),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", True),  # past the parser's recursion
    ],
)
def test_json_depth_is_limited(raw: bytes, refused: bool) -> None:
    if not refused:
        decode_json_body(raw)
        return
    with pytest.raises(BadRequest, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        decode_json_body(raw)


def test_an_integer_too_long_to_parse_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_json_body(b'{"seed": ' + b"9" * 5000 + b"}")


def test_a_refusal_shows_only_the_start_of_a_huge_value() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_chat_request({"messages": MSG, "max_tokens": "x" * 10**6}, max_context=9)
    assert len(caught.value.message) < 300
