"""Votes: one per comparison, exported as the preference pairs `prefer` reads, and "Tune on my votes"."""

from __future__ import annotations

import json
import os
import signal

import pytest
from test_studio_jobs import FINAL, wait

from llm.data.preferences import read_preference_file
from studio.context import SAMPLES_DIR, Studio
from studio.tabs.votes import tune_on_votes
from studio.votes import TIE, export_votes, preference_pairs


def vote(winner: str, answers: list[str], prompt: str = "Say hi.", models=("base:base", "run:a", "run:b")) -> dict:
    return {"prompt": prompt, "models": list(models), "answers": answers, "winner": winner, "settings": {"seed": 0}}


def test_a_vote_gives_a_pair_per_loser_and_ties_stay_apart():
    pairs, ties = preference_pairs(
        [
            vote("run:a", ["hello", "Hi there!", "go away"]),
            vote(TIE, ["x", "y", "z"]),
            vote("base:base", ["same", "same", "other"]),  # equal answers: nothing to prefer
        ]
    )
    assert pairs == [
        {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "hello"},
        {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "go away"},
        {"prompt": "Say hi.", "chosen": "same", "rejected": "other"},
    ]
    assert ties == [{"prompt": "Say hi.", "answers": ["x", "y", "z"], "models": ["base:base", "run:a", "run:b"]}]


def test_the_export_is_what_the_preference_trainer_reads(tmp_path):
    votes = [vote("run:a", [f"plain {i}", f"Nice to meet you, {i}!", f"no {i}"], prompt=f"Hi, I am {i}.")
             for i in range(3)] + [vote(TIE, ["a", "b", "c"])]  # fmt: skip
    exported = export_votes(votes, tmp_path)
    assert (exported.n_pairs, exported.n_ties) == (6, 1)
    data = read_preference_file(exported.pairs)
    assert len(data.examples) == 6 and not data.problems
    assert read_preference_file(exported.conversations).examples[0].chosen == data.examples[0].chosen
    conversational = json.loads(exported.conversations.read_text().splitlines()[0])
    assert [m["role"] for m in conversational["chosen"]] == ["user", "assistant"]
    assert json.loads(exported.ties.read_text())["answers"] == ["a", "b", "c"]
    assert not list(tmp_path.glob("*.partial")), "whole files only"


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    studio = Studio(tmp_path / "workspace", tiny_model_dir, SAMPLES_DIR)
    yield studio
    for run in studio.store.runs(("running", "stopping")):
        os.kill(run["pid"], signal.SIGKILL)


def test_tuning_needs_pairs(studio):
    message, run_id = tune_on_votes(studio, "base:base", 2, "")
    assert run_id is None and "No preference pairs yet" in message


def test_the_votes_view_names_a_deleted_model_as_deleted_not_by_its_id(studio):
    from studio.tabs.votes import vote_rows

    studio.store.add_vote("Say hi.", ["base:base", "run:gone"], ["hi", "hello"], {"seed": 0}, "run:gone", "c1")
    row = vote_rows(studio).iloc[0]
    assert row["models"] == f"{studio.model_label('base:base')} | (a deleted model)"
    assert row["better"] == "(a deleted model)" and "run:" not in row.to_string()


@pytest.mark.slow
def test_tune_on_my_votes_runs_a_preference_run_that_becomes_a_model(studio):
    for i, name in enumerate(["Tom", "Lily", "Sam", "Mia", "Ben", "Sue"]):
        answers = [f"{name} had a ball.", f"Hello {name}! Do you like to play?"]
        studio.store.add_vote(f"Hi, I am {name}.", ["base:base", "run:x"], answers, {"seed": 0}, "run:x", str(i))
    message, run_id = tune_on_votes(studio, "base:base", 2, "")
    assert run_id is not None and "6 pairs" in message and "expect a small change" in message
    run, metrics = wait(studio, run_id, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "done", run["message"]
    assert run["command"] == "prefer" and metrics.final["event"] == "done"
    assert f"run:{run_id}" in {ref for _, ref in studio.model_choices()}, "the tuned model can be compared"


def test_no_votes_export_nothing_and_a_refused_tune_writes_nothing(studio):
    from llm.errors import LLMError

    exports = studio.workspace / "exports"
    with pytest.raises(LLMError, match="no votes to export"):
        export_votes([], exports)
    studio.store.add_vote("Say hi.", ["base:base", "run:x"], ["a", "b"], {"seed": 0}, TIE, "c1")  # a tie: no pair
    assert tune_on_votes(studio, "base:base", 2, "")[1] is None
    assert not list(exports.iterdir()), "no empty files"
