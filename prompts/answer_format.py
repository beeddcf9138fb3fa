"""The answer format a prompt version asks for (``params: answer_format:``), as a grammar the engine decodes under.

``free_text`` (the default) leaves the model alone. ``cited_sentences`` admits only sentences that each end with
one citation marker naming a passage that was shown, ``Text. [n]``, or the abstention sentence alone: a small
model that forgets to cite, or cites a passage it never saw, cannot. The grammar is GBNF, which llama.cpp reads
and which vLLM's xgrammar backend reads as its EBNF (same syntax for what is used here).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Literal, get_args

from prompts.citations import NOT_IN_DOCUMENTS

AnswerFormat = Literal["free_text", "cited_sentences"]
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)

# Bounds that keep a constrained answer inside the prompt's max_tokens, so it ends complete rather than cut off
# mid-sentence without its marker: at most this many sentences of at most this many characters each. (An in-word
# terminator such as "7.8" counts as one step of two characters, so text made of such pairs could run to twice
# the bound; ordinary sentences cannot.)
MAX_SENTENCES = 2
MAX_SENTENCE_CHARS = 200

# A sentence: a first character that is not blank, then characters where a terminator (. ! ?) may appear only
# inside a word ("7.8", "U.S"), then a terminator, a space and the marker. No brackets or newlines in the text,
# so every marker in the answer is one the grammar placed.
_CITED_SENTENCES = """\
root ::= abstain | sentence (" " sentence){{0,{more}}}
abstain ::= {abstain}
sentence ::= start inner{{0,{chars}}} [.!?] " [" passage "]"
start ::= [^ \\n\\t\\[\\].!?]
inner ::= [^\\n\\t\\[\\].!?] | [.!?] [^ \\n\\t\\[\\].!?]
passage ::= {passages}
"""


def answer_grammar(answer_format: AnswerFormat, passage_numbers: Iterable[int]) -> str | None:
    """The grammar an answer in ``answer_format`` is decoded under, over the passages shown; ``None``: no
    constraint. Citing nothing when no passage was shown is impossible, so that is unconstrained too."""
    numbers = tuple(sorted(set(passage_numbers)))
    if answer_format == "free_text" or not numbers:
        return None
    return cited_sentences_grammar(numbers)


@functools.lru_cache(maxsize=64)
def cited_sentences_grammar(passage_numbers: tuple[int, ...]) -> str:
    """One grammar text per distinct set of shown passages (a handful in practice), built once."""
    if not passage_numbers or min(passage_numbers) < 1:
        raise ValueError(f"passage numbers must be positive, got {passage_numbers}")
    # Longest first, so "12" is tried before its prefix "1" by engines that take the first alternative.
    alternatives = sorted((str(n) for n in passage_numbers), key=lambda n: (-len(n), n))
    return _CITED_SENTENCES.format(
        more=MAX_SENTENCES - 1,
        abstain=json.dumps(NOT_IN_DOCUMENTS),
        chars=MAX_SENTENCE_CHARS - 2,
        passages=" | ".join(f'"{n}"' for n in alternatives),
    )
