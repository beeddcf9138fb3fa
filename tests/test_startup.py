"""A start that talks: slow steps are named and keep saying so, quick ones say nothing, the quantizer's chatter
stays out of the log, and the server's last start line is the page's URL and a first question that works."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli.progress import LineProgress
from app.logs import is_quantizer_chatter
from app.startup import START_LOGGER, start_step
from tests.conftest import load_sample_records
from tests.live_server import LiveServers


def test_a_slow_step_is_named_then_heartbeats_then_says_how_long(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger=START_LOGGER),
        start_step("warming up", announce_after_s=0.05, heartbeat_s=0.1),
    ):
        time.sleep(0.4)
    lines = [record.getMessage() for record in caplog.records if record.name == START_LOGGER]
    assert lines[0] == "start: warming up"
    assert sum(line.startswith("start: still warming up (") for line in lines) >= 2
    assert lines[-1].startswith("start: warming up took 0.")


def test_a_quick_step_says_nothing_and_a_failing_one_still_ends(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=START_LOGGER):
        with start_step("quick", announce_after_s=1.0):
            pass
        with pytest.raises(RuntimeError), start_step("failing", announce_after_s=0.01, heartbeat_s=0.01):
            time.sleep(0.05)
            raise RuntimeError("boom")
    lines = [record.getMessage() for record in caplog.records if record.name == START_LOGGER]
    assert not any("quick" in line for line in lines)
    assert lines[-1].startswith("start: failing took")  # the heartbeat stopped with the step


def test_the_quantizers_per_tensor_lines_are_chatter_but_its_errors_are_not() -> None:
    path = "/venv/lib/python3.11/site-packages/onnxruntime/quantization/onnx_quantizer.py"
    record = logging.LogRecord("root", logging.INFO, path, 1, "Quantization parameters for tensor ...", None, None)
    assert is_quantizer_chatter(record)
    record.levelno = logging.ERROR
    assert not is_quantizer_chatter(record)
    ours = logging.LogRecord("ragops", logging.INFO, "/repo/app/cli/serve.py", 1, "start: x", None, None)
    assert not is_quantizer_chatter(ours)


def test_the_server_says_where_it_is_and_its_first_question_answers(live_server: LiveServers, tmp_path: Path) -> None:
    data_dir, corpus = tmp_path / "data", tmp_path / "sample.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in load_sample_records(5)))
    env = {**os.environ, "RAGOPS_DATA_DIR": str(data_dir), "RAGOPS_MODELS_DIR": str(live_server.models_dir)}
    ingest = [sys.executable, "-m", "app.cli", "ingest", str(corpus), "--collection", "sample"]
    subprocess.run(ingest, env=env, check=True, capture_output=True, timeout=300)

    keys = {"first-reader-key": "default:reader"}  # with keys on, the line asks for one (by variable, never a key)
    server = live_server({"data_dir": data_dir, "generator": "extractive", "api_keys": keys}, log_level="info")
    ready = [line["message"] for line in server.log_lines() if line["message"].startswith("ready: ")]
    assert len(ready) == 1, server.log_tail()
    assert f"open {server.url.replace('127.0.0.1', 'localhost')}/" in ready[0]
    command = ready[0].split("or try: ", 1)[1]
    assert "sample" in command and "What part of the Earth" in command
    assert '-H "authorization: Bearer $RAGOPS_API_KEY"' in command and "first-reader-key" not in ready[0]
    with_key = {**os.environ, "RAGOPS_API_KEY": "first-reader-key"}
    reply = subprocess.run(command, shell=True, env=with_key, capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(reply.stdout)
    assert answer["outcome"] in {"answered", "abstained"} and answer["citations"], answer
    # The plain line (stdout) a reader copies from, beside the JSON one.
    assert any(line.startswith("ready: open ") for line in server.log_path.read_text().splitlines())


def test_with_no_documents_the_ready_line_says_how_to_add_some(live_server: LiveServers) -> None:
    server = live_server({"generator": "extractive"}, log_level="info")
    ready = [line["message"] for line in server.log_lines() if line["message"].startswith("ready: ")]
    assert ready and "no documents yet" in ready[0] and "ragops ingest --url" in ready[0], server.log_tail()


def test_without_a_terminal_progress_is_a_line_every_few_seconds_even_inside_a_long_batch() -> None:
    stream = io.StringIO()
    progress = LineProgress(10, unit="chunk", desc="indexing", every_s=0.05, stream=stream)
    time.sleep(0.2)  # one long batch: no update, yet lines keep coming
    progress.update(10)
    progress.close()
    progress.close()  # closing twice writes nothing more
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("indexing: 0/10 chunks (0%)")
    assert lines[-1].startswith("indexing: 10/10 chunks (100%)")
