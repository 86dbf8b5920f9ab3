"""The native multiple-choice scorer against log-likelihoods computed independently with a
plain forward pass, on a tiny random model in float64."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation.choice import encode_pair, score_choices
from evaluation.tasks import load_task_file
from router import route, unroute


@pytest.fixture(scope="module")
def model64():
    from router import load_model

    model, tokenizer = load_model("random:llama-tiny")
    return model.to(torch.float64), tokenizer


def plain_loglik(model, tokenizer, context: str, choice: str) -> float:
    """log P(choice | context) from one unbatched, unmasked forward of the whole text, the
    context's trailing whitespace scored as part of the choice (lm-eval's convention)."""
    stripped = context.rstrip()
    context, choice = stripped, context[len(stripped) :] + choice
    ctx = tokenizer.encode(context)
    cont = tokenizer.encode(choice)
    assert tokenizer.encode(context + choice) == ctx + cont  # byte-level: no merges
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        log_probs = model(ids).logits[0].log_softmax(-1)
    return sum(float(log_probs[len(ctx) + i - 1, token]) for i, token in enumerate(cont))


def test_prompt_follows_bigbench_defaults(write_task):
    task = load_task_file(
        write_task(
            data={"examples": [{"input": "Fire is", "target_scores": {"cold": 0, "hot": 1}}]}
        )
    )
    example = task.examples[0]
    assert task.name == "toy_task"
    assert example.choices == ("cold", "hot") and example.correct == frozenset({1})
    listed = example.context.removeprefix("\nQ: Fire is").removesuffix("\nA: ")
    assert sorted(listed.split("\n  choice: ")[1:]) == ["cold", "hot"]
    assert listed.startswith("\n  choice: ")


def test_prefixes_and_no_listed_choices(write_task):
    task = load_task_file(
        write_task(
            data={
                "task_prefix": "Decide.",
                "example_input_prefix": "\nIn: ",
                "example_output_prefix": "\nOut:",
                "append_choices_to_input": False,
                "examples": [{"input": "x", "target_scores": {"a": 0.5, "b": 0.5, "c": 0}}],
            }
        )
    )
    assert task.examples[0].context == "Decide.\nIn: x\nOut:"
    assert task.examples[0].correct == frozenset({0, 1})


def test_choices_flag_is_read_for_truth_as_bigbench_does(write_task):
    """Some BIG-bench files write append_choices_to_input as the string "false", which
    BIG-bench's own loader reads as true."""
    example = {"input": "x", "target_scores": {"a": 1, "b": 0}}
    listed = load_task_file(
        write_task(data={"append_choices_to_input": "false", "examples": [example]})
    )
    assert "\n  choice: " in listed.examples[0].context
    plain = load_task_file(
        write_task(data={"append_choices_to_input": False, "examples": [example]})
    )
    assert "choice:" not in plain.examples[0].context


def test_limit_takes_the_first_examples(write_task):
    full = load_task_file(write_task())
    assert load_task_file(write_task(), limit=2).examples == full.examples[:2]


def test_scorer_matches_independent_logliks_and_accuracy(model64, write_task):
    model, tokenizer = model64
    task = load_task_file(write_task())
    run = score_choices(model, tokenizer, task.examples, batch_size=4, progress=False)
    hits = hits_norm = 0
    for example, lls in zip(task.examples, run.loglik, strict=True):
        expected = [plain_loglik(model, tokenizer, example.context, c) for c in example.choices]
        assert lls == pytest.approx(expected, abs=1e-6)
        best = max(range(len(expected)), key=expected.__getitem__)
        hits += best in example.correct
        normed = [ll / len(c) for ll, c in zip(expected, example.choices, strict=True)]
        hits_norm += max(range(len(normed)), key=normed.__getitem__) in example.correct
    assert sum(run.acc) == hits and sum(run.acc_norm) == hits_norm
    assert run.realized_sparsity == 0.0 and run.flop_saving == 0.0


def test_single_token_choices_share_one_row_and_a_dense_context_runs_once(model64, write_task):
    """Choices whose inputs coincide (one token each after the same context) are read from one
    row of one forward; the rows of an example that differ read their shared context once,
    from the cache; both still score exactly what separate forwards give."""
    model, tokenizer = model64
    task = load_task_file(
        write_task(
            data={
                "examples": [
                    {"input": "Pick one", "target_scores": {"a": 0, "b": 1, "c": 0}},
                    {"input": "Another", "target_scores": {"x": 1, "yz": 0}},
                ]
            }
        )
    )
    shapes: list[tuple[int, int]] = []
    handle = model.model.register_forward_hook(
        lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    try:
        run = score_choices(model, tokenizer, task.examples, batch_size=8, progress=False)
    finally:
        handle.remove()
    pick, another = task.examples
    first = sum(map(len, encode_pair(tokenizer, pick.context, "a"))) - 1
    context = len(encode_pair(tokenizer, another.context, "x")[0])
    longest = context + len(encode_pair(tokenizer, another.context, "yz")[1]) - 1
    # a/b/c share one row; x and yz differ in their inputs: one forward runs the second
    # context's first tokens, the next all three rows (the two from the context's last token,
    # where their first score is read, on)
    assert shapes == [(1, context - 1), (3, max(first, longest - (context - 1)))]
    for example, lls in zip(task.examples, run.loglik, strict=True):
        expected = [plain_loglik(model, tokenizer, example.context, c) for c in example.choices]
        assert lls == pytest.approx(expected, abs=1e-6)


def test_routed_scores_do_not_depend_on_the_batch(model64, write_task):
    model, tokenizer = model64
    examples = load_task_file(write_task()).examples
    try:
        route(model, [0.0, 0.4, 0.5, 0.6])
        alone = score_choices(model, tokenizer, examples, batch_size=1, progress=False)
        batched = score_choices(model, tokenizer, examples, batch_size=16, progress=False)
    finally:
        unroute(model)
    dense = score_choices(model, tokenizer, examples, progress=False)
    for a, b in zip(alone.loglik, batched.loglik, strict=True):
        assert a == pytest.approx(b, abs=1e-9)
    assert alone.loglik != dense.loglik  # routing changed the scores
    assert batched.realized_sparsity == pytest.approx(alone.realized_sparsity)
    assert 0.3 < batched.realized_sparsity < 0.5  # mean of the schedule, up to rounding
    assert batched.flop_saving > 0.0


def test_pair_encoding_moves_trailing_space(model64):
    _, tokenizer = model64
    ctx, cont = encode_pair(tokenizer, "Q: a\nA: ", "yes")
    assert ctx == tokenizer.encode("Q: a\nA:") and cont == tokenizer.encode(" yes")


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not a JSON file"),
        (json.dumps({"name": "x"}), "no 'examples'"),
        (json.dumps({"examples": []}), "'examples' is empty"),
        (
            json.dumps({"examples": [{"input": "q", "target_scores": {"a": 0, "b": 0}}]}),
            "no correct choice",
        ),
        (json.dumps({"examples": [{"input": "q", "target_scores": {}}]}), "has no choices"),
        (
            json.dumps({"examples": [{"input": "q", "target_scores": {"": 1, "b": 0}}]}),
            "a choice is empty",
        ),
        (json.dumps({"examples": [{"input": "q", "target": "a"}]}), "no 'target_scores'"),
    ],
)
def test_bad_task_files(write_task, text, message):
    from evaluation.tasks import TaskError

    with pytest.raises(TaskError, match=message) as error:
        load_task_file(write_task(text=text))
    assert "\n" not in str(error.value)
