"""Upload an eval run to LangSmith as an experiment: the suite's dataset, one run per sample, scores as feedback.

Only on request (``ragops eval run --upload``) and only with ``LANGSMITH_API_KEY`` set; ``LANGSMITH_ENDPOINT``
points at a self-hosted LangSmith. The dataset is named after the suite and the dataset hash, so runs of the
same dataset land as experiments side by side, comparable in LangSmith's UI.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from evals.results import EvalResults

EXAMPLE_NAMESPACE = uuid.UUID("8c4c2a57-1f0e-4d5e-9a39-6d1b8f3e2a10")


def example_id(dataset_hash: str, sample_id: str) -> uuid.UUID:
    """Stable per (dataset, sample): re-uploads refer to the same examples."""
    return uuid.uuid5(EXAMPLE_NAMESPACE, f"{dataset_hash}/{sample_id}")


def upload_experiment(results: EvalResults, client: Any = None) -> dict[str, str]:
    from langsmith import Client
    from langsmith.utils import LangSmithConflictError

    client = client or Client()
    dataset_hash = results.dataset.hash
    dataset_name = f"ragops-{results.suite}-{dataset_hash}"
    try:
        dataset = client.create_dataset(dataset_name, description=f"ragops eval suite {results.suite}")
        client.create_examples(
            dataset_id=dataset.id,
            examples=[
                {
                    "id": example_id(dataset_hash, row.id),
                    "inputs": {"question": row.question},
                    "outputs": {"answers": row.answers, "expected": row.expected},
                    "metadata": {"sample_id": row.id, "reference_doc_ids": row.reference_doc_ids},
                }
                for row in results.samples
            ],
        )
    except LangSmithConflictError:  # uploaded before: its examples are there under the same ids
        dataset = client.read_dataset(dataset_name=dataset_name)
    prompt = results.prompt
    experiment = f"{results.suite}-{prompt.version}-{results.generator}-{results.timestamp}"
    metadata = {
        "prompt": prompt.ref,
        "prompt_hash": prompt.hash,
        "generator": results.generator,
        "model": results.model,
        "judge": results.judge,
        "dataset_hash": dataset_hash,
    }
    project = client.create_project(experiment, reference_dataset_id=dataset.id, metadata=metadata)
    started = datetime.fromisoformat(results.timestamp)
    run_ids = []
    for row in results.samples:
        run_id = uuid.uuid4()
        run_ids.append(run_id)
        client.create_run(
            "ragops.answer",
            {"question": row.question},
            "chain",
            id=run_id,
            project_name=experiment,
            reference_example_id=example_id(dataset_hash, row.id),
            outputs={"answer": row.answer, "citations": [c.model_dump() for c in row.citations]},
            start_time=started,
            end_time=started + timedelta(milliseconds=row.latency_ms or 0),
            extra={"metadata": {**metadata, "generator": row.generator,
                                "fallback": row.fallback.model_dump() if row.fallback else None}},
        )  # fmt: skip
    client.flush()  # runs first: feedback refers to them
    for run_id, row in zip(run_ids, results.samples, strict=True):
        for key, value in row.metrics.items():
            if value is not None:
                client.create_feedback(run_id=run_id, trace_id=run_id, session_id=project.id, key=key, score=value)
            elif key in row.failures:
                client.create_feedback(
                    run_id=run_id, trace_id=run_id, session_id=project.id, key=key, comment=row.failures[key]
                )
    client.update_project(project.id, end_time=datetime.now(UTC))
    client.flush()
    return {"experiment": experiment, "dataset": dataset_name, "project_id": str(project.id)}
