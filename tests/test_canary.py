"""Live prompt labels and the canary analysis: labels moved on one replica are served by every replica within
seconds; a planted bad canary is rolled back (share 0, label back, audit record, lineage event, alert) within 200
canary answers; a neutral one is not, in 20 seeded runs; a canary that is not worse is promoted when asked. No
single party steers it: one tenant's jailbreak attempts (refusals, one user's many answers, made-up users) roll
nothing back, while a version that is worse for users of several tenants still goes.

Traffic replays answers recorded once from eval runs of SmolLM2 (``bench/data/canary_answers.jsonl``, made by
``bench/canary_record.py``): v2 (production), v94 (drops its citations: bad), v91 (a rewording: neutral).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli import main as ragops
from app.container import Services
from app.main import create_app
from bench.canary import REPORT_SUITES, Recorded, load_recorded, replay, traffic
from prompts.loader import Prompt
from prompts.registry import PromptRegistry, user_bucket
from retrieval.index import Scope
from safety.groundedness import Groundedness
from serving.contracts.answer import Answer, AnswerRequest, Citation, PromptInfo, canary_subject
from serving.contracts.generation import Fallback
from serving.governance.keys import EnvKeys
from serving.infra.state_store import StateStore
from serving.loop.answer_log import AnswerLog
from serving.loop.canary import Arm, CanaryAnalysis, Observation, Quorum, Tolerance, analyse
from serving.loop.canary_control import CanaryBook, CanaryLabels, CanaryMonitor, CanaryPolicy, ratings_by_answer
from serving.loop.labels import StoreLabels
from serving.loop.lineage import Lineage
from serving.loop.live_prompts import LivePrompts
from serving.observe.metrics import ServiceMetrics
from tests.conftest import make_answer
from tests.test_evals import planted_prompts

Recordings = dict[str, dict[str, Recorded]]
TOLERANCE = Tolerance(rate=0.05, latency=0.2)  # the settings' defaults
QUORUM = Quorum(min_users=20, min_tenants=2)  # likewise
POLICY = CanaryPolicy(tolerance=TOLERANCE, alpha=0.05, min_answers=200, autopromote=False, quorum=QUORUM,
                      groundedness_threshold=0.55, check_every=10)  # fmt: skip
TENANTS = ("acme", "globex", "initech", "umbrella")


@pytest.fixture(scope="module")
def recorded() -> Recordings:
    return load_recorded()


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    return planted_prompts(tmp_path / "prompts")


@dataclass
class Replica:
    """One server's canary parts on a shared state store, wired as ``app.container`` wires them."""

    state: StateStore
    prompts: LivePrompts
    answers: AnswerLog
    monitor: CanaryMonitor
    metrics: ServiceMetrics

    def close(self) -> None:
        for part in (self.monitor, self.prompts, self.answers, self.state):
            part.close()


@pytest.fixture
def make_replica(tmp_path: Path, database_url: str | None, prompts_dir: Path) -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(share: float = 0.2, policy: CanaryPolicy = POLICY, refresh_s: float = 0.2) -> Replica:
        state = StateStore.open(database_url, tmp_path / "state.sqlite")
        labels = StoreLabels(state)
        registry = PromptRegistry(prompts_dir)
        labels.adopt_declared(registry)
        metrics = ServiceMetrics(0.55)
        book = CanaryBook(state, share)
        prompts = LivePrompts(registry.with_labels(labels), "rag_answer@production", "rag_answer@canary", book,
                              refresh_s, metrics)  # fmt: skip
        answers = AnswerLog(state, retention_days=30)
        ratings = lambda prompt, since: ratings_by_answer(state, prompt, since)  # noqa: E731
        monitor = CanaryMonitor(book, answers, ratings, policy, "rag_answer", CanaryLabels("production", "canary"),
                                metrics)  # fmt: skip
        made.append(Replica(state, prompts, answers, monitor, metrics))
        return made[-1]

    yield make
    for replica in made:
        replica.close()


def release_canary(tmp_path: Path, database_url: str | None, prompts_dir: Path, version: str) -> None:
    """What `ragops prompts promote rag_answer VERSION --label canary` does to the live labels."""
    state = StateStore.open(database_url, tmp_path / "state.sqlite")
    try:
        StoreLabels(state).adopt_declared(PromptRegistry(prompts_dir))
        StoreLabels(state).move("rag_answer", "canary", version, "test", "promote")
    finally:
        state.close()


def as_answer(recorded: Recorded, prompt: Prompt) -> Answer:
    """A recorded answer as the pipeline would have returned it (its signals, not its text)."""
    passage = Citation(index=1, doc_id="d", chunk_id="d#0", title=None, source=None, text="p", score=1.0,
                       cited=recorded.cited)  # fmt: skip
    return make_answer(
        f"answer to {recorded.id}", outcome=recorded.outcome, citations=[passage],
        fallback=Fallback(from_="llamacpp", reason=recorded.fallback) if recorded.fallback else None,
        groundedness=None if recorded.groundedness is None else Groundedness(score=recorded.groundedness),
        timings_ms={"total": recorded.replayed_latency_ms},
        prompt=PromptInfo(name=prompt.name, version=prompt.version, hash=prompt.content_hash),
    )  # fmt: skip


def serve(replica: Replica, recorded: Recordings, requests: int, seed: int) -> int:
    """Replay ``requests`` requests of random users of four tenants through the replica (prompt choice by the
    server's canary subject, answer log, monitor), waiting for each check the monitor asks for; returns how many
    canary answers were served."""
    rng = random.Random(seed)
    questions = sorted(set.intersection(*(set(answers) for answers in recorded.values())))
    canary_answers = 0
    for i in range(requests):
        tenant, user = rng.choice(TENANTS), f"user-{rng.randrange(10**9)}"
        request = AnswerRequest(question=f"q{i}", scope=Scope("c", tenant), user=user,
                                canary_subject=canary_subject(tenant, f"key-{tenant}", user))  # fmt: skip
        prompt = replica.prompts(request.canary_subject)
        answer = as_answer(recorded[prompt.version][rng.choice(questions)], prompt)
        answer = answer.model_copy(update={"id": request.id})
        canary_answers += prompt.version != "v2"
        replica.answers.record(request, answer)
        replica.monitor.observe(answer)
        assert replica.monitor.flush(10.0)  # the check this answer asked for (if any) is done
    return canary_answers


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_labels_are_live_on_every_replica(
    make_replica: Callable[..., Replica], tmp_path: Path, database_url: str | None, prompts_dir: Path
) -> None:
    one, two = make_replica(), make_replica()
    assert one.prompts(None).version == two.prompts(None).version == "v2"
    StoreLabels(one.state).move("rag_answer", "production", "v1", "test", "promote")
    for replica in (one, two):  # within label_refresh_s (0.2 s here) of the next request
        wait_for(lambda r=replica: r.prompts(None).version == "v1")  # type: ignore[misc]
    assert [m.version for m in StoreLabels(one.state).moves("rag_answer", "production")] == ["v2", "v1"]
    # A replica restarting with the same registry.yaml (still declaring v2) does not undo a run-time move...
    three = make_replica()
    assert three.prompts(None).version == "v1"
    # ...but git declaring another version does: the store takes it.
    registry = PromptRegistry(prompts_dir)
    registry.promote("rag_answer", "v91", "production")
    StoreLabels(one.state).adopt_declared(registry)
    wait_for(lambda: one.prompts(None).version == two.prompts(None).version == "v91")


def test_canary_share_is_live_and_sticky(
    make_replica: Callable[..., Replica], tmp_path: Path, database_url: str | None, prompts_dir: Path
) -> None:
    release_canary(tmp_path, database_url, prompts_dir, "v91")
    one, two = make_replica(share=0.5), make_replica(share=0.5)
    users = [f"user-{i}" for i in range(200)]
    picks = {u: one.prompts(u).version for u in users}
    assert 60 < sum(v == "v91" for v in picks.values()) < 140
    assert picks == {u: two.prompts(u).version for u in users}  # the same users on every replica
    CanaryBook(one.state, 0.5).stop("rag_answer", "test")
    wait_for(lambda: all(r.prompts(u).version == "v2" for r in (one, two) for u in users[:20]))
    assert one.metrics.canary_share.labels("rag_answer")._value.get() == 0.0


def test_planted_bad_canary_is_rolled_back_within_200_canary_answers(
    make_replica: Callable[..., Replica], tmp_path: Path, database_url: str | None, prompts_dir: Path,
    recorded: Recordings, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    release_canary(tmp_path, database_url, prompts_dir, "v94")
    one, two = make_replica(), make_replica()
    with caplog.at_level(logging.ERROR, logger="ragops.alerts"):
        serve(one, recorded, requests=1000, seed=1)
    row = CanaryBook(one.state, 0.2).read("rag_answer")
    assert row is not None and row.status == "rolled_back" and row.share == 0.0 and row.decision is not None
    assert row.decision is not None and row.decision.canary_answers <= 200 and row.decision.decision == "rollback"
    assert "uncited" in [t.signal for t in row.decision.worse]
    # The canary label is back on the stable version, on every replica, and each user gets v2.
    assert StoreLabels(one.state).labels("rag_answer")["canary"] == "v2"
    wait_for(lambda: all(r.prompts(f"u{i}").version == "v2" for r in (one, two) for i in range(50)))
    # The evidence: an alert line, an audit record and a lineage event, all of one decision.
    alerts = [r for r in caplog.records if r.getMessage() == "canary rollback"]
    assert len(alerts) == 1 and alerts[0].__dict__["worse"] and alerts[0].__dict__["version"] == "v94"
    with one.state.transaction() as cur:
        bodies = [json.loads(row["body"]) for row in cur.execute("SELECT body FROM audit_records ORDER BY seq")]
    assert [b["route"] for b in bodies] == ["canary.rollback"] and bodies[0]["method"] == "SYSTEM"
    assert bodies[0]["admin"]["target"] == "rag_answer@v94" and "uncited" in bodies[0]["admin"]["detail"]["worse"]
    kinds = [e.kind for e in Lineage(one.state).history("rag_answer", "v94")]
    assert [k for k in kinds if k.startswith("canary")] == ["canary_started", "canary_decision"]
    assert one.metrics.canary_decisions.labels("rag_answer", "rollback")._value.get() == 1.0


def test_neutral_canary_promoted_when_not_worse(
    make_replica: Callable[..., Replica], tmp_path: Path, database_url: str | None, prompts_dir: Path,
    recorded: Recordings,
) -> None:  # fmt: skip
    release_canary(tmp_path, database_url, prompts_dir, "v91")
    policy = CanaryPolicy(
        tolerance=TOLERANCE, alpha=0.05, min_answers=40, autopromote=True, quorum=QUORUM, groundedness_threshold=0.55,
        check_every=10,
    )  # fmt: skip
    one = make_replica(share=0.5, policy=policy)
    serve(one, recorded, requests=200, seed=2)
    row = CanaryBook(one.state, 0.5).read("rag_answer")
    assert row is not None and row.status == "promoted" and row.decision is not None
    assert row.decision is not None and min(row.decision.canary_answers, row.decision.stable_answers) >= 40
    assert min(row.decision.canary_users, row.decision.stable_users) >= 20 and len(row.decision.tenants) == 4
    assert StoreLabels(one.state).labels("rag_answer")["production"] == "v91"
    wait_for(lambda: one.prompts("anyone").version == "v91")


@pytest.mark.parametrize("canary", ["v91", "v2"])
def test_neutral_canary_is_not_rolled_back_in_20_seeded_runs(recorded: Recordings, canary: str) -> None:
    """v91 rewords production; v2 against itself serves the same answers. 400 canary answers a run (share 0.1),
    checked every 10 answers as the server does."""
    for seed in range(20):
        run = traffic(recorded["v2"], recorded[canary], REPORT_SUITES, share=0.1, n=4000, seed=seed)
        result = replay(run, check_every=10, tolerance=TOLERANCE, alpha=0.05)
        assert not result.rolled_back, (seed, result)


def test_bad_canary_rolled_back_in_every_seeded_run(recorded: Recordings) -> None:
    for seed in range(20):
        run = traffic(recorded["v2"], recorded["v94"], REPORT_SUITES, share=0.1, n=4000, seed=seed)
        result = replay(run, check_every=10, tolerance=TOLERANCE, alpha=0.05)
        assert result.rolled_back and result.canary_answers <= 200, (seed, result)


def test_canary_cli(
    tmp_path: Path, prompts_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGOPS_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RAGOPS_PROMPTS_DIR", str(prompts_dir))
    monkeypatch.setenv("RAGOPS_CANARY_PROMPT", "rag_answer@canary")
    assert ragops(["canary", "status"]) == 0 and "no canary" in capsys.readouterr().out
    assert ragops(["canary", "start", "--share", "0.1"]) == 2  # no canary label yet
    assert "no label 'canary'" in capsys.readouterr().err
    assert ragops(["prompts", "promote", "rag_answer", "v91", "--label", "canary"]) == 0
    assert ragops(["canary", "start", "--share", "0.1"]) == 0
    assert "canary v91 vs stable v2 running at share 0.10" in capsys.readouterr().out
    assert ragops(["canary", "status", "--json"]) == 0
    [status] = json.loads(capsys.readouterr().out)
    assert (status["row"]["version"], status["row"]["status"], status["row"]["share"]) == ("v91", "running", 0.1)
    assert {t["signal"] for t in status["analysis"]["tests"]} >= {"uncited", "fallback", "latency", "thumbs_down"}
    assert ragops(["canary", "stop", "rag_answer"]) == 0 and ragops(["canary", "status"]) == 0
    assert "stopped, share 0.00" in capsys.readouterr().out
    assert ragops(["canary", "stop", "absent"]) == 2
    with pytest.raises(SystemExit):
        ragops(["canary", "start", "--share", "2"])


def test_status_without_a_canary_says_what_starts_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``no canary`` names the command that starts one, with real arguments, and that command works as printed;
    a canary prompt naming a label the registry lacks is said to be one."""
    monkeypatch.setenv("RAGOPS_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RAGOPS_CANARY_PROMPT", "rag_answer@canary")
    assert ragops(["canary", "status"]) == 0
    assert "RAGOPS_CANARY_PROMPT=rag_answer@canary does not resolve" in capsys.readouterr().out
    monkeypatch.delenv("RAGOPS_CANARY_PROMPT")
    assert ragops(["canary", "status"]) == 0
    out = capsys.readouterr().out
    printed = re.search(r"`(RAGOPS_CANARY_PROMPT=(\S+) ragops canary start [^`]*)`", out)
    assert out.startswith("no canary: ") and printed is not None, out
    assert ragops(["canary", "start"]) == 2  # no canary prompt: the same advice, as the error
    assert printed[1] in capsys.readouterr().err
    monkeypatch.setenv("RAGOPS_CANARY_PROMPT", printed[2])
    assert ragops(shlex.split(printed[1])[2:]) == 0
    assert "running at share 0.10" in capsys.readouterr().out


def test_thumbs_down_and_latency_count_as_evidence() -> None:
    """Signals the recordings do not vary: users' ratings (only rated answers count) and latency (relative)."""
    rng = random.Random(3)

    def seen(i: int, arm: Arm, down_rate: float, ms: float) -> Observation:
        rating = None if rng.random() < 0.5 else float(rng.random() < down_rate)
        return Observation.of(
            arm=arm, user=f"u{i}", tenant=TENANTS[i // 2 % 4], outcome="answered", groundedness=0.9, cited=True,
            fallback=None, latency_ms=ms * rng.uniform(0.8, 1.2), down_share=rating, threshold=0.55,
        )  # fmt: skip

    def decided(canary_down: float, canary_ms: float) -> CanaryAnalysis:
        arms: list[Arm] = ["canary" if i % 2 else "stable" for i in range(600)]
        observed = [seen(i, a, canary_down if a == "canary" else 0.1, canary_ms if a == "canary" else 1000)
                    for i, a in enumerate(arms)]  # fmt: skip
        return analyse(observed, TOLERANCE, 0.05, min_answers=200, autopromote=True, quorum=QUORUM)

    assert [t.signal for t in decided(0.5, 1000).worse] == ["thumbs_down"]
    assert [t.signal for t in decided(0.1, 2000).worse] == ["latency"]
    assert decided(0.1, 1100).decision == "promote"  # 10% slower is within the 20% tolerated


# --- no single party steers it --------------------------------------------------------------------------------


def attacker(user: str, outcome: str, cited: bool = True) -> Observation:
    """An answer in tenant mallory's canary arm: refused (a jailbreak attempt) or answered badly."""
    return Observation.of(
        arm="canary", user=user, tenant="mallory", outcome=outcome, groundedness=0.1, cited=cited, fallback=None,
        latency_ms=5000.0, down_share=1.0, threshold=0.55,
    )  # fmt: skip


def with_attack(honest: list[Observation], attack: list[Observation]) -> list[Observation]:
    """The attack's answers interleaved with honest traffic from the start (one every other answer)."""
    mixed: list[Observation] = []
    for i, observation in enumerate(honest):
        if i % 2 == 0 and i // 2 < len(attack):
            mixed.append(attack[i // 2])
        mixed.append(observation)
    return mixed


def test_one_tenants_jailbreaks_and_made_up_users_roll_nothing_back(recorded: Recordings) -> None:
    """The probe: one tenant's user sent jailbreaks (refused) and rated its answers down, and v1 was rolled back
    for everyone after 34 answers. Here it also gets bad answers, then makes up 40 users: refusals count for no
    signal, one user's answers weigh as one user, and a rollback that hangs on one tenant is held (and says so)."""
    for seed in range(5):
        honest = traffic(recorded["v2"], recorded["v2"], REPORT_SUITES, 0.1, 2000, seed, tenants=3).observations()
        one_user = [attacker("jailbreaker", "refused") for _ in range(40)]
        one_user += [attacker("jailbreaker", "answered", cited=False) for _ in range(30)]
        probe = analyse(with_attack(honest, one_user), TOLERANCE, 0.05, 10**9, False, QUORUM)
        assert probe.decision == "continue" and not probe.worse, (seed, probe.worse)
        [mallory] = [t for t in probe.tenants if t.tenant == "mallory"]
        assert (mallory.refused, mallory.canary_answers, mallory.canary_users) == (40, 30, 1)
        made_up = [attacker(f"sock-{i % 40}", "answered", cited=False) for i in range(120)]
        sybil = analyse(with_attack(honest, one_user + made_up), TOLERANCE, 0.05, 10**9, False, QUORUM)
        assert sybil.worse and sybil.decision == "continue" and sybil.hangs_on_tenant == "mallory", seed


def test_a_version_worse_for_users_of_several_tenants_still_rolls_back(recorded: Recordings) -> None:
    """400 users of 4 tenants, each asking about 10 questions (clustered evidence), with one tenant's jailbreaks
    mixed in: the version that drops its citations goes, on uncited, in every run."""
    for seed in range(5):
        run = traffic(recorded["v2"], recorded["v94"], REPORT_SUITES, 0.1, 4000, seed, tenants=4, users=400)
        jailbreaks = [attacker("jailbreaker", "refused") for _ in range(40)]
        analysis = analyse(with_attack(run.observations(), jailbreaks), TOLERANCE, 0.05, 10**9, False, QUORUM)
        assert analysis.decision == "rollback" and "uncited" in [t.signal for t in analysis.worse], seed
        assert analysis.canary_users >= QUORUM.min_users and len(analysis.tenants) == 5


def test_the_server_not_the_client_picks_the_arm(make_services: Callable[..., Services]) -> None:
    """The arm follows the server's hash of tenant, key and user: a client naming the user that the user id alone
    would send to the canary is not sent there by it, and one user name under two keys is two subjects."""
    keys = {"acme-one": "acme:reader", "acme-two": "acme:reader", "acme-editor": "acme:editor"}
    services = make_services(generator="extractive", guards=False, api_keys=keys, canary_prompt="rag_answer@v1",
                             canary_share=0.5)  # fmt: skip
    key_ids = {token: principal.key_id for token in keys if (principal := EnvKeys(keys).principal(token))}
    users = [f"user-{i}" for i in range(24)]
    with TestClient(create_app(services=services)) as client:
        documents = [{"id": "normans", "text": "The Normans gave their name to Normandy, a region in France."}]
        ingested = client.post(
            "/v1/documents", json={"documents": documents}, headers={"Authorization": "Bearer acme-editor"}
        )
        assert ingested.status_code == 200, ingested.text
        served = {
            (token, user): client.post(
                "/v1/chat", json={"question": "Who gave their name to Normandy?", "user": user},
                headers={"Authorization": f"Bearer {token}"},
            ).json()["prompt"]["version"]
            for token in ("acme-one", "acme-two") for user in users
        }  # fmt: skip
    stable = services.pipeline.prompt_for(None).version
    assert stable != "v1"

    def by_subject(token: str, user: str) -> str:
        return "v1" if user_bucket(canary_subject("acme", key_ids[token], user) or "") < 0.5 else stable

    assert served == {(token, user): by_subject(token, user) for token, user in served}
    by_user_alone = {user: "v1" if user_bucket(user) < 0.5 else stable for user in users}
    assert any(served["acme-one", user] != by_user_alone[user] for user in users)  # the name alone does not decide
    assert any(served["acme-one", user] != served["acme-two", user] for user in users)
