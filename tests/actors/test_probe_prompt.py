from pathlib import Path

import pytest
from mlx_lm.utils import load

from macprovider.actors.probe_prompt import ProbePromptError, build_probe_prompt


@pytest.mark.parametrize("target", [10, 11, 17, 64, 1000, 2000])
def test_reaches_the_target_exactly_with_one_token_per_character(target: int) -> None:
    prompt = build_probe_prompt(lambda content: 10 + len(content), target)
    assert prompt.tokens == target == 10 + len(prompt.content)


def test_below_the_template_overhead_is_refused() -> None:
    with pytest.raises(ProbePromptError, match="below the chat template"):
        build_probe_prompt(lambda content: 10 + len(content), 9)


def test_a_tokenizer_that_cannot_add_one_token_is_reported() -> None:
    # Every piece costs 2 tokens, so odd targets are unreachable.
    with pytest.raises(ProbePromptError, match="exactly 11"):
        build_probe_prompt(lambda content: 10 + 2 * len(content), 11)


@pytest.mark.parametrize("target", [16, 100, 257, 2000])
def test_exact_length_with_a_real_tokenizer_and_chat_template(
    tiny_model: Path, target: int
) -> None:
    _, tokenizer = load(str(tiny_model))

    def count(content: str) -> int:
        messages = [{"role": "user", "content": content}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    prompt = build_probe_prompt(count, target)
    assert prompt.tokens == target == count(prompt.content)
