"""Builds the datasets and corpora of the ``near_miss``, ``counterfactual``, ``abstain`` and ``entity_swap`` eval
suites.

Deterministic: no randomness and no model, only the bundled data (``data/squad_shifts`` new_wiki for the first
two, Disfl-QA's tokenised passages in ``evals/corpora`` and its questions for ``abstain``), so a re-run writes
byte-identical files. Answer matching uses the metrics' own normalisation (``evals.metrics.normalise``), so "the
corpus does not hold the answer" means what ``contains_answer`` means.

- ``near_miss``: questions whose answering paragraph is removed from the collection while the rest of its
  Wikipedia article stays, so retrieval still finds on-topic passages: the right answer is to abstain.
- ``counterfactual``: paragraphs whose gold answer (a year, a number, a person, a place) is replaced by another
  question's gold answer of the same type; the dataset's answer is the substitute: the right answer is what the
  passage says, whatever the model remembers.
- ``abstain``: Disfl-QA questions on the qa corpus' topics whose answer is in none of its passages, plus a few
  plainly off-topic questions that the similarity threshold stops before any model runs.
- ``entity_swap``: NYT questions whose answer's sentence also names another entity of its kind (the model's
  commonest mistake is picking it): the right answer is the gold one, and a wrong pick must be flagged by the
  groundedness monitor (``wrong_answer_flagged``).

Run: ``.venv/bin/python -m bench.build_suites`` (``--check`` fails when the committed files differ).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.corpora import write_or_check
from bench.in_passage_swaps import competitors, is_assertable
from evals.metrics import normalise
from retrieval.chunking import split_sentences

ROOT = Path(__file__).resolve().parents[1]
SQUAD_SHIFTS = ROOT / "data" / "squad_shifts"
DATASETS, CORPORA = ROOT / "evals" / "datasets", ROOT / "evals" / "corpora"
WH_WORDS = ("what", "who", "when", "where", "which", "how many", "how much", "in what", "in which")


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    passage_id: str
    answers: tuple[str, ...]

    @property
    def shortest(self) -> str:
        return min((a.strip() for a in self.answers), key=lambda a: (len(a), a))


@dataclass(frozen=True)
class EvalSample:
    """One line of an eval dataset (the fields ``evals.suite.load_dataset`` reads)."""

    id: str
    question: str
    answers: list[str]
    expected: str
    reference_doc_ids: list[str] = field(default_factory=list)


def read_passages(path: Path) -> list[Passage]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Passage(r["id"], r["text"].strip(), r.get("title", "").replace("_", " ")) for r in rows]


def read_questions(path: Path) -> list[Question]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Question(r["id"], r["question"].strip(), r["passage_id"], tuple(r["answers"])) for r in rows]


def holds_an_answer(text: str, answers: Iterable[str]) -> bool:
    """The rule of ``contains_answer``: a normalised gold answer inside the normalised text."""
    normalised = normalise(text)
    return any(normalise(a) and normalise(a) in normalised for a in answers)


def is_specific(question: Question) -> bool:
    """A factoid question with a short answer: a wh-question of at least six words whose shortest gold answer
    has at most four words and is not in the question itself."""
    text = question.question.lower()
    return (
        text.startswith(WH_WORDS)
        and len(text.split()) >= 6
        and 0 < len(question.shortest.split()) <= 4
        and not holds_an_answer(question.question, [question.shortest])
    )


def jsonl(rows: Iterable[EvalSample | Passage]) -> str:
    """One JSON object a line; a passage without a title leaves it out."""
    lines = []
    for row in rows:
        record = {key: value for key, value in asdict(row).items() if key != "title" or value}
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


# near_miss ------------------------------------------------------------------------------------------------------


def by_article(passages: list[Passage]) -> dict[str, list[Passage]]:
    """Paragraphs grouped by article title, in file order."""
    articles: dict[str, list[Passage]] = collections.defaultdict(list)
    for passage in passages:
        articles[passage.title].append(passage)
    return dict(articles)


def article_picks(article: list[Passage], asked: dict[str, list[Question]], per_article: int) -> list[Question]:
    """Up to ``per_article`` questions of different paragraphs whose answer no other paragraph of the article
    holds: with their paragraphs removed, the article is on topic but silent."""
    picks: list[Question] = []
    for passage in article:
        others = [p.text for p in article if p.id != passage.id]
        for question in asked.get(passage.id, []):
            if is_specific(question) and not any(holds_an_answer(text, question.answers) for text in others):
                picks.append(question)
                break
        if len(picks) == per_article:
            break
    return picks


def near_miss(
    passages: list[Passage], questions: list[Question], target: int
) -> tuple[list[EvalSample], list[Passage]]:
    asked: dict[str, list[Question]] = collections.defaultdict(list)
    for question in questions:
        asked[question.passage_id].append(question)
    picked: list[Question] = []
    kept: list[Passage] = []
    for article in by_article(passages).values():
        picks = article_picks(article, asked, per_article=2)
        removed = {q.passage_id for q in picks}
        picked += picks
        kept += [p for p in article if p.id not in removed] if picks else []
        if len(picked) >= target:
            break
    # An answer may also sit in another article's paragraph: such a question is answerable, so it goes.
    silent = [q for q in picked if not any(holds_an_answer(p.text, q.answers) for p in kept)]
    samples = [EvalSample(f"near-miss-{q.id}", q.question, list(q.answers), "abstain") for q in silent]
    return samples, kept


# counterfactual -------------------------------------------------------------------------------------------------

NAME = r"[A-Z][a-z]+(?: [A-Z][a-z]+)"
# Words that make a capitalised answer an organisation, a people or a thing rather than a person or a place.
INSTITUTIONS = frozenset({
    "Act", "Army", "Assembly", "Church", "Company", "Congress", "Council", "Court", "Empire", "Government",
    "Institute", "Kingdom", "Navy", "Party", "Republic", "Senate", "Society", "States", "Union", "University", "War",
})  # fmt: skip
PLACE_WORDS = frozenset({"Africa", "America", "Asia", "Europe", "North", "South", "East", "West", "Ocean", "Sea"})


@dataclass(frozen=True)
class EntityType:
    openings: tuple[str, ...]  # how the question starts
    shape: str  # a regular expression the whole shortest answer matches
    excluded: frozenset[str] = frozenset()  # words the answer may not have


ENTITY_TYPES = {
    "year": EntityType(("when", "what year", "in what year", "which year", "in which year"), r"1[0-9]{3}|20[0-9]{2}"),
    "number": EntityType(("how many",), r"[1-9][0-9]{1,2}(?:,[0-9]{3})*|[1-9][0-9]{3,}"),
    "person": EntityType(("who",), NAME + "{1,2}", INSTITUTIONS | PLACE_WORDS),
    "place": EntityType(
        ("where", "in what city", "in which city", "in what country", "in which country", "what city",
         "which city", "what country", "which country"), NAME + "{0,2}", INSTITUTIONS),
}  # fmt: skip


@dataclass(frozen=True)
class Entity:
    """A question's gold answer typed by the question's opening and the answer's shape."""

    question: Question
    kind: str
    text: str


def typed_entity(question: Question) -> Entity | None:
    """The kind is a heuristic (no NER): "who" + a capitalised two- or three-word name is a person, and so on."""
    text, answer = question.question.lower(), question.shortest
    for kind, rule in ENTITY_TYPES.items():
        if (
            text.startswith(rule.openings)
            and re.fullmatch(rule.shape, answer)
            and not rule.excluded & set(answer.split())
        ):
            return Entity(question, kind, answer)
    return None


def mentions(entity: str) -> re.Pattern[str]:
    """The entity as a whole word or number (1958 does not match in 19580 or 1958s)."""
    return re.compile(rf"(?<![\w,.]){re.escape(entity)}(?![\w]|[,.][0-9])")


def substitute_for(entity: Entity, pool: list[Entity], passage: Passage) -> str | None:
    """The next entity of the same kind, cyclically in id order, that differs and is nowhere in the passage."""
    start = pool.index(entity)
    for other in pool[start + 1 :] + pool[:start]:
        if normalise(other.text) != normalise(entity.text) and other.text not in passage.text:
            return other.text
    return None


def typed_entities(passages: dict[str, Passage], questions: list[Question]) -> dict[str, list[Entity]]:
    """One entity per paragraph (its first typed question), found as a whole word in the paragraph and absent
    from the question, grouped by kind in id order."""
    pools: dict[str, list[Entity]] = {kind: [] for kind in ENTITY_TYPES}
    seen: set[str] = set()
    for question in questions:
        entity = typed_entity(question)
        if entity is None or question.passage_id in seen or entity.text in question.question:
            continue
        if mentions(entity.text).search(passages[question.passage_id].text):
            pools[entity.kind].append(entity)
            seen.add(question.passage_id)
    return pools


def counterfactual(
    passages: list[Passage], questions: list[Question], per_kind: int
) -> tuple[list[EvalSample], list[Passage]]:
    """Kinds take turns in the dataset, so its first N samples (a suite's ``samples``) mix them."""
    by_id = {p.id: p for p in passages}
    made: dict[str, list[tuple[EvalSample, Passage]]] = {}
    for kind, pool in typed_entities(by_id, questions).items():
        made[kind] = []
        for entity in pool[:per_kind]:
            passage = by_id[entity.question.passage_id]
            substitute = substitute_for(entity, pool, passage)
            if substitute is None:
                continue
            changed = Passage(f"cf-{passage.id}", mentions(entity.text).sub(substitute, passage.text), passage.title)
            sample_id = f"counterfactual-{kind}-{entity.question.id}"
            sample = EvalSample(sample_id, entity.question.question, [substitute], "answer", [changed.id])
            made[kind].append((sample, changed))
    turns = [pair for group in itertools.zip_longest(*made.values()) for pair in group if pair is not None]
    return [sample for sample, _ in turns], [passage for _, passage in turns]


# abstain --------------------------------------------------------------------------------------------------------

# Kept from the first abstain set: off topic for the qa corpus, stopped by the similarity threshold before any
# model runs. They are a small share on purpose: the suite is there to make the prompt abstain.
OFF_TOPIC = (
    "How do I bake sourdough bread at home?",
    "What is the best smartphone to buy this year?",
    "How do I reset my router password?",
    "Which python web framework is the fastest?",
    "What time does the pharmacy open on Sunday?",
    "How many calories are in a banana?",
)
# Words that say nothing about a topic, Disfl-QA's disfluency markers among them.
FILLER = frozenset(
    "what which when where whose does did have were was that this there their from with about into also than "
    "they them then these those other after before sorry rather mean actually instead wait make many much some "
    "kind type name called known used most more first".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in normalise(text).split() if len(w) >= 4 and w.isalpha() and w not in FILLER}


def on_topic_score(question: Question, corpus: list[set[str]]) -> int:
    """Content words the question shares with its closest corpus passage: how answerable it looks."""
    words = content_words(question.question)
    return max(len(words & passage) for passage in corpus)


def abstain(questions: list[Question], corpus: list[Passage], count: int, pool_below: int) -> list[EvalSample]:
    """Disfl-QA questions (ids below ``pool_below``: not the qa suites' range) about passages outside the qa
    corpus, sharing at least three content words with a corpus passage, whose answer no corpus passage holds:
    the closest-looking first, one per source passage."""
    inside = {p.id for p in corpus}
    words = [content_words(p.text) for p in corpus]
    candidates: list[tuple[int, int, Question]] = []
    for question in questions:
        number = int(question.id.removeprefix("dq"))
        if number >= pool_below or question.passage_id in inside:
            continue
        score = on_topic_score(question, words)
        if score >= 3 and not any(holds_an_answer(p.text, question.answers) for p in corpus):
            candidates.append((-score, number, question))
    chosen: list[Question] = []
    for _, _, question in sorted(candidates, key=lambda c: (c[0], c[1])):
        if all(q.passage_id != question.passage_id for q in chosen):
            chosen.append(question)
    near = [EvalSample(f"abstain-{q.id}", q.question, list(q.answers), "abstain") for q in chosen[:count]]
    off = [EvalSample(f"abstain-{i}", text, [], "abstain") for i, text in enumerate(OFF_TOPIC)]
    return spread(off, near)


def spread(few: list[EvalSample], many: list[EvalSample]) -> list[EvalSample]:
    """``few`` evenly through ``many``, so that a suite's first N samples hold their share of them."""
    step = len(many) // len(few)
    mixed: list[EvalSample] = []
    for i, sample in enumerate(few):
        mixed += [sample, *many[i * step : (i + 1) * step]]
    return mixed + many[len(few) * step :]


# entity_swap ----------------------------------------------------------------------------------------------------


def entity_swap(
    passages: list[Passage], questions: list[Question], count: int, first: int, distractors: int
) -> tuple[list[EvalSample], list[Passage]]:
    """NYT questions, from question ``first`` on, one a paragraph, whose short gold answer (a name, a number, a
    year) shares its sentence with another span of its kind that the question does not name: the paragraph
    offers the model a wrong entity right next to the right one. The corpus: their paragraphs and the next
    ``distractors`` paragraphs of the file."""
    by_id = {p.id: p for p in passages}
    picked: list[Question] = []
    used: set[str] = set()
    for question in questions:
        passage = by_id.get(question.passage_id)
        if len(picked) == count or passage is None or passage.id in used:
            continue
        if int(re.sub(r"\D", "", question.id)) < first or not is_specific(question):
            continue
        gold = question.shortest
        sentence = next((s for s in split_sentences(passage.text) if gold in s), None)
        if sentence is None or not is_assertable(gold) or not competitors(sentence, gold, question.question):
            continue
        picked.append(question)
        used.add(passage.id)
    samples = [EvalSample(f"entity-swap-{q.id}", q.question, list(q.answers), "answer", [q.passage_id]) for q in picked]
    rest = [p for p in passages if p.id not in used][:distractors]
    return samples, [by_id[q.passage_id] for q in picked] + rest


# files ----------------------------------------------------------------------------------------------------------


def built_files() -> dict[Path, str]:
    """Every file this script makes, by path, with its content."""
    wiki_passages = read_passages(SQUAD_SHIFTS / "new_wiki_passages.jsonl")
    wiki_questions = read_questions(SQUAD_SHIFTS / "new_wiki_questions.jsonl")
    near, near_corpus = near_miss(wiki_passages, wiki_questions, target=56)
    counter, counter_corpus = counterfactual(wiki_passages, wiki_questions, per_kind=12)
    disfl = read_questions(DATASETS / "disfl_qa_questions.jsonl")
    unanswerable = abstain(disfl, read_passages(CORPORA / "qa_corpus.jsonl"), count=34, pool_below=5000)
    nyt_passages = read_passages(SQUAD_SHIFTS / "nyt_passages.jsonl")
    swaps, swap_corpus = entity_swap(
        nyt_passages, read_questions(SQUAD_SHIFTS / "nyt_questions.jsonl"), count=40, first=2000, distractors=60
    )
    return {
        DATASETS / "near_miss.jsonl": jsonl(near),
        CORPORA / "near_miss_corpus.jsonl": jsonl(near_corpus),
        DATASETS / "counterfactual.jsonl": jsonl(counter),
        CORPORA / "counterfactual_corpus.jsonl": jsonl(counter_corpus),
        DATASETS / "abstain.jsonl": jsonl(unanswerable),
        DATASETS / "entity_swap.jsonl": jsonl(swaps),
        CORPORA / "entity_swap_corpus.jsonl": jsonl(swap_corpus),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file differs")
    args = parser.parse_args()
    write_or_check(built_files(), "python -m bench.build_suites", args.check)


if __name__ == "__main__":
    main()
