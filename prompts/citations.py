"""Citation markers: the prompts ask the model to cite passages as ``[N]`` (or ``[1, 3]``). One definition of the
marker, used by the pipeline (resolving citations), the guards (citation validity, groundedness) and the evals;
and one rule for an answer that abstains (``says_not_in_documents``)."""

from __future__ import annotations

import re

MARKER = r"\[(\d+(?:\s*,\s*\d+)*)\]"  # [1] or [1, 3]; the pattern, for building others around it
CITATION = re.compile(MARKER)
# The one sentence that says the passages lack the answer: the pipeline's abstention, the outage answer, the
# extractive generator's "nothing fits", and the abstention branch of the cited-sentences answer grammar. A model
# may abstain in its own words too (``says_not_in_documents``).
NOT_IN_DOCUMENTS = "The documents do not contain the answer."


def citation_numbers(marker_body: str) -> list[int]:
    """The numbers inside one citation marker's brackets."""
    return [int(n) for n in re.split(r"\s*,\s*", marker_body)]


def cited_numbers(text: str) -> list[int]:
    """Every passage number the text cites, in order of appearance."""
    return [n for body in CITATION.findall(text) for n in citation_numbers(body)]


def strip_citations(text: str) -> str:
    return CITATION.sub("", text).strip()


# Abstentions in the model's own words. A sentence abstains when its subject is the passages (the documents, the
# context, the text, the information) or the speaker and it says they lack the answer; an ordinary negative fact
# ("The treaty does not contain a clause on ...") has another subject and is a claim. Citation markers are
# ignored. A sentence that goes on to answer (", but ...", "; it was ...") is no abstention: an answer taken for
# an abstention is never judged for groundedness, so where in doubt the rule says "answer".
_SOURCES = (
    r"(?:passages?|documents?|context|texts?|sources?|excerpts?|information|documentation"
    r"|dokumenten?|passagen?|texten?|quellen?|kontext|textstellen?|unterlagen|informationen"
    r"|extraits?|textes|contexte|informations|fuentes?|documentos?|pasajes?|textos?|contexto|fragmentos?"
    r"|informaci[oó]n)"
)
_ARTICLE = (
    r"(?:(?:the|these|this|those|my|your|die|der|das|den|dem|diese[nrs]?|le|la|les|ce|ces|el|los|las|este|esta"
    r"|estos|estas)\s+|l')"
)
_BEFORE = (
    r"(?:(?:provided|given|retrieved|supplied|available|above|cited|following|shown|bereitgestellten|vorliegenden"
    r"|gegebenen)\s+)"
)
_AFTER = r"(?:\s+(?:provided|given|above|shown|here|available|supplied|fournie?s?|proporcionad[oa]s?|dad[oa]s?))"
_SOURCE = rf"{_ARTICLE}?{_BEFORE}?{_SOURCES}(?:\s+\d+)?{_AFTER}?"
# A sentence without the passages as its subject abstains only when it names them ("There is no mention of it in
# the documents."): "There are no details on the invoice." is an answer.
_IN_SOURCE = rf"(?=.*\b(?:in|from|within|among|im|aus|dans|en)\s+{_SOURCE}\b)"
_EN_SAYS = (
    r"contain|mention|provide|say|include|state|specify|give|answer|address|discuss|indicate|tell|cover|list"
    r"|reveal|describe|explain|identify|name|offer|have|show|hold|refer to|talk about|make any mention of"
)
_EN_PARTICIPLE = (
    r"mentioned|stated|given|provided|specified|found|included|available|contained|present|listed|covered"
    r"|discussed|answered|determined|known|named|identified|addressed|explained|described"
)
_EN_NOUN = r"information|mention|answer|data|details?|reference"
_ABSTAINS = tuple(
    re.compile(pattern)
    for pattern in (
        # English: "The passage does not contain the answer.", "None of the documents mention ...".
        rf"{_SOURCE}\s+(?:(?:do|does|did)(?:n't| not)|cannot|can't|could not|couldn't|fails? to)"
        rf"\s+(?:(?:seem|appear)\s+to\s+)?(?:explicitly\s+|directly\s+|specifically\s+)?(?:{_EN_SAYS})\b.*",
        rf"(?:none of|neither of|neither)\s+{_SOURCE}\s+(?:{_EN_SAYS})(?:e?s)?\b.*",
        rf"{_SOURCE}\s+(?:(?:contains?|provides?|gives?|has|have|offers?|includes?)\s+no|makes?\s+no\s+mention"
        rf"|(?:is|are)\s+silent)\b.*",
        rf"{_IN_SOURCE}there\s+(?:is|was|are)\s+no\s+(?:{_EN_NOUN})\b.*",
        rf"{_IN_SOURCE}no\s+(?:{_EN_NOUN})\b.*\b(?:is|are|was|were)\s+(?:{_EN_PARTICIPLE})\b.*",
        # "The founder's name is not mentioned in the passages.", "This cannot be determined from the context."
        rf"[^,;:]{{0,80}}?\b(?:(?:is|are|was|were)(?:n't| not)|cannot be|can't be|could not be|couldn't be)"
        rf"\s+(?:(?:explicitly|directly|specifically|clearly)\s+)?(?:(?:{_EN_PARTICIPLE})\s+)?"
        rf"(?:anywhere\s+)?(?:in|from|within|by|based on|among)\s+{_SOURCE}\b.*",
        rf"not\s+(?:{_EN_PARTICIPLE})\s+(?:in|by|within)\s+{_SOURCE}\b.*",
        r"i\s+(?:do not|don't|did not|didn't)\s+know\b.*",
        r"i(?:\s+am|'m)?\s+(?:cannot|can't|could not|couldn't|(?:am\s+|was\s+)?unable to|not able to)\s+"
        r"(?:find|answer|determine|tell|locate|say|identify|see)\b.*",
        # German: "Die Dokumente enthalten die Antwort nicht.", "Es gibt keine Informationen darüber."
        rf"{_SOURCE}\s+(?:enthalten|enthält|nennen|nennt|erwähnen|erwähnt|sagen|sagt|geben|gibt|liefern|liefert)"
        r"\s+(?:[^,\s]+\s+){0,5}?(?:nicht|nichts|keine?[nrs]?)\b.*",
        rf"{_IN_SOURCE}(?:es|dazu|darüber|hierzu)\s+(?:gibt\s+es|gibt|liegen|finden\s+sich)\s+keine\s+(?:informationen|angaben"
        r"|hinweise|antwort)\b.*",
        r"ich\s+(?:weiß|weiss)\s+(?:es\s+)?nicht\b.*",
        r"ich\s+kann\s+(?:[^,\s]+\s+){0,6}?nicht\s+(?:finden|beantworten|sagen|bestimmen)\b.*",
        # French: "Les documents ne contiennent pas la réponse.", "Je ne sais pas."
        rf"{_SOURCE}\s+n(?:e\s+|')(?:contien|mentionn|donn|indiqu|précis|dis|di|fourni|parl)\w*\s+(?:pas|rien"
        r"|aucune?)\b.*",
        rf"{_IN_SOURCE}il\s+n'y\s+a\s+(?:pas|aucune?)\s+(?:d'|de\s+)?(?:information|mention|réponse|donnée)s?\b.*",
        r"je\s+ne\s+(?:sais|peux|trouve)\s+pas\b.*",
        # Spanish: "Los documentos no contienen la respuesta.", "No lo sé."
        rf"{_SOURCE}\s+no\s+(?:contien|menciona|da|dan|indica|especifica|dice|proporciona|incluye)\w*\b.*",
        rf"{_IN_SOURCE}no\s+(?:hay|existe)\s+(?:ninguna\s+)?(?:información|mención|respuesta|datos)\b.*",
        r"no\s+(?:lo\s+)?sé\b.*",
        r"no\s+(?:puedo|pude)\s+(?:encontrar|responder|determinar)\b.*",
    )
)
# What makes a sentence go on to answer: another clause (any comma: "... does not name the author, who is Jane
# Austen" answers), or a contrast.
_GOES_ON = re.compile(
    r"[;:,]"
    r"|\b(?:but|however|although|though|yet|instead|only|except|other than|apart from|besides|because|since|whereas"
    r"|while|therefore|thus|rather|aber|jedoch|sondern|allerdings|nur|außer|obwohl|weil|mais|cependant|toutefois"
    r"|seulement|sauf|bien que|car|parce que|pero|sin embargo|sino|solo|sólo|excepto|salvo|aunque|porque)\b"
    r"|\band\b.*\b(?:is|was|are|were|has|had|did)\b"
)
# Politeness before an abstention ("Unfortunately, ...", "Based on the passages, ...") changes nothing.
_PREAMBLE = re.compile(
    r"^(?:(?:unfortunately|sorry|i'm sorry|i am sorry|i apologi[sz]e|i'm afraid|i am afraid|leider|malheureusement"
    r"|désolée?|lo siento|desafortunadamente|lamentablemente)\s*,?\s*(?:but\s+)?"
    rf"|(?:based on|according to|from|in)\s+{_SOURCE}\s*,\s*)+"
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def says_not_in_documents(text: str) -> bool:
    """The answer is the model's abstention: each of its sentences says the passages (or the speaker) lack the
    answer, in the fixed sentence (``NOT_IN_DOCUMENTS``) or in the model's own words (English, German, French,
    Spanish), and none goes on to answer anyway. The one abstention rule: the pipeline's outcome, the output
    guard's groundedness and citation checks and the evals all read it."""
    sentences = [_said(s) for s in _SENTENCE_BREAK.split(strip_citations(text))]
    said = [s for s in sentences if s]  # politeness alone ("Sorry.") neither abstains nor answers
    return bool(said) and all(_abstains(s) for s in said)


def _said(sentence: str) -> str:
    """The sentence lower-cased, its spaces and apostrophes made plain, its politeness and full stop removed."""
    plain = " ".join(sentence.lower().replace("\u2019", "'").split()).rstrip(" .!?")
    return _PREAMBLE.sub("", plain).strip(" ,")


def _abstains(said: str) -> bool:
    opening = NOT_IN_DOCUMENTS.rstrip(".").lower()
    if said.startswith(opening):  # the fixed sentence, or a free-text version ending it otherwise
        return not _GOES_ON.search(said[len(opening) :])
    return any(pattern.fullmatch(said) for pattern in _ABSTAINS) and not _GOES_ON.search(said)
