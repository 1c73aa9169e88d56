import pytest

from macprovider.server.stops import StopStringFilter


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "stopped"),
    [
        ([], ["a", "b"], "ab", False),
        (["END"], ["hello ", "world"], "hello world", False),
        (["END"], ["hello E", "N", "D tail"], "hello ", True),
        (["END"], ["xEN", "Q"], "xENQ", False),
        (["\n\n"], ["one\n", "\ntwo"], "one", True),
        (["ab", "b"], ["xab"], "x", True),
        ([""], ["keep"], "keep", False),
        (["STOP"], ["STOP"], "", True),
    ],
)
def test_stop_filter_emits_only_text_before_the_earliest_stop(
    stops: list[str], pieces: list[str], emitted: str, stopped: bool
) -> None:
    f = StopStringFilter(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = f.feed(piece)
        out += text
        if hit:
            break
    if not hit:
        out += f.flush()
    assert (out, hit) == (emitted, stopped)


def test_held_back_prefix_is_released_by_flush() -> None:
    f = StopStringFilter(["END"])
    assert f.feed("abcE") == ("abc", False)
    assert f.flush() == "E"
