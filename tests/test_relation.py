"""The relation check of groundedness: the entity an answer asserts must be the one the passage connects to what
was asked, not another span of its kind from the same passage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.embedding import Embedder
from safety.groundedness import GroundednessScorer
from safety.grounding_text import Passages, Wording, names_and_numbers
from safety.relation import RelationCheck, relation_check
from tests.test_cli import ragops

DECLARATION = [
    "The Declaration of Independence was drafted by Thomas Jefferson in June 1776 and edited by Benjamin Franklin "
    "and John Adams before Congress adopted it."
]
WHO_WROTE = "who wrote the declaration of independence"
RIGHT = ["Thomas Jefferson.", "The Declaration was drafted by Thomas Jefferson [1]."]
WRONG = ["Benjamin Franklin.", "The Declaration was drafted by Benjamin Franklin [1]."]


def relation_of(sentence: str, question: str, passages: Passages) -> RelationCheck | None:
    """The check of ``sentence`` read as the scorer reads it."""
    names = names_and_numbers(sentence, passages.lowercase)
    return relation_check(Wording.of(sentence), Wording.of(question), names, passages)


def test_the_swapped_entity_loses_to_the_one_the_passage_connects_to_the_predicate() -> None:
    passages = Passages.of(DECLARATION)
    right = relation_of("The Declaration was drafted by Thomas Jefferson.", WHO_WROTE, passages)
    wrong = relation_of("The Declaration was drafted by Benjamin Franklin.", WHO_WROTE, passages)
    assert right is not None and right.margin == 1.0 and right.competitor is None
    assert wrong is not None and wrong.margin < 0.5 and wrong.competitor == "thomas jefferson"
    assert wrong.asserted in {"benjamin", "franklin"}


def test_restating_the_whole_sentence_asserts_every_entity_in_it() -> None:
    """A competitor the answer itself names is no competitor: the passage's own sentence is fully placed."""
    found = relation_of(DECLARATION[0], WHO_WROTE, Passages.of(DECLARATION))
    assert found is not None and found.margin == 1.0


def test_nothing_to_place_and_nothing_found() -> None:
    passages = Passages.of(DECLARATION)
    assert relation_of("It was edited before adoption.", WHO_WROTE, passages) is None  # no name or number
    assert relation_of("Declaration of Independence.", WHO_WROTE, passages) is None  # the question's own
    # A name the passages lack is the other signals' to judge; an opener they never write is no entity.
    assert relation_of("George Washington wrote it.", WHO_WROTE, passages) is None
    opener = relation_of("Initially, Thomas Jefferson drafted it.", WHO_WROTE, passages)
    assert opener is not None and opener.margin == 1.0
    assert relation_of("Thomas Jefferson.", WHO_WROTE, Passages.of([])) is None  # no passages: nothing placed


@pytest.mark.parametrize(
    "answer",
    ["", "[1]", "1776 1776 1776", "Jefferson " * 500, "\u200b\u200b", "Franklin? Adams! Congress."],
)
def test_hostile_answers_never_raise(answer: str) -> None:
    found = relation_of(answer, WHO_WROTE, Passages.of(DECLARATION))
    assert found is None or 0.0 <= found.margin <= 1.0


def test_the_scorer_passes_the_right_entity_and_fails_the_swapped_one(embedder: Embedder) -> None:
    scorer = GroundednessScorer(embedder.embed)
    for answer in RIGHT:
        result = scorer.score(answer, DECLARATION, question=WHO_WROTE)
        assert result.score is not None and result.score >= scorer.threshold, answer
    for answer in WRONG:
        result = scorer.score(answer, DECLARATION, question=WHO_WROTE)
        assert result.score is not None and result.score < scorer.threshold, answer
        weakest = min(result.sentences, key=lambda s: s.support)
        assert weakest.relation is not None and weakest.relation.competitor == "thomas jefferson"


@pytest.mark.parametrize("answer", ["The document is from the document. [2]", "[1]", "It is."])
def test_a_degenerate_answer_is_judged_and_fails(embedder: Embedder, answer: str) -> None:
    """Nothing claimed, yet not an abstention: score 0, never an unjudged pass."""
    scorer = GroundednessScorer(embedder.embed)
    result = scorer.score(answer, DECLARATION, question="Who founded Vantrel Glassworks, and when?")
    assert result.score == 0.0 and result.unsupported_sentences == 1


def test_the_cli_explains_which_span_and_which_competitor(tmp_path: Path, models_dir: Path) -> None:
    line = json.dumps({"question": WHO_WROTE, "answer": WRONG[1], "contexts": DECLARATION})
    shown = ragops("groundedness", "--json", models_dir=models_dir, data_dir=tmp_path, stdin=line)
    assert shown.returncode == 0, shown.stderr
    verdict = json.loads(shown.stdout.splitlines()[0])
    assert verdict["supported"] is False
    assert verdict["sentences"][0]["relation"]["competitor"] == "thomas jefferson"
