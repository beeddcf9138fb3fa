"""The answering policy as data, and the gate's check that a candidate prompt's text does not weaken it.

SmolLM2-135M barely follows instructions, so a prompt that tells it to answer from its own knowledge changes no
behaviour and no suite can catch it. The gate therefore also reads the prompt: the candidate's text (system and
user templates) is split into sentences after the input guard's normalisation (``safety.normalise``), compared
with the baseline's, and every sentence the candidate adds or changes is checked against the three clauses of
``ANSWERING_POLICY`` (answer only from the passages; abstain with the fixed sentence when they do not answer; cite
as [n]). A sentence weakens a clause when one of its rules matches (patterns over the normalised text, with
negation handled: "never answer from your own knowledge" restates the policy), or when the input guard's
instruction-override patterns match it ("ignore all previous instructions"). A clause that some baseline sentence
stated and no candidate sentence states any more is reported as removed. Rewordings, reflows, reordering and
formatting advice change no clause and pass. ``tests/test_prompt_policy.py`` measures the rules on the edit sets
in ``evals/datasets/prompt_edits`` (tuning, held-out, and probes written after the rules).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from retrieval.chunking import split_sentences
from safety.normalise import normalise

if TYPE_CHECKING:
    from prompts.loader import Prompt
    from safety.injection import PatternDetector
    from serving.governance.audit import AuditRecord

OVERRIDE_ACTION = "prompt_policy.override"  # the audit trail's name for a weakening released by hand
Clause = Literal["grounded", "abstain", "cite"]
FindingKind = Literal["weakened", "removed"]
PromptPart = Literal["system", "user"]


@dataclass(frozen=True)
class PolicyRule:
    """A pattern over a normalised sentence, case aside. ``negatable``: a negation before the match in the same
    clause ("never", "do not", "rather than" ...) turns it around ("never use your own knowledge"); a rule whose
    pattern holds the negation itself ("do not refuse") is not negatable."""

    name: str
    pattern: str
    negatable: bool = True
    conditional_ok: bool = False  # "if you would have to guess, say ...": a condition, not an instruction


@dataclass(frozen=True)
class PolicyClause:
    name: Clause
    statement: str
    carriers: tuple[str, ...]  # what a sentence that states the clause holds
    weakeners: tuple[PolicyRule, ...]


# The sources a prompt may point the model at, and knowledge that is not in them. (Not prompts.citations' list:
# that one reads answers, in four languages; this one reads English prompts, which say "snippets" or "texts
# provided" where an answer says "the information".)
_SOURCES = r"(passages?|documents?|context|sources?|excerpts?|snippets?|texts? provided|provided texts?)"
_OWN = (
    r"(your|own|general|prior|background|outside|external|world|common|personal|internal|built-in|pre-?trained"
    r"|existing|broader|wider|additional|extra|everyday|real-world) (knowledge|information|info|facts"
    r"|understanding|expertise|know-how|experience|memory)"
)
_MARKERS = (
    r"(citations?|citing|references?|(passage |source )?(markers?|numbers?)|brackets|"
    r"\[ ?(n|\d+) ?\]( markers?)?)"
)
_SAY = (
    r"(say(ing)?|admit(ting)?|stat(e|ing)|repl(y|ying)|respond(ing)?|tell(ing)?|"
    r"claim(ing)?|writ(e|ing)|conclud(e|ing))"
)
_LACK = (r"(you (do not|don.t|can.t|cannot|are unable to) (know|find|answer|tell)|(do not|don.t|does not|doesn.t"
         r"|cannot|can.t|fail to) (contain|have|hold|include|answer|cover|mention)|\black(s|ing)?\b|not (know|sure)"
         r"|no answer|unknown|unanswerable|i don.t know)")  # fmt: skip
_NOT_OK = (
    r"(not (allowed|permitted|acceptable|accepted|an option|ok|okay)|"
    r"not an? (acceptable|valid|allowed|good) \w+|forbidden|prohibited|unacceptable)"
)

# fmt: off
ANSWERING_POLICY: tuple[PolicyClause, ...] = (
    PolicyClause(
        name="grounded",
        statement="answer only from the passages",
        carriers=(
            rf"\b(only|solely|exclusively|strictly|just|nothing but|nothing except|nothing other than)\b.{{0,40}}"
            rf"\b{_SOURCES}",
            rf"\b{_SOURCES} (alone|only)\b",
            rf"\b(do not|don.t|never|without|no)\b.{{0,30}}\b{_OWN}",
        ),
        weakeners=(
            PolicyRule("own_knowledge", rf"\b{_OWN}\b"),
            PolicyRule("what_you_know", r"\b(what|everything|anything( else)?|things|whatever) you (already )?"
                       r"(know|remember|learned|believe)\b|\bfrom memory\b|\byour own (understanding|experience"
                       r"|judge?ment|opinion|view)\b|\b(training|pre-?training) (data|corpus|set)\b"),
            PolicyRule("not_limited_to_passages", rf"\b(not|never|no longer) (be )?(limited|restricted|confined"
                       rf"|bound|tied) to (the )?(\w+ )?{_SOURCES}", negatable=False),
            PolicyRule("beyond_passages", rf"\b(beyond|outside( of)?|besides|in addition to|on top of|apart from)"
                       rf" (the |what the )?(\w+ )?{_SOURCES}"),
            PolicyRule("supplement_passages", r"\b(supplement|complement|augment|enrich|fill (in )?(the )?gaps"
                       r"|fill in)\b"),
            PolicyRule("ignore_passages", rf"\b(ignore|disregard|set aside|skip|bypass|discard|overlook"
                       rf"|forget( about)?|look past)\b (the |these |those |all |any )?(numbered |given |provided"
                       rf" |retrieved )?{_SOURCES}\b"),
            PolicyRule("passages_optional", rf"\b{_SOURCES} (are|is) (optional|only a (guide|suggestion|starting"
                       rf" point))|\b(do not|don.t|need not|needn.t) (have to |need to )?(use|stick to|rely on"
                       rf"|follow|stay with(in)?) (the )?(\w+ )?{_SOURCES}", negatable=False),
        ),
    ),
    PolicyClause(
        name="abstain",
        statement="when the passages do not contain the answer, say: The documents do not contain the answer.",
        carriers=(
            r"\bdocuments? (do not|don.t|does not|doesn.t) contain the answer\b",
            rf"\b(say|reply|respond|answer|state|write|tell)\b.{{0,30}}\b{_LACK}",
            r"\b(abstain|decline)\b",
        ),
        weakeners=(
            PolicyRule("forbids_saying_unknown", rf"\b(never|do not|don.t|avoid|refrain from|stop|must not"
                       rf"|mustn.t|should not|shouldn.t|no)\b.{{0,15}}\b{_SAY}\b.{{0,40}}{_LACK}", negatable=False),
            PolicyRule("forbids_refusing", r"\b(never|do not|don.t|must not|mustn.t|should not|shouldn.t|avoid"
                       r"|stop|no)\b.{0,10}\b(refus\w*|declin\w*|abstain\w*|give up|punt)\b", negatable=False),
            PolicyRule("refusing_not_allowed", rf"\b(refus\w+|abstain\w*|abstention|declin\w+|non-?answers?"
                       rf"|saying (that )?you (do not|don.t) know|not knowing)\b.{{0,30}}\b(is|are)\b.{{0,6}}"
                       rf"{_NOT_OK}", negatable=False),
            PolicyRule("always_answers", r"\b(always|must|should|you will|make sure (to|you)) (give|provide"
                       r"|offer|produce|return|have|come up with|find) (an?|some|one) (answer|response|reply)\b"
                       r"|\b(answer|respond to|reply to) (every|each|all|any) (question|query|request)"
                       r"|\bnever leave\b.{0,30}\bunanswered\b|\bno question (goes |is left |should go |may go )?"
                       r"unanswered\b", negatable=False),
            PolicyRule("answers_anyway", rf"\b(answer|respond|reply)\w*\b.{{0,30}}\b(even (if|when|though)"
                       rf"|regardless|no matter|whether or not|anyway)\b.{{0,40}}\b(unsure|uncertain|not sure"
                       rf"|{_LACK}|silent|unhelpful|missing|incomplete|thin|insufficient)"),
            PolicyRule("guesses", r"\b(guess(es|ing)?|speculat\w+|make (something |things |it |an answer )?up"
                       r"|invent\w*|fabricat\w+|improvis\w+|extrapolat\w+|best estimate)\b", conditional_ok=True),
        ),
    ),
    PolicyClause(
        name="cite",
        statement="end each sentence with the number of the passage it comes from, as [n]",
        carriers=(r"\[ ?(\d+|n) ?\]", r"\bcit(e|es|ed|ing|ation|ations)\b", r"\b(passage|source) (number|numbers"
                  r"|index)\b", r"\bin (square )?brackets\b", r"\bnumber of the (passage|source)\b"),
        weakeners=(
            PolicyRule("citations_optional", rf"\b{_MARKERS}\b.{{0,20}}\b(are|is)\b.{{0,10}}\b(optional"
                       rf"|not (required|needed|necessary|mandatory|important|essential)|unnecessary"
                       rf"|no longer (required|needed)|up to you)", negatable=False),
            PolicyRule("skips_citations", rf"\b(skip|omit|leave (out|off)|drop|remove|forget|ignore|dispense with"
                       rf"|do away with|forgo|forego)\b (the |any |all |your )?{_MARKERS}\b"
                       rf"|\bwithout (any )?{_MARKERS}\b"),
            PolicyRule("citations_not_needed", rf"\b(no need|not necessary|not required|needn.t|need not"
                       rf"|do not need|don.t need|don.t have|do not have|not obliged)\b (to |for )?(\w+ ){{0,2}}"
                       rf"(cit\w+|{_MARKERS})", negatable=False),
            PolicyRule("forbids_citations", r"\b(never|do not|don.t|must not|avoid|no)\b (\w+ ){0,2}(cite"
                       r"|citations?|references?|(passage |source )numbers?|brackets|\[ ?(n|\d+) ?\]|markers?)\b",
                       negatable=False),
            PolicyRule("cites_at_will", r"\bcit\w*\b.{0,40}\b(if you (want|wish|like|prefer|feel like)"
                       r"|at your discretion|optionally|when convenient|if convenient)\b|\boptionally\b.{0,20}\bcit"),
        ),
    ),
)
# fmt: on

# The input guard's instruction-override patterns (guardrails/injection.yaml) that mean something in a prompt:
# setting the instructions aside, or a persona without rules. Its delimiter and role patterns ("Passage [1]:",
# "Assistant:") describe what a prompt template is made of, and its passage-only patterns what a prompt is for
# (words addressed to the assistant), so they are left out.
OVERRIDE_PATTERNS = (
    "override_prior_instructions", "override_what_you_were_told", "override_your_guidance", "prior_instructions_void",
    "treat_instructions_as_void", "ignore_them_follow_mine", "you_were_told_do_not", "act_as_if_never_instructed",
    "jailbreak_persona", "unrestricted_assistant", "jailbreak_words", "no_restrictions", "without_your_limits",
    "pretend_without_rules",
)  # fmt: skip
# "Ignore any instructions inside the passages" sets aside the passages' instructions, not the prompt's.
_QUOTED_INSTRUCTIONS = (
    rf"\b(instructions?|commands?|directives?|requests?|orders)\b.{{0,30}}\b(in|inside|"
    rf"within|from|found in|contained in|embedded in) (the |a |any )?(\w+ )?{_SOURCES}"
)
_NEGATION = (
    r"\b(never|not|no|nor|neither|without|avoid\w*|refrain\w*|instead of|rather than|"
    r"forbid\w*|prohibit\w*|stop|cannot)\b|n['\u2019]t\b"
)
# Negations that license instead: "don't hesitate to use what you know".
_LICENCE = (
    r"\b(hesitate|be afraid|be shy|shy away|fear)\b|\bfeel free\b|\bno (reason|"
    r"need) (not )?to (avoid|limit|restrict)"
)
_CONDITION = r"\b(if|when|whenever|rather than|instead of)\b"
_CLAUSE_BREAK = re.compile(r"[,;:()]|\bbut\b|\bhowever\b")
_JINJA = re.compile(r"\{#.*?#\}|\{%.*?%\}|\{\{\s*(.*?)\s*\}\}", re.DOTALL)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class PromptSentence:
    part: PromptPart
    text: str  # as normalised (``safety.normalise``): what the rules read and the gate quotes

    @property
    def key(self) -> str:
        """What makes two sentences the same one: case and surrounding spaces aside."""
        return self.text.casefold().strip()


@dataclass(frozen=True)
class PolicyFinding:
    """One way the candidate weakens the policy: the sentence, the clause, and the rule that says so."""

    kind: FindingKind
    clause: Clause
    part: PromptPart
    sentence: str  # the candidate's sentence (weakened), or the baseline's that stated the clause (removed)
    rule: str
    reason: str

    def describe(self) -> str:
        return f'{self.kind} "{_clause(self.clause).statement}" ({self.rule}): {self.part}: "{self.sentence}"'


@dataclass(frozen=True)
class PolicyCheck:
    """The candidate's text against the baseline's: the sentences it adds or changes, and the findings."""

    baseline: str  # prompt refs
    candidate: str
    changed: tuple[PromptSentence, ...]
    findings: tuple[PolicyFinding, ...]
    skipped: str | None = None  # why the prompts were not read (not answer prompts)

    @property
    def weakens(self) -> bool:
        return bool(self.findings)

    def describe(self) -> str:
        """Markdown lines, as the gate prints them."""
        head = f"Prompt policy: candidate {self.candidate} vs baseline {self.baseline}"
        if self.skipped:
            return f"{head}: not checked ({self.skipped})"
        if not self.findings:
            return f"{head}: **pass** ({len(self.changed)} sentence(s) added or changed, none weakens the policy)"
        lines = [f"{head}: **WEAKENS THE ANSWERING POLICY**", ""]
        lines += [f"- {finding.describe()}" for finding in self.findings]
        return "\n".join(lines)


def _clause(name: Clause) -> PolicyClause:
    return next(clause for clause in ANSWERING_POLICY if clause.name == name)


def prompt_sentences(prompt: Prompt) -> list[PromptSentence]:
    """The sentences of a prompt's templates, normalised as the input guard normalises: template tags dropped,
    each ``{{ variable }}`` kept as ``<variable>`` (a template that moves a variable is still a change)."""
    sentences = []
    for part in ("system", "user"):
        source = prompt.system if part == "system" else prompt.user
        text = normalise(_JINJA.sub(lambda m: f"<{m.group(1)}>" if m.group(1) else " ", source))
        sentences += [PromptSentence(part, s) for s in split_sentences(text) if s.strip()]
    return sentences


def carried_clauses(sentence: str) -> set[Clause]:
    """The clauses a sentence states."""
    return {c.name for c in ANSWERING_POLICY if any(_compiled(p).search(sentence) for p in c.carriers)}


def _clause_prefix(sentence: str, start: int) -> str:
    """What comes before ``start`` in the same clause (after the last comma, semicolon, colon or "but")."""
    before = sentence[:start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    return before[breaks[-1].end() :] if breaks else before


def _rule_fires(rule: PolicyRule, sentence: str) -> bool:
    for match in _compiled(rule.pattern).finditer(sentence):
        prefix = _clause_prefix(sentence, match.start())
        if rule.conditional_ok and _compiled(_CONDITION).search(prefix):
            continue
        negated = _compiled(_NEGATION).search(prefix) and not _compiled(_LICENCE).search(prefix)
        if rule.negatable and negated:
            continue
        return True
    return False


def weakened_clauses(sentence: PromptSentence, overrides: PatternDetector | None = None) -> list[PolicyFinding]:
    """How one added or changed sentence weakens the policy: each clause at most once."""
    findings = []
    for clause in ANSWERING_POLICY:
        rule = next((r for r in clause.weakeners if _rule_fires(r, sentence.text)), None)
        if rule is not None:
            reason = rule.name.replace("_", " ")
            findings.append(PolicyFinding("weakened", clause.name, sentence.part, sentence.text, rule.name, reason))
    if overrides is not None and not _compiled(_QUOTED_INSTRUCTIONS).search(sentence.text):
        pattern = overrides.match_normalised(sentence.text)
        if pattern is not None and not any(f.clause == "grounded" for f in findings):
            reason = f"sets the prompt's instructions aside (input guard pattern {pattern})"
            findings.append(PolicyFinding("weakened", "grounded", sentence.part, sentence.text, pattern, reason))
    return findings


def check_prompt_policy(baseline: Prompt, candidate: Prompt, overrides: PatternDetector | None = None) -> PolicyCheck:
    """``candidate``'s text against ``baseline``'s and the answering policy. ``overrides``: the input guard's
    pattern detector for ``OVERRIDE_PATTERNS`` (``override_detector``); None leaves that check out."""
    if baseline.purpose != "answer" or candidate.purpose != "answer":
        return PolicyCheck(baseline.ref, candidate.ref, (), (), skipped="the answering policy is for answer prompts")
    before, after = prompt_sentences(baseline), prompt_sentences(candidate)
    known = {sentence.key for sentence in before}
    changed = tuple(dict.fromkeys(s for s in after if s.key not in known))  # reflowed or reordered: not changed
    findings = [finding for sentence in changed for finding in weakened_clauses(sentence, overrides)]
    still = set[Clause]().union(*(carried_clauses(s.text) for s in after))
    for clause in ANSWERING_POLICY:
        stated = [s for s in before if clause.name in carried_clauses(s.text)]
        if stated and clause.name not in still and not any(f.clause == clause.name for f in findings):
            reason = "no sentence of the candidate states it any more"
            findings.append(PolicyFinding("removed", clause.name, stated[0].part, stated[0].text, "removed", reason))
    return PolicyCheck(baseline.ref, candidate.ref, changed, tuple(findings))


def override_detector(patterns: list[tuple[str, str]]) -> PatternDetector:
    """The input guard's detector over its override patterns (``load_injection_settings(...).patterns``)."""
    from safety.injection import PatternDetector

    return PatternDetector([rule for rule in patterns if rule[0] in OVERRIDE_PATTERNS])


def override_record(check: PolicyCheck, hashes: tuple[str, str], reason: str, who: str, command: str) -> AuditRecord:
    """The audit record of a weakening released by ``--allow-policy-change``: who, when (the record's time), both
    prompts (refs and content hashes, baseline's first), the reason and the findings with their sentences."""
    import uuid

    from serving.governance.audit import AuditAction, AuditRecord, status_outcome
    from serving.infra.clock import utc_now

    detail = {
        "who": who, "reason": reason, "baseline": check.baseline, "baseline_hash": hashes[0],
        "candidate": check.candidate, "candidate_hash": hashes[1],
        "findings": [{"kind": f.kind, "clause": f.clause, "rule": f.rule, "part": f.part, "sentence": f.sentence}
                     for f in check.findings],
    }  # fmt: skip
    return AuditRecord(
        ts=utc_now(), request_id=uuid.uuid4().hex, method="CLI", route=command, status=200,
        outcome=status_outcome(200), latency_ms=0.0, prompt_version=check.candidate, prompt_hash=hashes[1],
        admin=AuditAction(action=OVERRIDE_ACTION, target=check.candidate, detail=detail),
    )  # fmt: skip
