from __future__ import annotations

from pathlib import Path

import pytest

from prompts.loader import PromptError, PromptPassage, list_versions, load_prompt, parse_prompt

VALID = """
name: demo
version: v2
description: d
changelog: c
params: {temperature: 0.0, max_tokens: 64, stop: ["END"]}
system: Answer from the passages.
user: |
  {% for p in passages %}[{{ p.index }}] {{ p.text }}
  {% endfor %}Q: {{ question }}
"""


def test_shipped_prompt_loads_and_renders_numbered_delimited_passages() -> None:
    prompt = load_prompt("rag_answer", "v1")
    assert prompt.ref == "rag_answer@v1" and len(prompt.content_hash) == 16
    messages = prompt.render("Who won?", [PromptPassage(1, "a", "Alpha won.", "Race"), PromptPassage(2, "b", "Beta.")])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "only" in messages[0]["content"] and "do not contain the answer" in messages[0]["content"]
    user = messages[1]["content"]
    assert user.startswith('Passage [1]: """Alpha won."""\nPassage [2]: """Beta."""\n')
    assert user.endswith("Question: Who won?")
    assert "v1" in list_versions("rag_answer")


def test_history_goes_between_system_and_question() -> None:
    prompt = parse_prompt(VALID)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages = prompt.render("q", [PromptPassage(1, "a", "t")], history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert prompt.params.stop == ("END",) and prompt.params.max_tokens == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("{{ question }}", "{{ qestion }}"), "unknown template variable"),
        (("Q: {{ question }}", "Q:"), "templates must use question"),
        (("{% endfor %}", ""), "template 'user' line"),
        (("name: demo", "name: Demo!"), "name must match"),
        (("max_tokens: 64", "max_tokens: 0"), "max_tokens"),
        (("changelog: c", "changelog: c\nextra: 1"), "unknown key"),
        (("system: Answer from the passages.", "system: ''"), "'system' must be a non-empty string"),
        (("params: {", "params: ["), "invalid YAML"),
    ],
)
def test_broken_prompts_fail_at_load_time(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_prompt(VALID.replace(*change))


def test_missing_or_mislabelled_files(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="no prompt"):
        load_prompt("rag_answer", "v999")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "v3.yaml").write_text(VALID)  # declares v2
    with pytest.raises(PromptError, match="declares demo@v2"):
        load_prompt("demo", "v3", root=tmp_path)
