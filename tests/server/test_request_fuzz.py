"""No request body gets a 5xx: arbitrary JSON at every field a real server reads.

Every 4xx must carry OpenAI's error object. Bodies that happen to be valid generate at most
two tokens, so each example costs a round trip and little compute.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess

EXAMPLES_PER_ENDPOINT = 150

plain_text = st.text(max_size=8)
# JSON's `\ud800` escapes reach the server as lone surrogates, which hypothesis draws
# rarely unless asked: a third of the strings hold one.
lone_surrogate = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
any_text = st.one_of(
    plain_text,
    plain_text,
    st.tuples(plain_text, lone_surrogate, plain_text).map("".join),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and ±Infinity included: Python's json sends them as literals
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


def mostly(valid: st.SearchStrategy[Any], one_in: int = 4) -> st.SearchStrategy[Any]:
    """Valid but one time in `one_in`, then any JSON value: deep inside a body, where a
    body with every part valid is needed to reach the tokenizer and the generator."""
    return st.integers(1, one_in).flatmap(lambda i: json_values if i == 1 else valid)


# A limit that is valid is 1 or 2; any other value must be refused, never default to 512.
not_an_int = json_values.filter(lambda v: v is not None and type(v) is not int)
token_limit = st.sampled_from([1, 2]) | not_an_int | st.integers(max_value=0)

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": any_text})
message = st.fixed_dictionaries(
    {
        "role": mostly(st.sampled_from(["system", "user", "assistant", "tool", "developer"]), 8),
        "content": mostly(st.none() | any_text | st.lists(mostly(text_part), max_size=2)),
    },
    optional={"name": json_values},
)

# Each field a valid value (null included: "unset"), as a body a client means to send.
COMMON_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.none(),
    "max_tokens": st.sampled_from([1, 2]),
    "n": st.sampled_from([None, 1]),
    "temperature": st.none() | st.floats(0, 2),
    "top_p": st.none() | st.floats(0, 1),
    "seed": st.none() | st.integers(),
    "stop": st.none() | any_text | st.lists(any_text, max_size=4),
    "stream": st.none() | st.booleans(),
    "stream_options": st.none()
    | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "logit_bias": st.none()
    | st.dictionaries(st.integers(0, 100).map(str), st.floats(-100, 100), max_size=3),
    "user": json_values,
    "logprobs": st.none(),
    "frequency_penalty": st.sampled_from([None, 0]),
    "presence_penalty": st.sampled_from([None, 0.0]),
}
CHAT_FIELDS = COMMON_FIELDS | {
    "messages": st.lists(message, min_size=1, max_size=3),
    "max_completion_tokens": st.sampled_from([None, 1, 2]),
    "top_logprobs": st.none(),
    "tools": st.sampled_from([None, []]),
    "tool_choice": st.sampled_from([None, "none"]),
    "response_format": st.sampled_from([None, {"type": "text"}]),
}
COMPLETION_FIELDS = COMMON_FIELDS | {
    "prompt": any_text | st.lists(st.integers(0, 200), min_size=1, max_size=4),
    "echo": st.sampled_from([None, False]),
    "suffix": st.sampled_from([None, ""]),
    "best_of": st.sampled_from([None, 1]),
}
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")
KNOWN_FIELDS = CHAT_FIELDS | COMPLETION_FIELDS
extra_fields = st.dictionaries(
    any_text.filter(lambda k: k not in KNOWN_FIELDS), json_values, max_size=2
)


def bodies(fields: dict[str, st.SearchStrategy[Any]], required: str) -> st.SearchStrategy[Any]:
    """A valid body (the required field and `max_tokens` always there, others sometimes),
    then up to three known fields replaced by any JSON value, then unknown fields added."""
    always = {required, "max_tokens"}
    valid = st.fixed_dictionaries(
        {k: v for k, v in fields.items() if k in always},
        optional={k: v for k, v in fields.items() if k not in always},
    )
    # A replaced token limit is still never null or a large int: each valid body
    # generates at most two tokens.
    arbitrary = {k: token_limit if k in TOKEN_LIMITS else json_values for k in fields}
    replaced = st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: arbitrary[k] for k in keys})
    )
    return st.tuples(valid, replaced, extra_fields).map(lambda b: b[2] | b[0] | b[1])


chat_bodies = bodies(CHAT_FIELDS, "messages")
completion_bodies = bodies(COMPLETION_FIELDS, "prompt")


def assert_no_server_error(server: ServerProcess, path: str, request: dict[str, Any]) -> None:
    # Serialised here: Python's json keeps NaN and lone surrogates (as \ud800 escapes),
    # which httpx's own encoder refuses.
    content = json.dumps(request).encode()
    headers = {"Content-Type": "application/json"}
    with httpx.stream(
        "POST", f"{server.url}{path}", content=content, headers=headers, timeout=60
    ) as response:
        raw = response.read()
    assert response.status_code < 500, (response.status_code, raw[:500], request)
    event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics: how many got through
    if response.status_code >= 400:
        error = json.loads(raw)["error"]
        assert isinstance(error["message"], str) and error["message"], request
        assert isinstance(error["type"], str), request
        assert error["param"] is None or isinstance(error["param"], str), request
        assert error["code"] is None or isinstance(error["code"], str), request


FUZZ = settings(
    max_examples=EXAMPLES_PER_ENDPOINT,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(request=chat_bodies)
def test_chat_bodies_never_get_a_5xx(shared_server: ServerProcess, request: dict[str, Any]) -> None:
    assert_no_server_error(shared_server, "/v1/chat/completions", request)


@FUZZ
@given(request=completion_bodies)
def test_completion_bodies_never_get_a_5xx(
    shared_server: ServerProcess, request: dict[str, Any]
) -> None:
    assert_no_server_error(shared_server, "/v1/completions", request)
