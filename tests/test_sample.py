"""The shipped sample corpus reads as text: normal spacing, a title and a source on every passage, the ids the
README and the eval datasets name, rebuilt byte for byte by ``bench/build_sample.py`` from the tokenised passages
that benchmarks and gold answers keep using, and ingested by ``make run`` without the attribution README."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from app.container import Services
from bench.build_conversations import built as build_conversations
from bench.build_sample import SHIPPED, SOURCE, TITLE_CHARS, TOKENISED, build, detokenise, title_of
from retrieval.index import Scope
from retrieval.loaders import load_paths
from retrieval.validation import MAX_SOURCE_CHARS, MAX_TITLE_CHARS
from serving.contracts.answer import AnswerRequest

ROOT = Path(__file__).resolve().parents[1]

# Spacing the source's tokeniser left, as a reader sees it. Each pattern matches the tokenised corpus and must
# match nothing in the shipped one.
BROKEN_SPACING = {
    "space before closing punctuation": re.compile(r"(?<=[\w)\]\"'”’]) [,.;:?!)\]%](?!\.)"),  # "Occurrence )"
    "space after an opening bracket": re.compile(r"[(\[] "),  # "( see"
    "spaced clitic": re.compile(r"\w(?: ['’] ?| ?['’] )(?:s|t|re|ve|ll|d|m)\b"),  # "Earth ' s"
    "spaced decimal point or digit group": re.compile(r"\d [.,] \d"),  # "20 . 8", "1 , 000"
    "spaced hyphen in a word": re.compile(r"\w - \w"),  # "plane - polarized"
    "quote spaced on both sides": re.compile(r"(?:^|\s)[\"“”](?:\s|$)"),  # 'an " arts'
    "spaced formula": re.compile(r"(?<![\w°′])(?:O|CO|N|SiO) \d\b"),  # "O 2"
    "spaced percent sign": re.compile(r"\d %"),  # "20 . 8 %"
    "spaced degree sign": re.compile(r"\d ° |° [CF]\b"),  # "45 ° .", "9 ° C" (a temperature is "9 °C")
    "spaced unit product": re.compile(r"[A-Za-z] · [A-Za-z]"),  # "kJ · mol"
}

# Before: a span of the tokenised corpus, verbatim. After: what the shipped sample has there.
CASES = [
    ("dioxygen , O 2 . It", "dioxygen, O2. It"),
    ("the Earth ' s atmosphere ( see Occurrence ) .", "the Earth's atmosphere (see Occurrence)."),
    ("498 kJ · mol − 1 , which", "498 kJ·mol−1, which"),
    ("constitutes 20 . 8 % of", "constitutes 20.8% of"),
    ("From 1073 to 1074 , 8 , 000 of the 20 , 000 troops", "From 1073 to 1074, 8,000 of the 20,000 troops"),
    ("In 2006 , 304 , 016 companies", "In 2006, 304,016 companies"),
    ("in 1563 , 1593 , 1603 , 1625 ,", "in 1563, 1593, 1603, 1625,"),  # a list of years, not a number
    ('with an " arts and sciences focus " .', 'with an "arts and sciences focus".'),
    ("The word ' plague ' had", "The word 'plague' had"),
    ("during the Thirty Years ' War ,", "during the Thirty Years' War,"),
    ("the Huguenot Pierre L ' Oyseleur ,", "the Huguenot Pierre L'Oyseleur,"),
    ("secularist and Ba ' athist dictator", "secularist and Ba'athist dictator"),
    ("general Qi Kongzhi ( Ch ' i Kung - chih ) .", "general Qi Kongzhi (Ch'i Kung-chih)."),
    ("in plane - polarized and cross - polarized light", "in plane-polarized and cross-polarized light"),
    ("the Miller – Urey experiment", "the Miller–Urey experiment"),
    ("died in 1623 – 25 , and", "died in 1623–25, and"),
    ("reserves in Warsaw – among others", "reserves in Warsaw – among others"),  # a dash, kept spaced
    ("per square mile ( 1 , 582 . 2 / km² ) .", "per square mile (1,582.2/km²)."),
    ("approximately / vɑːrˈʃɑːvə / ( also", "approximately /vɑːrˈʃɑːvə/ (also"),
    ("temperature of − 11 . 7 ° C ( 10 . 9 ° F )", "temperature of −11.7 °C (10.9 °F)"),
    ("as far south as 45 ° . Climate", "as far south as 45°. Climate"),
    ("exactly 37 ° 9 ' 58 . 23 \" latitude", "exactly 37°9'58.23\" latitude"),
    ("A U . S . Census ' s report", "A U.S. Census's report"),
    ("mathematician G . H . Hardy prided", "mathematician G. H. Hardy prided"),  # initials keep their spaces
    ("valued at nearly A $ 109 million", "valued at nearly A$109 million"),
    ("to interest AT & T in", "to interest AT&T in"),
    ("Holabird & Roche", "Holabird & Roche"),
    ("1 + 1 / 2 + 1 / 3 + 1 / 4 + . . . diverges", "1 + 1/2 + 1/3 + 1/4 + ... diverges"),
    ('answered : " . . . Discrimination', 'answered: "... Discrimination'),
    ("many such designs . [ citation needed ]", "many such designs.[citation needed]"),
    ("in Article 101 ( 1 ) , including", "in Article 101(1), including"),
    ("is contained in DTIME ( n2 ) , it", "is contained in DTIME(n2), it"),
    ("up to n = 2 · 1017 .", "up to n = 2 · 1017."),
    ("the host interface to X . 25 and", "the host interface to X.25 and"),
    ("university model — \u200b \u200b many leaders", "university model—many leaders"),
    ("Dartmouth — which used", "Dartmouth—which used"),
    ("since the 15th – 17th centuries", "since the 15th–17th centuries"),
    ("the Greek κτείς kteis ' comb ' and", "the Greek κτείς kteis 'comb' and"),
    ("is written as Fe 1 − xO , where", "is written as Fe 1 − xO, where"),  # unsure: the formula is left alone
]


def records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize(("before", "after"), CASES)
def test_detokenise_restores_normal_spacing(before: str, after: str) -> None:
    assert detokenise(before) == after


def test_the_cases_come_from_the_tokenised_corpus() -> None:
    text = "\n".join(r["text"] for r in records(TOKENISED))
    assert [before for before, _ in CASES if before not in text] == []


def test_detokenising_only_removes_spaces_and_invisible_characters() -> None:
    """No visible character is added, dropped, changed or moved, and no space is added."""
    for record in records(TOKENISED):
        visible = "".join(ch for ch in record["text"] if not ch.isspace() and ch not in "\u200b\ufeff")
        clean = detokenise(record["text"])
        assert clean.replace(" ", "") == visible, record["id"]
        assert "  " not in clean and clean == clean.strip(), record["id"]


def test_the_shipped_sample_has_none_of_the_tokenised_spacing() -> None:
    tokenised = "\n".join(r["text"] for r in records(TOKENISED))
    shipped = {r["id"]: r["text"] for r in records(SHIPPED)}
    for name, pattern in BROKEN_SPACING.items():
        assert pattern.search(tokenised), f"{name}: the pattern finds nothing to fix"
        left = [f"{doc_id}: {m.group()!r}" for doc_id, text in shipped.items() for m in pattern.finditer(text)]
        assert left == [], name


def test_the_shipped_sample_holds_the_gold_answers_as_written() -> None:
    """The gold answers are SQuAD's spans in Wikipedia's own spacing: the detokenised passages hold them verbatim
    where the tokenised ones mostly do not, which checks the rules against text they were not written from."""
    shipped = {r["id"]: r["text"] for r in records(SHIPPED)}
    tokenised = {r["id"]: r["text"] for r in records(TOKENISED)}
    questions = records(ROOT / "evals" / "datasets" / "disfl_qa_questions.jsonl")
    gold = [(q["passage_id"], [a for a in q["answers"] if a != "unknown"]) for q in questions]
    gold = [(passage, answers) for passage, answers in gold if answers]

    def held(passages: dict[str, str]) -> float:
        return sum(any(a in passages[p] for a in answers) for p, answers in gold) / len(gold)

    assert held(tokenised) < 0.85 and held(shipped) >= 0.995, (held(tokenised), held(shipped))


def test_the_builder_reproduces_the_shipped_sample() -> None:
    assert build() == SHIPPED.read_text(encoding="utf-8"), "run: python -m bench.build_sample"


def test_the_conversation_builder_reproduces_the_committed_files() -> None:
    files, _ = build_conversations()
    stale = [str(path.relative_to(ROOT)) for path, text in files.items() if path.read_text(encoding="utf-8") != text]
    assert not stale, f"run: python -m bench.build_conversations ({', '.join(stale)})"


def test_the_shipped_sample_keeps_the_ids_and_has_titles_and_a_source() -> None:
    shipped, tokenised = records(SHIPPED), records(TOKENISED)
    assert [r["id"] for r in shipped] == [r["id"] for r in tokenised] == [f"p{n}" for n in range(1204)]
    for record in shipped:
        assert 0 < len(record["title"]) <= min(TITLE_CHARS, MAX_TITLE_CHARS), record
        assert record["source"] == SOURCE and len(SOURCE) <= MAX_SOURCE_CHARS
    assert shipped[0]["title"] == "The common allotrope of elemental oxygen on Earth is called dioxygen…"
    assert len({r["title"] for r in shipped}) == len(shipped)


@pytest.mark.parametrize(
    ("text", "title"),
    [
        (
            "The zeta function is closely related to prime numbers. For example, the aforementioned fact",
            "The zeta function is closely related to prime numbers",
        ),
        (
            "The Rhine (Romansh: Rein, German: Rhein, French: le Rhin, Dutch: Rijn) is a European river that begins",
            "The Rhine…",
        ),  # never inside an unclosed bracket
        (
            "are prime. Prime numbers of this form are known as factorial primes. Other primes",
            "Prime numbers of this form are known as factorial primes",
        ),  # the passage opens mid-sentence
        (
            "In the meantime, on August 1, 1774, an experiment conducted by the British clergyman Joseph Priestley",
            "In the meantime, on August 1, 1774, an experiment conducted…",
        ),  # not after a dangling "by the"
    ],
)
def test_title_is_the_opening_sentence_clipped_at_a_word(text: str, title: str) -> None:
    assert title_of(text) == title


def test_make_run_ingests_the_titled_passages_and_nothing_else() -> None:
    """The Makefile's ``ingest`` target loads the 1,204 passages with their titles, not the attribution README."""
    makefile = (ROOT / "Makefile").read_text()
    command = re.search(r"^ingest:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert command is not None
    arguments = shlex.split(command.group(1))
    arguments = arguments[arguments.index("ingest") + 1 :]
    options = [n for n, word in enumerate(arguments) if word.startswith("-")]
    paths = [ROOT / word for word in arguments[: options[0] if options else None]]
    documents, errors = load_paths(paths)
    assert errors == []
    assert [d.id for d in documents] == [r["id"] for r in records(SHIPPED)]
    assert all(d.title and d.source == SOURCE for d in documents)


def test_a_readme_question_cites_a_titled_passage_in_plain_text(make_services: Callable[..., Services]) -> None:
    services = make_services(generator="extractive")
    scope = Scope("sample", "default")
    documents, _ = load_paths([SHIPPED])
    services.ingestor.ingest_documents(documents[:40], scope)
    question = "What part of the Earth's atmosphere is oxygen?"
    answer = services.pipeline.answer(AnswerRequest(question=question, scope=scope))
    titles = {d.id: d.title for d in documents}
    cited = [c for c in answer.citations if c.cited]
    assert answer.outcome == "answered" and cited, answer
    assert all(c.title == titles[c.doc_id] and c.source == SOURCE for c in cited)
    for name, pattern in BROKEN_SPACING.items():
        assert not pattern.search(answer.answer), (name, answer.answer)
