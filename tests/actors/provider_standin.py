"""A scriptable stand-in for `macprovider-supervise serve`, for the ProviderActor's tests.

Takes serve's argv shape (`--no-join --port P --model M [--kv-bits B] [--max-context N]
[--max-batch N]`), echoes its configuration to stderr, and serves `GET /v1/models` on
127.0.0.1:P with plain `http.server`. Its behaviour comes from the environment:

- `STANDIN_MODE`:
  `ok`                  503 while "loading", then 200
  `exit-during-load`    an "out of memory" line among config lines, exit 1, never listens
  `killed-during-load`  SIGKILLs itself while "loading", as a kill from outside would
  `never-ready`         503 forever
  `die-after-first-200` one 200, then exit 3
  `ignore-sigterm`      like `ok`, but SIGTERM is ignored
  `crash-after`         like `ok`, then a traceback and exit 70 after `STANDIN_CRASH_AFTER` s
- `STANDIN_LOAD_DELAY`: seconds of "loading" (default 0).
- `STANDIN_CRASH_AFTER`: seconds before `crash-after` crashes (default 1).

Like serve, it exits when the `MACPROVIDER_PARENT_FD` pipe closes, so it never outlives
the process that started it. Standard library only: it runs without the package.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import FrameType
from typing import Any

MODES = (
    "ok",
    "exit-during-load",
    "killed-during-load",
    "never-ready",
    "die-after-first-200",
    "ignore-sigterm",
    "crash-after",
)
EXIT_USAGE = 64
EXIT_DIED_AFTER_200 = 3
EXIT_CRASH = 70


def say(line: str) -> None:
    print(f"standin: {line}", file=sys.stderr, flush=True)


class StandinServer(HTTPServer):
    def __init__(self, port: int, mode: str, ready_at: float) -> None:
        super().__init__(("127.0.0.1", port), StandinHandler)
        self.mode = mode
        self.ready_at = ready_at


class StandinHandler(BaseHTTPRequestHandler):
    server: StandinServer

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            self._answer(404, b'{"error": "not found"}')
            return
        ready = self.server.mode != "never-ready" and time.monotonic() >= self.server.ready_at
        if not ready:
            self._answer(503, b'{"error": "loading"}')
            return
        self._answer(200, b'{"object": "list", "data": []}')
        if self.server.mode == "die-after-first-200":
            self.wfile.flush()
            say("answered once, now dying")
            os._exit(EXIT_DIED_AFTER_200)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the log should hold what the tests look at


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="provider_standin")
    parser.add_argument("--no-join", action="store_true")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--kv-bits", type=int)
    parser.add_argument("--max-context", type=int)
    parser.add_argument("--max-batch", type=int)
    return parser.parse_args(argv)


def watch_parent() -> None:
    raw = os.environ.get("MACPROVIDER_PARENT_FD")
    if raw is None:
        return

    def wait_for_eof() -> None:
        while os.read(int(raw), 4096):
            pass
        say("parent gone, exiting")
        os._exit(0)

    threading.Thread(target=wait_for_eof, daemon=True).start()


def crash_later(seconds: float) -> None:
    def crash() -> None:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "provider_standin.py", line 1, in crash', file=sys.stderr)
        print(f"RuntimeError: simulated crash after {seconds} s", file=sys.stderr, flush=True)
        os._exit(EXIT_CRASH)

    timer = threading.Timer(seconds, crash)
    timer.daemon = True
    timer.start()


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    say("SIGTERM, exiting")
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    args = parse(argv)
    mode = os.environ.get("STANDIN_MODE", "ok")
    if mode not in MODES:
        say(f"unknown STANDIN_MODE {mode!r}")
        return EXIT_USAGE
    watch_parent()
    say(f"config: model={args.model} port={args.port} no_join={args.no_join}")
    say(f"config: kv_bits={args.kv_bits} max_context={args.max_context}")
    say(f"config: max_batch={args.max_batch} mode={mode}")
    load_delay = float(os.environ.get("STANDIN_LOAD_DELAY", "0"))
    if mode == "exit-during-load":
        time.sleep(load_delay)  # the stand-in's "load", not a synchronisation
        say("loading weights: out of memory (needed 812 MiB, 96 MiB free)")
        say("config: releasing buffers")
        say("config: bye")
        return 1
    if mode == "killed-during-load":
        time.sleep(load_delay)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_sigterm)
    if mode == "crash-after":
        crash_later(float(os.environ.get("STANDIN_CRASH_AFTER", "1")))
    server = StandinServer(args.port, mode, time.monotonic() + load_delay)
    say(f"listening on 127.0.0.1:{args.port}")
    with server:
        server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
