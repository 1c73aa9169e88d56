"""Which unprobed candidates the recommendation offers instead: those no larger than the pick."""

from __future__ import annotations

import pytest

from macprovider.actors.recommendation import alternates

SIZES = {"big": 7.0, "mid": 1.0, "mid-q4": 1.0, "small": 0.5}


@pytest.mark.parametrize(
    ("candidates", "chosen", "expected"),
    [
        (["big", "mid", "small"], "big", ("mid", "small")),
        (["mid", "big", "small"], "mid", ("small",)),  # bigger ones after the pick are no option
        # Another form of the same model (same parameters, fewer bytes) is an option.
        (["mid", "mid-q4", "small"], "mid", ("mid-q4", "small")),
        (["mid-q4", "mid"], "mid-q4", ("mid",)),
        (["small", "mid"], "small", ()),
        # An unknown size trusts the list order, largest first.
        (["mid", "org/unknown", "small"], "mid", ("org/unknown", "small")),
        (["org/unknown", "big"], "org/unknown", ("big",)),
    ],
)
def test_alternates(candidates: list[str], chosen: str, expected: tuple[str, ...]) -> None:
    assert alternates(candidates, chosen, SIZES) == expected
