"""The studio never loses a user's work or shows the wrong thing (issue 23's items 1-4), without a server:
the handlers and the library functions the events call."""

from __future__ import annotations

import pytest

from studio.context import SAMPLES_DIR, Studio, StudioError


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    return Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)


def finished_run(studio: Studio, name: str, base_ref: str = "base:base", command: str = "finetune") -> str:
    """A run recorded as done (its folder exists; no trainer ran)."""
    run_dir = studio.workspace / "runs" / name
    run_dir.mkdir(parents=True)
    run_id = studio.store.add_run(name, base_ref, "sample-opposites", "lora", {}, run_dir, command)
    studio.store.update_run(run_id, status="done")
    return run_id


def test_a_run_that_others_are_built_on_is_not_deleted_and_they_are_named(studio):
    from studio.tabs.models import deletable

    tuned = finished_run(studio, "tuned")
    finished_run(studio, "votes-dpo", f"run:{tuned}", "prefer")
    finished_run(studio, "again", f"run:{tuned}/latest")
    with pytest.raises(StudioError, match="votes-dpo.*again|again.*votes-dpo"):
        studio.delete_run(tuned)
    assert studio.store.run(tuned) is not None and (studio.workspace / "runs" / "tuned").is_dir()
    run, why = deletable(studio, f"run:{tuned}")
    assert run is None and "votes-dpo" in why and "again" in why, "the box says which runs are built on it"
    leaf = finished_run(studio, "leaf", f"run:{tuned}")
    studio.delete_run(leaf)  # nothing is built on it
    assert studio.store.run(leaf) is None


def test_a_failed_chat_turn_keeps_the_users_message(studio):
    from studio.tabs.chat import reply

    sampling = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 0}
    *_, last = reply(studio, "run:gone", "", [], "my long question", sampling)
    assert "⚠" in str(last) and "my long question" in str(last), "the message typed is not dropped"


def test_a_second_prompt_replaces_the_first_and_a_vote_records_the_prompt_of_its_answers(studio):
    from types import SimpleNamespace

    from studio.tabs.compare import compare, record_vote

    page, refs = SimpleNamespace(session_hash="page-1"), ["base:base", "base:base"]
    first = compare(studio, refs, "first prompt", 0, 1, 64, 0, page)
    next(first), next(first)  # models loaded, the first pieces written
    second = list(compare(studio, refs, "second prompt", 0, 1, 8, 0, page))
    assert list(first) == [], "the first comparison shows nothing more once the second is asked"
    shown = second[-1]["last"]
    assert shown["prompt"] == "second prompt" and "second prompt" in second[-1]["status"]
    record_vote(studio, shown, "tie")
    vote = studio.store.votes()[-1]
    assert vote["prompt"] == "second prompt" and vote["answers"] == shown["answers"]
    other_page = list(compare(studio, refs, "a third", 0, 1, 4, 0, SimpleNamespace(session_hash="page-2")))
    assert other_page[-1]["last"]["prompt"] == "a third", "another page's question replaces nothing here"
