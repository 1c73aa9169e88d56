"""Demo: start a real provider on a fixture model, stream one chat completion, stop it."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(server: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo: the server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"demo: the server was not ready within {READY_TIMEOUT_S:.0f} s")


def stream_one(url: str, model: str, prompt: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0)
    print(f"user> {prompt}\nassistant> ", end="", flush=True)
    started = time.perf_counter()
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        temperature=0.7,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    elapsed = time.perf_counter() - started
    print(f"\n\n[{tokens} tokens in {elapsed:.2f} s: {tokens / elapsed:.1f} tok/s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model folder or HF repo id")
    parser.add_argument("--prompt", default="Tell me the story of the fox and the grapes.")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "macprovider.cli", "serve", "--no-join", "--model", args.model]
    server = subprocess.Popen([*argv, "--port", str(port)])
    try:
        wait_ready(server, url)
        stream_one(url, args.model, args.prompt)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    if code != 0:
        sys.exit(f"demo: the server exited with code {code}")


if __name__ == "__main__":
    main()
