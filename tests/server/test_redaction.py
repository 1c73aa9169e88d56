"""redact_argv: every way a command line can carry a secret, and the words it must keep."""

from __future__ import annotations

import pytest

from macprovider.server.redaction import REDACTED, redact_argv

H = REDACTED


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (("serve", "--api-key", "k1"), ("serve", "--api-key", H)),
        (("serve", "--api-key=k1"), ("serve", f"--api-key={H}")),
        (("serve", "--api-key="), ("serve", f"--api-key={H}")),
        (("--api-key", "k1", "--api-key", "k2"), ("--api-key", H, "--api-key", H)),
        # The word after the flag is its value, whatever it looks like.
        (("serve", "--api-key", "--model"), ("serve", "--api-key", H)),
        (("serve", "--api-key"), ("serve", "--api-key")),  # no value to hide
        (("env", "MACPROVIDER_API_KEY=k1", "serve"), ("env", f"MACPROVIDER_API_KEY={H}", "serve")),
        (("MACPROVIDER_PROVIDER_TOKEN=t1",), (f"MACPROVIDER_PROVIDER_TOKEN={H}",)),
        (("macprovider_api_key=k1",), (f"macprovider_api_key={H}",)),
        (("api_key: k1",), (f"api_key: {H}",)),
        (("provider_token=t1",), (f"provider_token={H}",)),
        (("curl", "-H", "Authorization: Bearer k1"), ("curl", "-H", f"Authorization: Bearer {H}")),
        (("-H", "authorization:bearer k1"), ("-H", f"authorization:bearer {H}")),
        (("-H", "Authorization: k1"), ("-H", f"Authorization: {H}")),
        (("Proxy-Authorization: Basic dXNlcjpwdw==",), (f"Proxy-Authorization: Basic {H}",)),
        # Kept: other flags and values, names that merely contain a secret's name.
        (("serve", "--model", "m", "--host", "::"), ("serve", "--model", "m", "--host", "::")),
        (("--api-keys", "x"), ("--api-keys", "x")),
        (("my_api_key=x",), ("my_api_key=x",)),
        (("MACPROVIDER_API_KEY_FILE=/k",), ("MACPROVIDER_API_KEY_FILE=/k",)),
        (("MACPROVIDER_HOST=0.0.0.0",), ("MACPROVIDER_HOST=0.0.0.0",)),
        (("api_key",), ("api_key",)),  # a name with no value
        (("--model", "Authorization"), ("--model", "Authorization")),
        ((), ()),
    ],
)
def test_redact_argv_hides_each_secret_value_and_keeps_everything_else(
    argv: tuple[str, ...], shown: tuple[str, ...]
) -> None:
    assert redact_argv(argv) == shown


def test_redact_argv_leaves_its_input_alone() -> None:
    argv = ["serve", "--api-key", "k1"]
    redact_argv(argv)
    assert argv == ["serve", "--api-key", "k1"]
