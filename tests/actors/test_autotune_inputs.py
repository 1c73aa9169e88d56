import pytest

from macprovider.actors.autotune_inputs import (
    DEFAULT_CANDIDATES,
    AutotuneInputError,
    Candidates,
    default_sizes_b,
    parse_candidate_models,
    parse_kv_bits_axis,
    parse_max_batch_axis,
    parse_max_context_axis,
    resolve_candidates,
)

Q32 = "mlx-community/Qwen2.5-32B-Instruct-4bit"
Q14 = "mlx-community/Qwen2.5-14B-Instruct-4bit"
C7 = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
L3 = "mlx-community/Llama-3.2-3B-Instruct-4bit"
L1 = "mlx-community/Llama-3.2-1B-Instruct-4bit"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unset,4,8", (None, 4, 8)),
        ("8,unset", (8, None)),  # operator order is kept
        ("4", (4,)),
        (" UNSET , 8 ", (None, 8)),  # cells are stripped; `unset` is case-insensitive
    ],
)
def test_kv_bits_axis_parses_in_operator_order(text: str, expected: tuple[int | None, ...]) -> None:
    assert parse_kv_bits_axis(text) == expected


def test_kv_bits_axis_default_is_unset_4_8() -> None:
    assert parse_kv_bits_axis() == (None, 4, 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--kv-bits-axis: cell 1 '' is empty"),
        ("4,,8", "--kv-bits-axis: cell 2 '' is empty"),
        ("4,8,", "--kv-bits-axis: cell 3 '' is empty"),
        ("4, ", "--kv-bits-axis: cell 2 ' ' is empty"),
        ("4,unset,4", "--kv-bits-axis: cell 3 '4' duplicates cell 1"),
        ("unset,Unset", "--kv-bits-axis: cell 2 'Unset' duplicates cell 1"),
        ("8,08", "--kv-bits-axis: cell 2 '08' duplicates cell 1"),
        ("4,6", "--kv-bits-axis: cell 2 '6' must be 4, 8 or unset"),
        ("none", "--kv-bits-axis: cell 1 'none' is not an integer"),
        ("4,8.0", "--kv-bits-axis: cell 2 '8.0' is not an integer"),
        ("0", "--kv-bits-axis: cell 1 '0' must be 4, 8 or unset"),
    ],
)
def test_kv_bits_axis_rejects_bad_cells(text: str, message: str) -> None:
    with pytest.raises(AutotuneInputError) as caught:
        parse_kv_bits_axis(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,2", (1, 2)),
        ("4,1,2", (4, 1, 2)),  # operator order is kept
        (" 3 ", (3,)),
        ("+2", (2,)),
    ],
)
def test_max_batch_axis_parses_in_operator_order(text: str, expected: tuple[int, ...]) -> None:
    assert parse_max_batch_axis(text) == expected


def test_max_batch_axis_default_is_1_2() -> None:
    assert parse_max_batch_axis() == (1, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--max-batch-axis: cell 1 '' is empty"),
        ("1,,2", "--max-batch-axis: cell 2 '' is empty"),
        ("1,2,", "--max-batch-axis: cell 3 '' is empty"),
        ("1,x", "--max-batch-axis: cell 2 'x' is not an integer"),
        ("1,2.5", "--max-batch-axis: cell 2 '2.5' is not an integer"),
        ("1,2 3", "--max-batch-axis: cell 2 '2 3' is not an integer"),
        ("0,1", "--max-batch-axis: cell 1 '0' must be at least 1"),
        ("-1", "--max-batch-axis: cell 1 '-1' must be at least 1"),
        ("1,2,1", "--max-batch-axis: cell 3 '1' duplicates cell 1"),
        ("2,+2", "--max-batch-axis: cell 2 '+2' duplicates cell 1"),
    ],
)
def test_max_batch_axis_rejects_bad_cells(text: str, message: str) -> None:
    with pytest.raises(AutotuneInputError) as caught:
        parse_max_batch_axis(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        (None, 2000, (2000,)),  # absent: the target context and no answer room
        ("2000", 2000, (2000,)),  # a cap equal to the target is allowed
        ("8192,4096,2000", 2000, (2000, 4096, 8192)),  # sorted ascending
        (" 4096 , 3000", 2000, (3000, 4096)),
    ],
)
def test_max_context_axis_parses_sorted(
    text: str | None, target: int, expected: tuple[int, ...]
) -> None:
    assert parse_max_context_axis(text, target) == expected


def test_max_context_axis_default_leaves_room_for_the_answer() -> None:
    assert parse_max_context_axis(None, 2000, 48) == (2048,)
    assert parse_max_context_axis("2000", 2000, 48) == (2000,)  # an explicit cap is as given


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--max-context-axis: cell 1 '' is empty"),
        ("4096,,8192", "--max-context-axis: cell 2 '' is empty"),
        ("4096,", "--max-context-axis: cell 2 '' is empty"),
        ("4096,1999", "--max-context-axis: cell 2 '1999' is below --target-context 2000"),
        ("1000", "--max-context-axis: cell 1 '1000' is below --target-context 2000"),
        ("4096,4k", "--max-context-axis: cell 2 '4k' is not an integer"),
        ("4096,8192,4096", "--max-context-axis: cell 3 '4096' duplicates cell 1"),
        ("0", "--max-context-axis: cell 1 '0' must be at least 1"),
    ],
)
def test_max_context_axis_rejects_bad_cells(text: str, message: str) -> None:
    with pytest.raises(AutotuneInputError) as caught:
        parse_max_context_axis(text, 2000)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("small,large", ("small", "large")),  # operator order, never re-ranked
        (f"{L1}, {Q32}", (L1, Q32)),
        ("/models/local-dir", ("/models/local-dir",)),
    ],
)
def test_candidate_models_keep_operator_order(text: str, expected: tuple[str, ...]) -> None:
    assert parse_candidate_models(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--candidate-models: cell 1 '' is empty"),
        ("a,,b", "--candidate-models: cell 2 '' is empty"),
        ("a,b,", "--candidate-models: cell 3 '' is empty"),
        ("a,b,a", "--candidate-models: cell 3 'a' duplicates cell 1"),
        ("a, a", "--candidate-models: cell 2 'a' duplicates cell 1"),
    ],
)
def test_candidate_models_reject_bad_cells(text: str, message: str) -> None:
    with pytest.raises(AutotuneInputError) as caught:
        parse_candidate_models(text)
    assert str(caught.value) == message


def test_the_default_list_is_design_7_largest_first_with_sizes() -> None:
    assert [candidate.model_id for candidate in DEFAULT_CANDIDATES] == [Q32, Q14, C7, L3, L1]
    params = [candidate.params_b for candidate in DEFAULT_CANDIDATES]
    weights = [candidate.weights_gb for candidate in DEFAULT_CANDIDATES]
    assert params == sorted(params, reverse=True)
    assert weights == sorted(weights, reverse=True)
    assert all(size > 0 for size in params + weights)
    assert default_sizes_b()[L1] == DEFAULT_CANDIDATES[-1].params_b


@pytest.mark.parametrize(
    ("max_size_b", "min_size_b", "expected"),
    [
        (None, None, (Q32, Q14, C7, L3, L1)),
        (14.8, None, (Q14, C7, L3, L1)),  # bounds are inclusive
        (14.0, None, (C7, L3, L1)),
        (None, 7.6, (Q32, Q14, C7)),
        (8.0, 3.0, (C7, L3)),
        (3.2, 3.2, (L3,)),
        (1000.0, 0.0, (Q32, Q14, C7, L3, L1)),
    ],
)
def test_default_list_is_trimmed_by_size_bounds(
    max_size_b: float | None, min_size_b: float | None, expected: tuple[str, ...]
) -> None:
    assert resolve_candidates(None, max_size_b, min_size_b) == Candidates(expected, ())


@pytest.mark.parametrize(
    ("max_size_b", "min_size_b", "message"),
    [
        (1.0, None, "--max-model-size 1: no default candidate is within the bounds"),
        (None, 40.0, "--min-model-size 40: no default candidate is within the bounds"),
        (
            2.0,
            5.0,
            "--max-model-size 2 and --min-model-size 5: no default candidate is within",
        ),
    ],
)
def test_trimming_everything_away_is_a_config_error(
    max_size_b: float | None, min_size_b: float | None, message: str
) -> None:
    with pytest.raises(AutotuneInputError) as caught:
        resolve_candidates(None, max_size_b, min_size_b)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("max_size_b", "min_size_b", "warning"),
    [
        (None, None, None),
        (1.0, None, "--max-model-size 1 ignored"),
        (None, 7.0, "--min-model-size 7 ignored"),
        (8.0, 3.0, "--max-model-size 8 and --min-model-size 3 ignored"),
    ],
)
def test_an_explicit_list_wins_as_given(
    max_size_b: float | None, min_size_b: float | None, warning: str | None
) -> None:
    explicit = (L1, Q32, "/models/local")  # not largest first, not in the default list
    resolved = resolve_candidates(explicit, max_size_b, min_size_b)
    assert resolved.models == explicit
    if warning is None:
        assert resolved.warnings == ()
    else:
        (only,) = resolved.warnings
        assert only.startswith(warning)
        assert "--candidate-models" in only


def test_an_explicit_empty_list_is_a_config_error() -> None:
    with pytest.raises(AutotuneInputError, match="--candidate-models"):
        resolve_candidates((), None, None)


def test_input_errors_are_value_errors() -> None:
    assert issubclass(AutotuneInputError, ValueError)
