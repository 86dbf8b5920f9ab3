"""lm-eval, offline, on local task YAMLs, against the native scorer on the same examples
(tiny random model in float64: log-likelihoods agree to 1e-6, dense and routed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evaluation.choice import score_choices
from evaluation.lmeval import check_lm_tasks, lmeval_scores
from evaluation.tasks import ChoiceExample, TaskError
from router import route, unroute

QUESTIONS = [
    ("What color is the sky?", ["blue", "green", "red"], 0),
    ("What is two plus two?", ["four", "five"], 0),
    ("Which animal barks?", ["cat", "dog", "cow", "owl"], 1),
    ("What is ice made of?", ["water", "sand", "glass"], 0),
]


@pytest.fixture(scope="module")
def model64():
    from router import load_model

    model, tokenizer = load_model("random:llama-tiny")
    return model.to(torch.float64), tokenizer


def native_examples() -> list[ChoiceExample]:
    # lm-eval's prompt "Question: q\nAnswer:" followed by " " + choice (target_delimiter).
    return [
        ChoiceExample(f"Question: {q}\nAnswer: ", tuple(c), frozenset({a})) for q, c, a in QUESTIONS
    ]


@pytest.fixture
def local_yaml(tmp_path: Path) -> Path:
    """A fully local multiple_choice task."""
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "choices": c, "label": a}) + "\n" for q, c, a in QUESTIONS
        )
    )
    path = tmp_path / "local_qa.yaml"
    path.write_text(f"""task: local_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    return path


@pytest.fixture
def arc_yaml(tmp_path: Path) -> Path:
    """A YAML that includes lm-eval's stock arc_easy task and reads local ARC-format files."""
    import lm_eval

    stock = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    data = tmp_path / "arc.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "id": str(i),
                    "question": q,
                    "answerKey": "ABCD"[a],
                    "choices": {"text": c, "label": list("ABCD"[: len(c)])},
                }
            )
            + "\n"
            for i, (q, c, a) in enumerate(QUESTIONS)
        )
    )
    directory = tmp_path / "arc_local"
    directory.mkdir()
    path = directory / "arc_easy_local.yaml"
    path.write_text(f"""include: {stock}
task: arc_easy_local
tag: []
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
training_split: null
validation_split: null
test_split: test
""")
    return directory


@pytest.mark.parametrize("kind", ["local", "stock_include"])
def test_lmeval_agrees_with_native_scorer(model64, local_yaml, arc_yaml, kind):
    model, tokenizer = model64
    spec = str(local_yaml if kind == "local" else arc_yaml)
    check_lm_tasks([spec])
    examples = native_examples()
    for schedule in (None, [0.0, 0.3, 0.5, 0.6]):
        if schedule is not None:
            route(model, schedule)
        try:
            (theirs,) = lmeval_scores(model, tokenizer, [spec], limit=None, batch_size=4)
            ours = score_choices(model, tokenizer, examples, batch_size=4, progress=False)
        finally:
            unroute(model)
        assert theirs.task == ("local_qa" if kind == "local" else "arc_easy_local")
        assert theirs.loglik is not None and len(theirs.loglik) == len(QUESTIONS)
        for a, b in zip(theirs.loglik, ours.loglik, strict=True):
            assert a == pytest.approx(b, abs=1e-6)
        assert theirs.metrics["acc"] == ours.acc
        assert theirs.metrics["acc_norm"] == ours.acc_norm
        if schedule is not None:
            assert theirs.realized_sparsity == pytest.approx(ours.realized_sparsity)
            assert theirs.realized_sparsity > 0.2


def test_unknown_and_bad_lm_tasks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_path: json\n")
    with pytest.raises(TaskError, match="no 'task:' name"):
        check_lm_tasks([str(bad)])
    with pytest.raises(TaskError, match="task YAML not found"):
        check_lm_tasks([str(tmp_path / "missing.yaml")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskError, match="no task YAML"):
        check_lm_tasks([str(empty)])
