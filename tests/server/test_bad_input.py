"""Bad requests get a 4xx with the OpenAI error shape, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]

BAD_REQUESTS: list[tuple[str, str, Any, int, str | None]] = [
    # (method, path, json body or raw bytes, status, param)
    ("POST", CHAT, b"{not json", 400, None),
    ("POST", CHAT, b"[1, 2]", 400, None),
    ("POST", CHAT, {}, 400, "messages"),
    ("POST", CHAT, {"messages": []}, 400, "messages"),
    ("POST", CHAT, {"messages": "hello"}, 400, "messages"),
    ("POST", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("POST", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("POST", CHAT, {"messages": [7]}, 400, "messages[0]"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "max_tokens": -3}, 400, "max_tokens"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "max_tokens": 10**12}, 400, "max_tokens"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "max_tokens": "10"}, 400, "max_tokens"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "max_tokens": True}, 400, "max_tokens"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "temperature": "hot"}, 400, "temperature"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "temperature": 9}, 400, "temperature"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "top_p": -0.5}, 400, "top_p"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "stream": "yes"}, 400, "stream"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "stop": [1]}, 400, "stop"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "seed": 1.5}, 400, "seed"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "n": 2}, 400, "n"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "model": "gpt-17"}, 404, "model"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "model": 3}, 400, "model"),
    ("POST", COMPLETIONS, {"prompt": ""}, 400, "prompt"),
    ("POST", COMPLETIONS, {"prompt": [1, "a"]}, 400, "prompt"),
    ("POST", COMPLETIONS, {"prompt": [10**9]}, 400, "prompt"),
    ("POST", COMPLETIONS, {}, 400, "prompt"),
    # Found by fuzzing: each was a 500 (RecursionError, a tokenizer's TypeError, "unhashable").
    ("POST", CHAT, b'{"messages": ' + b"[" * 1_000 + b"]" * 1_000 + b"}", 400, None),
    (
        "POST",
        CHAT,
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "messages[0].content",
    ),
    (
        "POST",
        CHAT,
        b'{"messages": [{"role": "user", "content": "a\\udcffb"}]}',
        400,
        "messages[0].content",
    ),
    ("POST", COMPLETIONS, b'{"prompt": "\\ud800"}', 400, "prompt"),
    ("POST", CHAT, {"messages": [{"role": {}, "content": "hi"}]}, 400, "messages[0].role"),
    ("POST", CHAT, {"messages": [{"role": ["user"], "content": "hi"}]}, 400, "messages[0].role"),
    ("POST", CHAT, {"messages": OK_MESSAGES, "temperature": 10**400}, 400, "temperature"),
    ("POST", COMPLETIONS, b'{"prompt": "a", "seed": ' + b"1" * 5000 + b"}", 400, None),
    ("POST", COMPLETIONS, {"prompt": "a", "echo": True}, 400, "echo"),
    ("GET", "/v1/nowhere", None, 404, None),
    ("GET", CHAT, None, 405, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), BAD_REQUESTS)
def test_bad_request_gets_openai_error(
    shared_server: ServerProcess, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.request(method, f"{shared_server.url}{path}", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert_still_serving(shared_server)


def test_body_over_8_mib_is_refused(shared_server: ServerProcess) -> None:
    huge = b'{"prompt": "' + b"a" * (8 * 1024 * 1024 + 1) + b'"}'
    response = httpx.post(f"{shared_server.url}{COMPLETIONS}", content=huge, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert_still_serving(shared_server)


def assert_still_serving(server: ServerProcess) -> None:
    body = {"prompt": "The", "max_tokens": 2, "temperature": 0}
    reply = httpx.post(f"{server.url}{COMPLETIONS}", json=body, timeout=60)
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 2
