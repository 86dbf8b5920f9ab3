"""``bigbench:<name>``: the JSON tasks of the public BIG-bench 1.0.0 release.

The release is the ``bigbench==1.0.0`` source distribution (a 358 MB tarball). On first use
:func:`resolve_bigbench` downloads it from the package registry (:mod:`evaluation.registry`),
copies every
``bigbench/benchmark_tasks/<task>/task.json`` and ``.../<task>/<subtask>/task.json`` into the
cache (about 1.7 GB of JSON), writes ``index.json`` there and deletes the tarball. The cache
is built in a temporary directory beside its final place and renamed into place when
complete, so an interrupted download or extraction never leaves a partial cache: the next use
starts over.

Names: ``<task>`` for a task with its own examples, ``<task>/<subtask>`` for one subtask of a
task that BIG-bench splits (``arithmetic/1_digit_addition``). Programmatic tasks (a
``task.py`` and no ``task.json``) cannot be read as JSON and are refused.

``$FTPRUNE_BIGBENCH_SDIST`` (or the ``sdist`` argument) names a local copy of the tarball to
use instead of downloading one; it is read, never deleted. The public registry no longer
serves 1.0.0 (only 0.0.1, which holds no task data): where neither a cache nor a local copy
has the release, the fetch fails with one line that says so. The development work uses the
sources of :mod:`evaluation.olmo` and :mod:`evaluation.retrieval`, which the registry serves.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from evaluation.examples import TaskError
from evaluation.registry import download

RELEASE = "bigbench==1.0.0"
CACHE_NAME = "bigbench-1.0.0"
SDIST_ENV = "FTPRUNE_BIGBENCH_SDIST"
INDEX_FILE = "index.json"
# The release's task directories (JSON and programmatic), so that a misspelt name fails at
# once instead of after a 358 MB download. Subtask names are checked against the index.
RELEASE_TASKS = frozenset(
    """
    abstract_narrative_understanding abstraction_and_reasoning_corpus anachronisms
    analogical_similarity analytic_entailment arithmetic ascii_word_recognition
    authorship_verification auto_categorization auto_debugging bbq_lite bbq_lite_json
    bias_from_probabilities boolean_expressions bridging_anaphora_resolution_barqa causal_judgment
    cause_and_effect checkmate_in_one chess_state_tracking chinese_remainder_theorem
    cifar10_classification code_line_description codenames color com2sense common_morpheme
    conceptual_combinations conlang_translation context_definition_alignment
    contextual_parametric_knowledge_conflicts convinceme coqa_conversational_question_answering
    crash_blossom crass_ai cryobiology_spanish cryptonite cs_algorithms cycled_letters
    dark_humor_detection date_understanding disambiguation_qa discourse_marker_prediction disfl_qa
    diverse_social_bias dyck_languages dynamic_counting elementary_math_qa emoji_movie
    emojis_emotion_prediction empirical_judgments english_proverbs english_russian_proverbs
    entailed_polarity entailed_polarity_hindi epistemic_reasoning
    evaluating_information_essentiality fact_checker factuality_of_summary fantasy_reasoning
    few_shot_nlg figure_of_speech_detection forecasting_subquestions
    formal_fallacies_syllogisms_negation gem gender_inclusive_sentences_german
    gender_sensitivity_chinese gender_sensitivity_english general_knowledge geometric_shapes
    goal_step_wikihow gre_reading_comprehension hhh_alignment high_low_game
    hindi_question_answering hindu_knowledge hinglish_toxicity human_organs_senses hyperbaton
    identify_math_theorems identify_odd_metaphor implicatures implicit_relations
    intent_recognition international_phonetic_alphabet_nli
    international_phonetic_alphabet_transliterate intersect_geometry irony_identification
    kanji_ascii kannada key_value_maps known_unknowns language_games language_identification
    linguistic_mappings linguistics_puzzles list_functions logic_grid_puzzle logical_args
    logical_deduction logical_fallacy_detection logical_sequence long_context_integration
    mathematical_induction matrixshapes metaphor_boolean metaphor_understanding
    minute_mysteries_qa misconceptions misconceptions_russian mnist_ascii modified_arithmetic
    moral_permissibility movie_dialog_same_or_different movie_recommendation mult_data_wrangling
    multiemo multistep_arithmetic muslim_violence_bias natural_instructions navigate
    nonsense_words_grammar novel_concepts object_counting odd_one_out operators
    paragraph_segmentation parsinlu_qa parsinlu_reading_comprehension penguins_in_a_table
    periodic_elements persian_idioms phrase_relatedness physical_intuition physics
    physics_questions play_dialog_same_or_different polish_sequence_labeling
    presuppositions_as_nli program_synthesis protein_interacting_sites
    python_programming_challenge qa_wikidata question_answer_creation question_selection
    real_or_fake_text reasoning_about_colored_objects repeat_copy_logic rephrase riddle_sense
    roots_optimization_and_games ruin_names salient_translation_error_detection
    scientific_press_release self_awareness self_evaluation_courtroom self_evaluation_tutoring
    semantic_parsing_in_context_sparc semantic_parsing_spider sentence_ambiguity
    similarities_abstraction simp_turing_concept simple_arithmetic simple_arithmetic_json
    simple_arithmetic_json_multiple_choice simple_arithmetic_json_subtasks
    simple_arithmetic_multiple_targets_json simple_ethical_questions simple_text_editing snarks
    social_iqa social_support spelling_bee sports_understanding squad_shifts strange_stories
    strategyqa subject_verb_agreement sudoku sufficient_information suicide_risk
    swahili_english_proverbs swedish_to_german_proverbs symbol_interpretation taboo talkdown
    temporal_sequences tense text_navigation_game timedial topical_chat tracking_shuffled_objects
    training_on_test_set truthful_qa twenty_questions understanding_fables undo_permutation
    unit_conversion unit_interpretation unnatural_in_context_learning unqover
    vitaminc_fact_verification web_of_lies what_is_the_tao which_wiki_edit winowhy
    word_problems_on_sets_and_graphs word_sorting word_unscrambling yes_no_black_white
""".split()
)
_MEMBER = re.compile(
    r"[^/]+/bigbench/benchmark_tasks/(\w[\w.-]*)(?:/(\w[\w.-]*))?/task\.(json|py)", re.ASCII
)


@dataclass(frozen=True)
class BigbenchIndex:
    """What the cache at ``root`` holds: JSON task names with their ``task.json`` paths
    relative to ``root``, the subtask names of each split task, and the programmatic tasks."""

    root: Path
    tasks: dict[str, str]
    subtasks: dict[str, tuple[str, ...]]
    programmatic: tuple[str, ...]

    def path(self, name: str) -> Path:
        return self.root / self.tasks[name]


def default_cache_dir() -> Path:
    """``$FTPRUNE_CACHE/bigbench-1.0.0``, else ``~/.cache/ftprune/bigbench-1.0.0``."""
    from router.loading import cache_dir

    return cache_dir() / CACHE_NAME


def read_index(cache_dir: Path | None = None) -> BigbenchIndex | None:
    """The cache's index, or None when the release has not been fetched into ``cache_dir``."""
    root = cache_dir or default_cache_dir()
    try:
        data = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return BigbenchIndex(
        root=root,
        tasks=data["tasks"],
        subtasks={k: tuple(v) for k, v in data["subtasks"].items()},
        programmatic=tuple(data["programmatic"]),
    )


def resolve_bigbench(
    name: str, cache_dir: Path | None = None, progress: bool = True, sdist: Path | None = None
) -> Path:
    """The ``task.json`` of the BIG-bench 1.0.0 task ``name`` (``task`` or
    ``task/subtask``), fetching the release into ``cache_dir`` first if it is not there.

    Raises :class:`~evaluation.examples.TaskError` (one line) for a name the release does not
    have (with its close matches), a programmatic task, a split task named without its
    subtask, or a release that cannot be fetched. A top-level name unknown to the release is
    refused before anything is downloaded.
    """
    top = name.split("/", 1)[0]
    if top not in RELEASE_TASKS:
        raise TaskError(_unknown(name, RELEASE_TASKS))
    index = read_index(cache_dir) or fetch_release(cache_dir, progress, sdist)
    if name in index.programmatic:
        raise TaskError(
            f"bigbench:{name} is a programmatic BIG-bench task (task.py, no "
            "task.json): only JSON tasks can be evaluated"
        )
    if name in index.subtasks:
        subtasks = index.subtasks[name]
        shown = ", ".join(f"bigbench:{s}" for s in subtasks[:4])
        more = f" and {len(subtasks) - 4} more" if len(subtasks) > 4 else ""
        raise TaskError(
            f"bigbench:{name} is split into {len(subtasks)} subtasks; name one: {shown}{more}"
        )
    if name not in index.tasks:
        raise TaskError(_unknown(name, [*index.tasks, *index.programmatic]))
    return index.path(name)


def fetch_release(
    cache_dir: Path | None = None, progress: bool = True, sdist: Path | None = None
) -> BigbenchIndex:
    """Build the cache from the release tarball (``sdist``, ``$FTPRUNE_BIGBENCH_SDIST``, else
    downloaded by pip and deleted afterwards) and return its index. The cache appears whole
    or not at all; if another process completed it meanwhile, that cache is kept."""
    root = cache_dir or default_cache_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    local = sdist or (Path(os.environ[SDIST_ENV]) if os.environ.get(SDIST_ENV) else None)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{CACHE_NAME}.") as work:
        tarball = local or _download(Path(work) / "sdist", progress)
        staging = Path(work) / "tasks"
        _extract(tarball, staging, progress)
        if local is None:
            tarball.unlink()
        try:
            staging.rename(root)
        except OSError:
            existing = read_index(root)
            if existing is None:
                raise TaskError(
                    f"cannot create the BIG-bench cache {root}: it exists but has "
                    f"no {INDEX_FILE}; remove it and retry"
                ) from None
            return existing
    index = read_index(root)
    assert index is not None
    return index


def _download(directory: Path, progress: bool) -> Path:
    try:
        return download(RELEASE, directory, progress, source=True, size="358 MB")
    except TaskError as error:
        raise TaskError(
            f"{error} (the registry serves only bigbench 0.0.1, without task data: set "
            f"${SDIST_ENV} to a local copy of the 1.0.0 tarball)"
        ) from None


def _extract(tarball: Path, staging: Path, progress: bool) -> None:
    """Copy the tarball's ``task.json`` files into ``staging`` and write its index there.

    Each member's destination is rebuilt from its matched name parts, never from the member
    path, so nothing is written outside ``staging``."""
    from tqdm import tqdm

    tasks: dict[str, str] = {}
    subtasks: dict[str, list[str]] = {}
    scripts: set[str] = set()
    staging.mkdir()
    try:
        bar = tqdm(
            total=tarball.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="BIG-bench tasks",
            disable=not progress,
        )
        with bar, open(tarball, "rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            for member in tar:
                bar.update(raw.tell() - bar.n)
                match = _MEMBER.fullmatch(member.name)
                if match is None or not member.isfile():
                    continue
                task, subtask, kind = match.groups()
                if kind == "py":
                    if subtask is None:
                        scripts.add(task)
                    continue
                name = f"{task}/{subtask}" if subtask else task
                relative = f"{name}/task.json"
                source = tar.extractfile(member)
                assert source is not None
                (staging / name).mkdir(parents=True, exist_ok=True)
                with source, open(staging / relative, "wb") as target:
                    shutil.copyfileobj(source, target)
                tasks[name] = relative
                if subtask:
                    subtasks.setdefault(task, []).append(name)
    except (OSError, tarfile.TarError, EOFError) as error:
        raise TaskError(f"{tarball}: not a readable BIG-bench release tarball ({error})") from None
    if not tasks:
        raise TaskError(f"{tarball}: holds no bigbench/benchmark_tasks/*/task.json")
    for parent in subtasks:  # a split task's own task.json holds only its description
        if parent in tasks:
            (staging / tasks.pop(parent)).unlink()
    index = {
        "release": RELEASE,
        "tasks": dict(sorted(tasks.items())),
        "subtasks": {k: sorted(v) for k, v in sorted(subtasks.items())},
        "programmatic": sorted(scripts - set(tasks) - set(subtasks)),
    }
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


def _unknown(name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return f"bigbench:{name} is not a task of the BIG-bench 1.0.0 release{hint}"
