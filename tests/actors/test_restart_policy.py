import pytest

from macprovider.actors.restart_policy import GiveUp, Restart, after_crash


@pytest.mark.parametrize(
    ("crashes", "started_at", "previous", "expected"),
    [
        ([100.0], 90.0, None, Restart(1.0)),  # first crash: the shortest delay
        ([100.0, 200.0], 199.0, 1.0, Restart(2.0)),  # doubles
        ([0.0, 400.0, 800.0], 790.0, 32.0, Restart(60.0)),  # capped at 60 s
        ([0.0, 400.0, 800.0], 795.0, 60.0, Restart(60.0)),
        ([0.0, 700.0], 95.0, 16.0, Restart(1.0)),  # healthy for 10 min: reset
        ([0.0, 10.0, 20.0, 30.0], 29.0, 4.0, Restart(8.0)),  # four crashes: not yet a loop
    ],
)
def test_backoff(
    crashes: list[float], started_at: float, previous: float | None, expected: Restart
) -> None:
    assert after_crash(crashes, started_at, previous) == expected


@pytest.mark.parametrize(
    "crashes",
    [
        [0.0, 10.0, 20.0, 30.0, 40.0],
        [100.0, 150.0, 200.0, 250.0, 399.0],
        [0.0, 1.0, 2.0, 300.0, 301.0, 302.0, 303.0, 304.0],
    ],
)
def test_five_crashes_within_five_minutes_is_a_crash_loop(crashes: list[float]) -> None:
    decision = after_crash(crashes, crashes[-1] - 1, 1.0)
    assert isinstance(decision, GiveUp)
    assert "crash loop" in decision.reason


def test_five_crashes_spread_over_more_than_five_minutes_restart() -> None:
    assert isinstance(after_crash([0.0, 80.0, 160.0, 240.0, 320.0], 319.0, 8.0), Restart)
