from __future__ import annotations

import ctypes
import math
from pathlib import Path

import llama_cpp
import pytest

from prompts.answer_format import MAX_SENTENCE_CHARS, answer_grammar
from prompts.citations import NOT_IN_DOCUMENTS
from prompts.loader import PromptError, PromptPassage, list_versions, load_prompt, parse_prompt
from prompts.messages import ChatMessage
from serving.answering.llamacpp.model_file import bundled_model_path

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
    history = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello")]
    messages = prompt.render("q", [PromptPassage(1, "a", "t")], history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1:3] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
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


# --- answer formats -------------------------------------------------------------------------------------------


def test_answer_format_is_a_parameter_of_the_prompt_version() -> None:
    free = parse_prompt(VALID)
    cited = parse_prompt(VALID.replace("max_tokens: 64", "max_tokens: 64, answer_format: cited_sentences"))
    assert free.params.answer_format == "free_text"  # the default: a version without it generates free text
    assert cited.params.answer_format == "cited_sentences"
    assert cited.content_hash != free.content_hash  # dropping it is a new version the gate judges
    assert load_prompt("rag_answer", "v1").params.answer_format == "free_text"
    assert load_prompt("rag_answer", "v2").params.answer_format == "cited_sentences"
    with pytest.raises(PromptError, match="answer_format must be one of"):
        parse_prompt(VALID.replace("max_tokens: 64", "max_tokens: 64, answer_format: json"))


def test_free_text_and_no_passages_put_no_grammar_on_decoding() -> None:
    assert answer_grammar("free_text", [1, 2]) is None
    assert answer_grammar("cited_sentences", []) is None
    assert answer_grammar("cited_sentences", [2, 1]) == answer_grammar("cited_sentences", (1, 2))


@pytest.fixture(scope="module")
def grammar_reader() -> GrammarReader:
    return GrammarReader()


class GrammarReader:
    """llama.cpp's own grammar engine (the vocabulary alone, no weights run) asked whether it admits a text:
    every token of the text, then the end of the answer."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)

    def admits(self, grammar: str, text: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, "llama.cpp cannot parse the grammar"
        try:
            for token in [*self.llm.tokenize(text.encode(), add_bos=False), self.llm.token_eos()]:
                candidate = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
                candidates = llama_cpp.llama_token_data_array(candidate, 1, -1, False)
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
                if math.isinf(candidate[0].logit):
                    return False
                if token != self.llm.token_eos():
                    llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize(
    ("text", "admitted"),
    [
        ("Paris is the capital of France. [1]", True),
        ("It rose 7.8% in the U.S. [3]", True),  # a terminator inside a word does not end the sentence
        ("Paris is the capital. [1] It lies on the Seine. [3]", True),
        (NOT_IN_DOCUMENTS, True),
        ("Paris is the capital of France.", False),  # uncited
        ("Paris is the capital of France. [2]", False),  # passage 2 was not shown
        ("Paris is the capital of France. [4]", False),  # nor 4
        ("Paris is the capital of France. [1, 3]", False),  # one passage a sentence
        ("Paris is the capital [1].", False),  # the marker follows the terminator
        ("Paris is the capital. [1] Its river is the Seine.", False),  # a later sentence uncited
        ("Paris. [1] Seine. [1] Louvre. [3]", False),  # more sentences than the bound
        (NOT_IN_DOCUMENTS + " Sorry.", False),  # the abstention stands alone
        ("The documents do not contain the answer", False),
        (" Paris is the capital. [1]", False),
        ("Paris is the capital.\n[1]", False),
        ("x" * MAX_SENTENCE_CHARS + ". [1]", False),
    ],
)
def test_cited_sentences_grammar_admits_only_cited_sentences_or_the_abstention(
    grammar_reader: GrammarReader, text: str, admitted: bool
) -> None:
    grammar = answer_grammar("cited_sentences", [1, 3])  # passages 1 and 3 shown (2 was compressed away)
    assert grammar is not None
    assert grammar_reader.admits(grammar, text) is admitted


def test_grammar_names_every_shown_passage_up_to_two_digits(grammar_reader: GrammarReader) -> None:
    grammar = answer_grammar("cited_sentences", range(1, 13))
    assert grammar is not None
    assert all(grammar_reader.admits(grammar, f"Yes. [{n}]") for n in range(1, 13))
    assert not grammar_reader.admits(grammar, "Yes. [13]") and not grammar_reader.admits(grammar, "Yes. [0]")
