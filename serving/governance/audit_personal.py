"""An audit record's personal fields, kept apart from its hashed body so that erasure can drop them while the chain
still verifies.

The chain hashes the body; the body holds ``personal_sha256``, the digest of the personal fields salted with a
random nonce (without the salt, a digest of a short question could be reversed by hashing guesses). The fields and
the nonce are in the ``personal`` column beside the body. ``verify`` re-computes the digest; an erasure replaces the
column with each field's keyed hash and the seq of its tombstone (the erasure's own record in the chain), which
``verify`` checks is there. Records written before this layout keep their personal fields in the body: erasure
cannot touch those without breaking the chain, and says how many it left.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

# Who asked (a keyed hash of the user, the address of a keyless caller) and what (the question's and answer's
# hashes or redacted text, the documents cited): what an erasure of a user or a document must reach.
PERSONAL_FIELDS = ("user_ref", "client", "question_sha256", "answer_sha256", "question", "answer", "cited_documents")
DIGEST_FIELD = "personal_sha256"
_EMPTY: dict[str, Any] = {name: [] if name == "cited_documents" else None for name in PERSONAL_FIELDS}
ERASED_FIELD = "erased_by"  # in an export: the seq of the tombstone that erased the record's personal fields
NONCE_FIELD = "personal_nonce"  # in an export: the salt, so that the personal fields re-check offline too


def canonical_json(fields: dict[str, Any]) -> str:
    """How the chain serialises: sorted keys, compact, ASCII."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


class PersonalPart(BaseModel):
    """The personal fields of one record, with the salt of their digest."""

    nonce: str
    fields: dict[str, Any]

    def digest(self) -> str:
        return hashlib.sha256((self.nonce + canonical_json(self.fields)).encode()).hexdigest()


class ErasedPart(BaseModel):
    """What an erasure leaves of a record's personal fields: each one's keyed hash, and the tombstone's seq."""

    erased_by: int
    keyed: dict[str, str]


def split_personal(fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A record's fields as the body to hash (personal fields out, their digest in) and the ``personal`` column.
    Every record gets one, empty ones too: a line of an export then re-hashes by one rule (``chained_fields``)."""
    body = {name: value for name, value in fields.items() if name not in PERSONAL_FIELDS}
    personal = {name: fields[name] for name in PERSONAL_FIELDS if fields.get(name) not in (None, [], "")}
    part = PersonalPart(nonce=secrets.token_hex(16), fields=personal)
    body[DIGEST_FIELD] = part.digest()
    return body, part.model_dump_json()


def chained_fields(line: dict[str, Any]) -> dict[str, Any]:
    """The fields of an exported line that its hash covers: without ``prev_hash`` and ``hash``, and without the
    personal fields (and ``erased_by``) where the line carries their digest instead."""
    dropped = {"prev_hash", "hash"}
    if DIGEST_FIELD in line:
        dropped |= {*PERSONAL_FIELDS, ERASED_FIELD, NONCE_FIELD}
    return {name: value for name, value in line.items() if name not in dropped}


def read_personal(column: str | None) -> PersonalPart | ErasedPart | None:
    """The ``personal`` column as written (None: absent or unreadable)."""
    if not column:
        return None
    for model in (PersonalPart, ErasedPart):
        try:
            return model.model_validate_json(column)
        except ValidationError:
            continue
    return None


def personal_problem(body: dict[str, Any], column: str | None) -> str | None:
    """Why the ``personal`` column does not belong to the body (None when it does): fields that do not match the
    digest the chain holds, a column without a digest, a digest without a column."""
    digest = body.get(DIGEST_FIELD)
    part = read_personal(column)
    if digest is None:
        return None if column is None else "it has personal fields its body holds no digest of"
    if part is None:
        return "its personal fields are gone without an erasure that removed them"
    if isinstance(part, PersonalPart) and part.digest() != digest:
        return "its personal fields do not match the digest it was hashed with"
    return None


def erased(part: PersonalPart, tombstone_seq: int, keyed: Callable[[object], str]) -> ErasedPart:
    return ErasedPart(erased_by=tombstone_seq, keyed={name: keyed(value) for name, value in part.fields.items()})


def exported(body: dict[str, Any], column: str | None) -> dict[str, Any]:
    """A record as export shows it: the body's fields with the personal ones back in their place (an erased one as
    ``erased:`` and its keyed hash, with ``erased_by``; one it did not have, empty), and the salt of their digest
    (``personal_nonce``): sha256(nonce + the canonical JSON of the fields it had) is ``personal_sha256``."""
    shown = {**_EMPTY, **body}
    part = read_personal(column)
    if isinstance(part, PersonalPart):
        return {**shown, **part.fields, NONCE_FIELD: part.nonce}
    if isinstance(part, ErasedPart):
        keyed = {name: f"erased:{value}" for name, value in part.keyed.items()}
        return {**shown, **keyed, ERASED_FIELD: part.erased_by}
    return shown
