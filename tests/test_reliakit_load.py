"""ops/load: which answers count as bad, how a run is counted, judged and printed (on
hand-made answers), and one short real run against a `serve` of the tiny fixture."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reliakit.load_clients import Plan, backoff_s, plan_request
from reliakit.load_main import parse_args
from reliakit.load_server import SLOT_GAUGES, gauges
from reliakit.load_summary import (
    EXIT_FAILED,
    EXIT_OK,
    PROBLEMS_KEPT,
    Aftermath,
    Report,
    Settings,
    Stopped,
    Tally,
    as_json,
    exit_code,
    final_line,
    render,
)
from reliakit.load_verdict import SHAPES, Attempt, RequestShape, Verdict, classify, data_events
from tests.conftest import ROOT, clean_env

CHAT_STREAM = RequestShape("chat", stream=True)
CHAT_PLAIN = RequestShape("chat", stream=False)
TEXT_STREAM = RequestShape("completions", stream=True)
TEXT_PLAIN = RequestShape("completions", stream=False)
BUSY = b'{"error":{"message":"all slots taken","type":"server_error","param":null,"code":null}}'


def chunk(obj: str, choice: dict[str, object] | None, **extra: object) -> bytes:
    choices = [] if choice is None else [choice]
    body = {"id": "x", "object": obj, "created": 1, "model": "m", "choices": choices, **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def chat_chunk(content: str, finish: str | None = None) -> bytes:
    delta = {"content": content} if content else {}
    return chunk("chat.completion.chunk", {"index": 0, "delta": delta, "finish_reason": finish})


def text_chunk(text: str, finish: str | None = None) -> bytes:
    return chunk("text_completion", {"index": 0, "text": text, "finish_reason": finish})


ACCEPTED, DONE = b": accepted\n\n", b"data: [DONE]\n\n"
CHAT_OK = ACCEPTED + chat_chunk("Hi") + chat_chunk(" there") + chat_chunk("", "length") + DONE
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
TEXT_OK = text_chunk("a", "stop") + chunk("text_completion", None, usage=USAGE) + DONE


def full(obj: str, choice: dict[str, object], usage: object = USAGE) -> bytes:
    body = {"id": "x", "object": obj, "created": 1, "model": "m", "choices": [choice]}
    return json.dumps({**body, "usage": usage}).encode()


CHAT_FULL = full(
    "chat.completion",
    {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"},
)
TEXT_FULL = full("text_completion", {"index": 0, "text": "Hi", "finish_reason": "length"})


@pytest.mark.parametrize(
    ("attempt", "label", "problem"),
    [
        # Good answers.
        (Attempt(CHAT_PLAIN, 200, body=CHAT_FULL), "200", None),
        (Attempt(TEXT_PLAIN, 200, body=TEXT_FULL), "200", None),
        (Attempt(CHAT_STREAM, 200, body=CHAT_OK), "200", None),
        (Attempt(TEXT_STREAM, 200, body=TEXT_OK), "200", None),
        (Attempt(CHAT_STREAM, 200, body=CHAT_OK.replace(b"\n", b"\r\n")), "200", None),
        (Attempt(CHAT_PLAIN, 503, "1", BUSY), "503", None),
        (Attempt(CHAT_STREAM, 503, "1", BUSY), "503", None),
        # Our own cuts: what arrived must be well formed, nothing more is owed.
        (Attempt(CHAT_PLAIN, cut=True), "cut by us before an answer", None),
        (
            Attempt(CHAT_STREAM, 200, body=ACCEPTED + chat_chunk("Hi"), cut=True),
            "200 (cut by us)",
            None,
        ),
        (
            Attempt(CHAT_STREAM, 200, body=ACCEPTED + b'data: {"id', cut=True),
            "200 (cut by us)",
            None,
        ),
        (
            Attempt(CHAT_STREAM, 200, body=b"data: {oops}\n\n", cut=True),
            "200 (cut by us)",
            "chat stream: malformed JSON chunk",
        ),
        # Streams that break the SSE contract.
        (
            Attempt(CHAT_STREAM, 200, body=ACCEPTED + chat_chunk("Hi", "stop")),
            "200",
            "chat stream: stream ended without data: [DONE]",
        ),
        (
            Attempt(CHAT_STREAM, 200, body=chat_chunk("Hi", "stop") + b"data: [DO"),
            "200",
            "stream ended inside an event",
        ),
        (
            Attempt(CHAT_STREAM, 200, body=chat_chunk("Hi", "stop") + b"data: {bad\n\n" + DONE),
            "200",
            "malformed JSON chunk",
        ),
        (
            Attempt(CHAT_STREAM, 200, body=chat_chunk("Hi") + b"data: " + BUSY + b"\n\n" + DONE),
            "200",
            "stream carried an error",
        ),
        (Attempt(CHAT_STREAM, 200, body=CHAT_OK + chat_chunk("x")), "200", "data after [DONE]"),
        (Attempt(CHAT_STREAM, 200, body=chat_chunk("Hi") + DONE), "200", "without a finish_reason"),
        (Attempt(CHAT_STREAM, 200, body=TEXT_OK), "200", "not a chat.completion.chunk chunk"),
        (
            Attempt(TEXT_STREAM, 200, body=chunk("text_completion", {"index": 0}) + DONE),
            "200",
            "chunk choice without text",
        ),
        (
            Attempt(TEXT_STREAM, 200, body=text_chunk("a", "cancelled") + DONE),
            "200",
            "finish_reason 'cancelled'",
        ),
        # Plain bodies that are not the OpenAI object.
        (Attempt(CHAT_PLAIN, 200, body=b"<html>"), "200", "chat plain: not a JSON object"),
        (Attempt(CHAT_PLAIN, 200, body=TEXT_FULL), "200", "object is 'text_completion'"),
        (
            Attempt(TEXT_PLAIN, 200, body=TEXT_FULL.replace(b'"text"', b'"txt"')),
            "200",
            "without text",
        ),
        (
            Attempt(TEXT_PLAIN, 200, body=full("text_completion", {"text": "a"})),
            "200",
            "finish_reason",
        ),
        (
            Attempt(
                TEXT_PLAIN,
                200,
                body=full("text_completion", {"text": "a", "finish_reason": "stop"}, None),
            ),
            "200",
            "no usage",
        ),
        # Error statuses.
        (Attempt(CHAT_PLAIN, 503, None, BUSY), "503", "503 without Retry-After"),
        (
            Attempt(CHAT_PLAIN, 503, "1", b"Service Unavailable"),
            "503",
            "not an OpenAI error object",
        ),
        (Attempt(CHAT_PLAIN, 503, "1", b'{"error": "busy"}'), "503", "not an OpenAI error object"),
        (Attempt(CHAT_PLAIN, 500, body=BUSY), "500", '500 \'{"error"'),
        (Attempt(TEXT_STREAM, 502, "1", BUSY), "502", "a server error"),
        (Attempt(CHAT_PLAIN, 400, body=BUSY), "400", "refused a valid request"),
        # Transport failures we did not cause.
        (
            Attempt(CHAT_PLAIN, failure="RemoteProtocolError: Server disconnected"),
            "transport failure",
            "chat plain: RemoteProtocolError: Server disconnected",
        ),
        (
            Attempt(CHAT_STREAM, 200, body=ACCEPTED, failure="ReadError"),
            "transport failure",
            "ReadError after 200 ': accepted",
        ),
    ],
)
def test_an_answer_is_counted_under_its_status_and_judged(
    attempt: Attempt, label: str, problem: str | None
) -> None:
    verdict = classify(attempt)
    assert verdict.label == label
    if problem is None:
        assert verdict.problem is None
    else:
        assert verdict.problem is not None
        assert problem in verdict.problem
        assert verdict.problem.startswith(f"{attempt.shape.label}: ")


@pytest.mark.parametrize(
    ("body", "events"),
    [
        (b"", 0),
        (ACCEPTED, 0),  # a comment carries no data
        (ACCEPTED + chat_chunk("a"), 1),
        (chat_chunk("a") + b'data: {"half', 1),  # the unfinished event is not read yet
        (CHAT_OK, 4),
    ],
)
def test_data_events_count_whole_events_with_data(body: bytes, events: int) -> None:
    assert data_events(body) == events


def test_a_tally_counts_by_shape_and_status_and_keeps_the_first_problems() -> None:
    tally = Tally()
    tally.add(CHAT_STREAM, Verdict("200"))
    tally.add(CHAT_STREAM, Verdict("503"))
    tally.add(TEXT_PLAIN, Verdict("200"))
    for n in range(PROBLEMS_KEPT + 3):
        tally.add(TEXT_PLAIN, Verdict("500", f"problem {n}"))
    assert tally.total == PROBLEMS_KEPT + 6
    assert tally.bad == PROBLEMS_KEPT + 3
    assert tally.by_status() == {"200": 2, "503": 1, "500": PROBLEMS_KEPT + 3}
    assert tally.counts["chat stream"] == {"200": 1, "503": 1}
    assert tally.problems == [f"problem {n}" for n in range(PROBLEMS_KEPT)]


SETTINGS = Settings(7, 64, 120.0, "/fixtures/small", 4, 16, 0.3)
STOPPED = Stopped(0, 0.3, by_us=True)


def make_report(
    problems: tuple[str, ...] = (),
    slots_free_s: float | None = 0.2,
    answer_problem: str | None = None,
    stopped: Stopped = STOPPED,
) -> Report:
    tally = Tally()
    for _ in range(10):
        tally.add(CHAT_PLAIN, Verdict("200"))
    for problem in problems:
        tally.add(CHAT_STREAM, Verdict("500", problem))
    after = Aftermath(slots_free_s, "running 0, queued 0", answer_problem)
    return Report(SETTINGS, tally, 10.0, (100.0, 150.0, 120.0), after, stopped)


@pytest.mark.parametrize(
    ("report", "code", "line"),
    [
        (make_report(), EXIT_OK, "load: 0 bad of 10 requests"),
        (make_report(("boom",)), EXIT_FAILED, "load: 1 bad of 11 requests"),
        (
            make_report(slots_free_s=None),
            EXIT_FAILED,
            "load: 0 bad of 10 requests; slots not seen free (running 0, queued 0)",
        ),
        (
            make_report(answer_problem="chat plain: 500"),
            EXIT_FAILED,
            "load: 0 bad of 10 requests; no normal answer after the load",
        ),
    ],
)
def test_a_run_passes_only_with_no_bad_answer_free_slots_and_a_normal_answer(
    report: Report, code: int, line: str
) -> None:
    assert exit_code(report) == code
    assert final_line(report) == line
    assert as_json(report)["passed"] is (code == EXIT_OK)


def test_the_summary_table_shows_every_figure() -> None:
    problems = tuple(f"chat stream: 500 a|b {n}" for n in range(7))
    table = render(make_report(problems))
    rows = dict(re.findall(r"^\| ([^|]+?) \| (.*) \|$", table, re.MULTILINE))
    assert rows["seed"] == "7"
    assert rows["model"] == "`small`, `--max-batch 4 --max-queue 16`"
    assert rows["clients"].startswith("64; 30%")
    assert rows["requests"] == "17 (1.7/s)"
    assert rows["status 200"] == "10"
    assert rows["status 500"] == "7"
    assert rows["serve RSS start / peak / end"] == "100 / 150 / 120 MB"
    assert rows["slots free after the load"].startswith("yes")
    # The first five problems verbatim, a `|` escaped so the row stays one row.
    assert rows["bad"].startswith("**7**: chat stream: 500 a\\|b 0; ")
    assert "a\\|b 4; and 2 more" in rows["bad"]
    assert "a\\|b 5" not in rows["bad"]
    assert "| chat stream | 0 | 7 |" in table
    assert "| chat plain | 10 | 0 |" in table


@pytest.mark.parametrize(
    ("stopped", "cell"),
    [
        (Stopped(0, 0.34, by_us=True), "0 in 0.3 s"),
        (Stopped(70, 1.0, by_us=True), "70 in 1.0 s"),
        (Stopped(None, 30.0, by_us=True), "still running after 30.0 s (killed)"),
        (Stopped(0, 0.0, by_us=False), "**had already exited**, with 0: something else stopped it"),
    ],
)
def test_how_serve_ended_is_shown(stopped: Stopped, cell: str) -> None:
    assert f"| `serve` exit on SIGTERM | {cell} |" in render(make_report(stopped=stopped))


def test_slots_taken_after_the_load_are_shown_with_the_gauges() -> None:
    rows = render(make_report(slots_free_s=None))
    assert "| slots free after the load | **no**: running 0, queued 0 |" in rows


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (
            "# HELP macprovider_running_requests x\n# TYPE macprovider_running_requests gauge\n"
            "macprovider_running_requests 2.0\nmacprovider_queued_requests 0.0\n",
            {"macprovider_running_requests": 2.0, "macprovider_queued_requests": 0.0},
        ),
        (
            'macprovider_requests_total{route="/x",status="200"} 5.0\n'
            "macprovider_running_requests_created 1.7e9\n",
            {},
        ),
        ("", {}),
    ],
)
def test_the_slot_gauges_are_read_from_the_exposition(text: str, found: dict[str, float]) -> None:
    assert gauges(text, SLOT_GAUGES) == found


def test_a_seed_replays_each_clients_requests() -> None:
    def plans(seed: str) -> list[Plan]:
        rng = random.Random(seed)
        return [plan_request(rng, 0.3) for _ in range(50)]

    assert plans("7:0") == plans("7:0")
    assert plans("7:0") != plans("7:1")
    every = plans("7:0") + plans("7:1")
    assert {p.shape for p in every} == set(SHAPES)


@pytest.mark.parametrize(("disconnect", "cut"), [(0.0, False), (1.0, True)])
def test_requests_are_cut_as_often_as_asked(disconnect: float, cut: bool) -> None:
    rng = random.Random(1)
    for _ in range(100):
        plan = plan_request(rng, disconnect)
        assert plan.body["stream"] is plan.shape.stream
        assert 1 <= plan.body["max_tokens"] <= 16
        assert ("messages" in plan.body) is (plan.shape.endpoint == "chat")
        cuts = plan.cut_after_chunks if plan.shape.stream else plan.cut_after_s
        assert (cuts is not None) is cut
        assert plan.shape.stream or plan.cut_after_chunks is None


@pytest.mark.parametrize(
    ("plan", "sent"),
    [
        (
            Plan(CHAT_STREAM, {"stream": True}, cut_after_chunks=2),
            'POST /v1/chat/completions {"stream": true}, cut after 2 data events',
        ),
        (
            Plan(TEXT_PLAIN, {"x": 1}, cut_after_s=0.25),
            'POST /v1/completions {"x": 1}, cut after 0.25 s',
        ),
        (Plan(TEXT_PLAIN, {"x": 1}), 'POST /v1/completions {"x": 1}'),
    ],
)
def test_a_bad_answer_names_the_exact_request_that_got_it(plan: Plan, sent: str) -> None:
    assert plan.explain(Verdict("500", "boom")) == Verdict("500", f"boom [sent: {sent}]")
    assert plan.explain(Verdict("200")) == Verdict("200")


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [("1", 0.5, 1.5), ("2", 1.0, 3.0), ("600", 2.5, 7.5), ("soon", 0.5, 1.5), (None, 0.5, 1.5)],
)
def test_a_503_client_waits_about_what_retry_after_says(
    retry_after: str | None, low: float, high: float
) -> None:
    rng = random.Random(3)
    waits = [backoff_s(retry_after, rng) for _ in range(100)]
    assert low <= min(waits) and max(waits) <= high


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "0"], "--clients and --max-batch must be ≥ 1"),
        (["--seconds", "0"], "--seconds must be above 0 and at most 3600; got 0"),
        (["--disconnect", "1.5"], "--disconnect must be from 0 to 1; got 1.5"),
        (["--model", "/no/such/model"], "--model /no/such/model is not a folder"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_short_real_run_has_no_bad_answer_and_frees_every_slot(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "load.json"
    argv = [sys.executable, str(ROOT / "ops" / "load.py"), "--model", str(tiny_model)]
    argv += ["--clients", "4", "--seconds", "3", "--seed", "11", "--disconnect", "0.5"]
    done = subprocess.run(
        [*argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr + done.stdout
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "load: seed 11"
    last = re.fullmatch(r"load: 0 bad of (\d+) requests", lines[-1])
    assert last is not None, lines[-1]
    assert "| slots free after the load | yes" in done.stdout

    report = json.loads(out.read_text())
    assert report["requests"] == int(last[1]) == sum(report["by_status"].values()) > 0
    assert report["bad"] == 0 and report["problems"] == []
    assert report["settings"]["seed"] == 11
    assert report["passed"] is True and report["slots_free_s"] is not None
    assert report["answer_problem"] is None
    # Streams were cut part-way (seed 11 has client 0 close a stream right after its headers
    # within its first requests), and the server still gave their slots back.
    assert report["by_status"].get("200 (cut by us)", 0) > 0
    assert report["by_status"]["200"] > 0
    assert 0 < report["rss_mb"]["start"] <= report["rss_mb"]["peak"]
