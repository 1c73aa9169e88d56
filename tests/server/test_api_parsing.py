"""Request parsing is pure: table-driven accept/refuse cases."""

from __future__ import annotations

from typing import Any

import pytest

from macprovider.server.api import (
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
        ({"messages": MSG}, "temperature", 1.0),
        ({"messages": MSG, "temperature": 0}, "temperature", 0.0),
        ({"messages": MSG, "top_p": 0.5}, "top_p", 0.5),
        ({"messages": MSG, "stop": "END"}, "stop", ("END",)),
        ({"messages": MSG, "stop": ["a", "", "b"]}, "stop", ("a", "b")),
        ({"messages": MSG, "seed": -1}, "seed", 2**32 - 1),
        ({"messages": MSG, "stream": True}, "stream", True),
        ({"messages": MSG, "stream_options": {"include_usage": True}}, "include_usage", True),
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
        ({"messages": MSG, "stream_options": {"include_usage": 1}}, "include_usage"),
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
