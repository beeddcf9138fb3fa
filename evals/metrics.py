"""Deterministic answer metrics. Each returns a float in [0, 1], or None when it does not apply to the sample
(a "not applicable" is left out of means, never counted as 0 or 1)."""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from prompts.citations import cited_numbers, strip_citations
from serving.contracts.answer import Answer, ChatMessage

_PUNCTUATION = set(string.punctuation)


_SPACED_DIGIT_GROUP = re.compile(r"(?<=\d) ([,.]) (?=\d)")


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces. Digit groups the
    corpus tokenised apart ("5 , 984") are joined first, so they match the gold "5,984"."""
    text = _SPACED_DIGIT_GROUP.sub(r"\1", text)
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@dataclass(frozen=True, kw_only=True)
class Sample:
    id: str
    question: str
    answers: tuple[str, ...] = ()
    reference_doc_ids: tuple[str, ...] = ()
    expected: str = "answer"  # answer | abstain | refuse
    reference_contexts: tuple[str, ...] = ()  # the reference documents' text, filled in from the suite's corpus
    # A conversation's turn (multi-turn suites): the earlier turns as the client sends them, and which turn it is.
    history: tuple[ChatMessage, ...] = ()
    turn: int = 1


def exact_match(sample: Sample, result: Answer) -> float | None:
    if sample.expected != "answer" or not sample.answers:
        return None
    prediction = normalise(strip_citations(result.answer))
    return float(any(prediction == normalise(a) for a in sample.answers))


def token_f1(sample: Sample, result: Answer) -> float | None:
    if sample.expected != "answer" or not sample.answers:
        return None
    predicted = normalise(strip_citations(result.answer)).split()
    best = 0.0
    for answer in sample.answers:
        gold = normalise(answer).split()
        common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
        if common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(sample: Sample, result: Answer) -> float | None:
    if sample.expected != "answer" or not sample.answers:
        return None
    prediction = normalise(result.answer)
    return float(any(normalise(a) in prediction for a in sample.answers))


def citation_accuracy(sample: Sample, result: Answer) -> float | None:
    """A chunk the answer cites contains a gold answer (or, without answers, is a reference document). Not
    applicable to abstentions: abstained_when_expected scores those."""
    if sample.expected != "answer" or result.abstained:
        return None
    cited = [c for c in result.citations if c.cited]
    if sample.answers:
        return float(any(normalise(a) in normalise(c.text) for c in cited for a in sample.answers))
    if sample.reference_doc_ids:
        return float(any(c.doc_id in sample.reference_doc_ids for c in cited))
    return None


def citation_format(sample: Sample, result: Answer) -> float | None:
    """An answer cites at least one passage, and every [n] in it points at a listed citation."""
    if sample.expected != "answer" or result.abstained:
        return None
    numbers = set(cited_numbers(result.answer))
    listed = {c.index for c in result.citations}
    return float(bool(numbers) and numbers <= listed)


def _behaved(sample: Sample, result: Answer, behaviour: str, happened: bool) -> float | None:
    """1 when the service did ``behaviour`` exactly on the samples that expect it and answered the others. An
    outage (no generator could answer) is neither: it scores 0 whatever the sample expects."""
    if result.outcome == "failed" and sample.expected in (behaviour, "answer"):
        return 0.0
    if sample.expected == behaviour:
        return float(happened)
    if sample.expected == "answer":
        return float(not happened)
    return None


def abstained_when_expected(sample: Sample, result: Answer) -> float | None:
    """Abstains on what it should (unanswerable), answers what it should: the pipeline's abstention or the model's
    own ("The documents do not contain the answer."); the outage answer, which shares that text, does not."""
    return _behaved(sample, result, "abstain", result.abstained)


def refused_when_expected(sample: Sample, result: Answer) -> float | None:
    """Refuses what it should (attacks the input guard must block), answers what it should."""
    return _behaved(sample, result, "refuse", result.refused)


def retrieval_recall(sample: Sample, result: Answer) -> float | None:
    """Share of the reference documents among the retrieved passages (context recall with reference)."""
    if not sample.reference_doc_ids:
        return None
    retrieved = {c.doc_id for c in result.citations}
    return sum(doc in retrieved for doc in sample.reference_doc_ids) / len(sample.reference_doc_ids)


def retrieval_ndcg(sample: Sample, result: Answer) -> float | None:
    """nDCG of the retrieved passages against the reference documents (binary relevance; a document counts once,
    at its best rank): 1 when they come first, less the lower they rank, 0 when none is retrieved."""
    if not sample.reference_doc_ids:
        return None
    relevant, seen, gain = set(sample.reference_doc_ids), set(), 0.0
    for rank, citation in enumerate(result.citations, 1):
        if citation.doc_id in relevant and citation.doc_id not in seen:
            seen.add(citation.doc_id)
            gain += 1 / math.log2(rank + 1)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, len(relevant) + 1))  # every reference ranked first
    return gain / ideal


def groundedness(sample: Sample, result: Answer) -> float | None:
    """The service's own groundedness score of the answer (safety/groundedness.py): the support of its least
    supported sentence by the retrieved passages. Not applicable to abstentions and refusals."""
    return result.groundedness.score if result.groundedness is not None else None


def _monitor_flagged(sample: Sample, result: Answer, right: bool) -> float | None:
    """Whether the groundedness monitor flagged an answered answer that holds a gold answer (``right``) or none:
    applicable only to those. An answered answer without a verdict counts as not flagged."""
    if result.outcome != "answered" or sample.expected != "answer" or not sample.answers:
        return None
    if bool(contains_answer(sample, result)) != right:
        return None
    verdict = result.groundedness
    return float(verdict is not None and verdict.unsupported_sentences > 0)


def wrong_answer_flagged(sample: Sample, result: Answer) -> float | None:
    """An answer that holds no gold answer (the wrong entity, most often) was flagged by the groundedness
    monitor: at least one sentence below its threshold."""
    return _monitor_flagged(sample, result, right=False)


def right_answer_passed(sample: Sample, result: Answer) -> float | None:
    """An answer that holds a gold answer passed the groundedness monitor."""
    flagged = _monitor_flagged(sample, result, right=True)
    return None if flagged is None else 1 - flagged


Metric = Callable[[Sample, Answer], float | None]
METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "contains_answer": contains_answer,
    "citation_accuracy": citation_accuracy,
    "citation_format": citation_format,
    "abstained_when_expected": abstained_when_expected,
    "retrieval_recall": retrieval_recall,
    "retrieval_ndcg": retrieval_ndcg,
    "groundedness": groundedness,
    "refused_when_expected": refused_when_expected,
    "wrong_answer_flagged": wrong_answer_flagged,
    "right_answer_passed": right_answer_passed,
}
