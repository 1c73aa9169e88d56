"""Sizes as the operator reads them in `models list`, the autotune plan and the recommendation."""

from __future__ import annotations

import pytest

from macprovider.cli.size_text import bytes_text, model_size_text, parameters_text


@pytest.mark.parametrize(
    ("parameters", "text"),
    [
        (None, "?"),
        (999, "999"),
        (656_000, "656.0K"),
        (134_515_008, "134.5M"),
        (7_615_616_512, "7.6B"),
    ],
)
def test_parameters_text(parameters: int | None, text: str) -> None:
    assert parameters_text(parameters) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "?"),
        (512, "512 B"),
        (2_750_671, "2.8 MB"),
        (270_600_000, "270.6 MB"),
        (10**9, "1.0 GB"),
    ],
)
def test_bytes_text(size: int | None, text: str) -> None:
    assert bytes_text(size) == text


@pytest.mark.parametrize(
    ("parameters", "weight_bytes", "text"),
    [
        (134_515_008, 116_900_000, "134.5M parameters, 116.9 MB on disk"),
        (134_515_008, None, "134.5M parameters"),
        (None, 116_900_000, "116.9 MB on disk"),
        (None, None, "size unknown"),
    ],
)
def test_a_model_reads_as_parameters_with_its_bytes_beside(
    parameters: int | None, weight_bytes: int | None, text: str
) -> None:
    assert model_size_text(parameters, weight_bytes) == text
