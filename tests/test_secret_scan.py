"""detect-secrets in memory (``safety.secret_scan``): the Hub validator's findings and fixes, safe across threads."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from safety.secret_scan import MASK, SecretsPresent

ROOT = Path(__file__).resolve().parents[1]
AWS_KEY = "my key is AKIAIOSFODNN7EXAMPLE, is that safe to share?"
SECRETS = [
    AWS_KEY,
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "password = 'hunter2hunter2'",
    "here\nsecret=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==\r\nend",
    "[db]\npassword = s3cr3tP4ssw0rdValue\n",
    "Slack xoxb-123456789012-1234567890123-abcdefghijABCDEFGHIJklmn",
    "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U'",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    "what is the password for the wifi?",
    # ini-like texts: detect-secrets reads them as their values first (quoted), comments and headers dropped
    "[x]\nkey = AKIAIOSFODNN7EXAMPLE\nfoo = Mv8Ki3Lp9QzR2xT7bNwY4cHj6uFsE1gDaZo0qWe5\n",
    "[x]\na = b\n# AKIAIOSFODNN7EXAMPLE\n",
    "[AKIAIOSFODNN7EXAMPLE]\na = b\n",
    "AKIAIOSFODNN7EXAMPLE and AKIAI44QH8DHBEXAMPLE\n",  # two on a line: reported in detect-secrets' order
    "password = 'hunter2hunter2'\npassword = 'hunter2hunter2'\n",  # one finding, on two lines
]


def test_finds_and_masks_what_the_hub_validator_does() -> None:
    """Same outcome and message as guardrails-ai-secrets-present on 300 questions, 100 NYT passages (as one line
    and as a line a sentence) and texts holding secrets of several formats; the same masked text but that each
    secret is masked everywhere (the Hub's masks only the line of its first finding)."""
    from guardrails_ai.secrets_present import SecretsPresent as HubSecretsPresent

    data = ROOT / "data" / "squad_shifts"
    questions = [json.loads(line)["question"] for line in (data / "new_wiki_questions.jsonl").open()][:300]
    passages = [json.loads(line)["text"] for line in (data / "nyt_passages.jsonl").open()][:100]
    texts = questions + passages + [p.replace(". ", ".\n") for p in passages] + SECRETS
    ours, hub = SecretsPresent(on_fail="noop"), HubSecretsPresent(on_fail="noop")

    def seen(result: Any, masked_everywhere: bool) -> tuple[object, ...]:
        fix = getattr(result, "fix_value", None)
        if masked_everywhere and fix is not None:
            for secret in result.error_message.splitlines()[1:]:
                fix = fix.replace(secret, MASK)
        return result.outcome, getattr(result, "error_message", None), fix

    differing = [text for text in texts if seen(ours.validate(text, {}), False) != seen(hub.validate(text, {}), True)]
    assert differing == []
    found = [text for text in SECRETS if ours.validate(text, {}).outcome == "fail"]
    assert len(found) >= 10 and AWS_KEY in found
    assert "AKIAIOSFODNN7EXAMPLE" not in ours.validate(AWS_KEY, {}).fix_value
    twice = ours.validate("password = 'hunter2hunter2'\npassword = 'hunter2hunter2'\n", {})
    assert "hunter2hunter2" not in twice.fix_value
    ini = ours.validate("[x]\nkey = AKIAIOSFODNN7EXAMPLE\nfoo = Mv8Ki3Lp9QzR2xT7bNwY4cHj6uFsE1gDaZo0qWe5\n", {})
    assert "Mv8Ki3Lp9QzR2xT7bNwY4cHj6uFsE1gDaZo0qWe5" not in ini.fix_value


def test_no_secret_slips_through_while_other_requests_are_checked() -> None:
    """The Hub validator switches detect-secrets' process-wide plugins on and off around each call, and four
    threads let this key through 1 time in 400; scanning with settings entered once, none may."""
    validators = [SecretsPresent(on_fail="noop") for _ in range(4)]
    missed: list[str] = []

    def check(validator: SecretsPresent) -> None:
        for _ in range(150):
            if validator.validate(AWS_KEY, {}).outcome != "fail":
                missed.append(AWS_KEY)

    threads = [threading.Thread(target=check, args=(v,)) for v in validators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert missed == []
