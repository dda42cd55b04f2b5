"""Models -> Import: a GGUF file (here the tiny test model exported as one) comes in as a base model every tab
offers, with the same logits; what it needs is said before; bad files, a taken name and an offline hub id are
clear messages with nothing left behind; it goes out again as GGUF; it is deleted only when nothing is built on it."""

from __future__ import annotations

import time

import pytest
import torch

from llm.model.checkpoint import load_model
from llm.model.export import export_model
from studio.context import SAMPLES_DIR, Studio, StudioError


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    return Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir):
    return export_model(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-story.gguf", "gguf", "fp32")


def finished(job, timeout: float = 120.0):
    deadline = time.time() + timeout
    while job.state == "running":
        assert time.time() < deadline, "the import did not finish"
        time.sleep(0.2)
    return job


def logits(model_dir, text: str = "Once upon a time") -> torch.Tensor:
    model, tok, _ = load_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([tok.encode(text)]))[0]


def test_an_imported_gguf_is_a_base_model_everywhere_with_the_same_logits(studio, tiny_gguf, tiny_model_dir):
    from studio.imports import needs_text
    from studio.tabs.models import details, model_rows

    assert "parameters" in needs_text(str(tiny_gguf)) and "memory" in needs_text(str(tiny_gguf))
    job = finished(studio.imports.start(str(tiny_gguf)))
    assert job.state == "done", job.message
    ref = f"base:{job.key}"
    assert ("tiny-story", ref) in studio.base_choices(), "offered as a base in Fine-tune, Compare, Chat, Inside"
    assert ref in [r for _, r in studio.model_choices()]
    assert torch.allclose(logits(studio.model_dir(ref)), logits(tiny_model_dir), atol=1e-4)
    row = next(r for r in model_rows(studio) if r["ref"] == ref)
    assert row["kind"] == "imported base model" and row["status"] == "ready"
    text, _ = details(studio, ref)
    assert "imported from" in text and str(tiny_gguf.resolve()) in text and "gguf" in text
    assert "Imported **tiny-story**" in job.line()


def test_bad_sources_are_clear_messages_and_leave_nothing(studio, tmp_path):
    from studio.imports import needs_text

    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"GGUF" + b"\x00" * 40)
    assert needs_text(str(garbage)).startswith("⚠") and "broken.gguf" in needs_text(str(garbage))
    with pytest.raises(StudioError, match="broken.gguf"):
        studio.imports.start(str(garbage))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    with pytest.raises(StudioError, match="not a model"):
        studio.imports.start(str(notes))
    with pytest.raises(StudioError, match="Give a model"):
        studio.imports.start("  ")
    assert list((studio.workspace / "models").iterdir()) == []


def test_an_unreachable_hub_id_fails_with_a_message_and_nothing_is_registered(studio, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = finished(studio.imports.start("no-such-owner/no-such-model"))
    assert job.state == "failed" and "no-such-owner/no-such-model" in job.message
    assert "Traceback" not in job.message
    assert len(studio.base_choices()) == 1 and list((studio.workspace / "models").iterdir()) == []


def test_a_taken_name_is_refused_and_a_second_import_waits(studio, tiny_gguf):
    with pytest.raises(StudioError, match="taken"):
        studio.imports.start(str(tiny_gguf), "base")  # the studio's own base model is called so
    job = studio.imports.start(str(tiny_gguf), "mine")
    assert job.state == "running"  # its child process takes seconds to start Python and torch
    with pytest.raises(StudioError, match="being imported"):
        studio.imports.start(str(tiny_gguf), "other")
    assert finished(job).state == "done"


def test_an_import_goes_out_as_gguf_and_is_deleted_only_when_nothing_is_built_on_it(studio, tiny_gguf):
    from studio.tabs.models import deletable, delete, download

    job = finished(studio.imports.start(str(tiny_gguf), "mine"))
    ref = f"base:{job.key}"
    out = download(studio, ref, gguf=True)
    assert "GGUF file ready" in out["status"]
    exported = out["zip_file"].value["path"] if isinstance(out["zip_file"].value, dict) else out["zip_file"].value
    assert str(exported).endswith(".gguf")
    run_dir = studio.workspace / "runs" / "tuned"
    run_dir.mkdir(parents=True)
    run = studio.store.add_run("tuned", ref, "sample-opposites", "lora", {}, run_dir, "finetune")
    row, why = deletable(studio, ref)
    assert row is None and "tuned" in why, "a run built on it is named"
    assert deletable(studio, "base:base")[0] is None, "the studio's own base model is never deleted"
    studio.store.delete_run(run)
    assert "Deleted mine" in delete(studio, ref)["status"]
    assert ref not in [r for _, r in studio.base_choices()] and not (studio.workspace / "models" / job.key).exists()


def test_data_reads_a_dataset_in_the_tokens_of_the_base_chosen(studio, tmp_path, tiny_model_dir):
    """Data's "Tokens as read by": the preview's token counts and context are the chosen base model's (here an
    import with a context of 32, not the tiny model's), and a base that is gone falls back to the studio's own."""
    import json
    import shutil

    from studio.tabs.data import on_load, pick_base

    small = tmp_path / "small-context"
    shutil.copytree(tiny_model_dir, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps(config | {"context_length": 32}))
    folder = export_model(small, tmp_path / "small-hf", "hf")  # a Hugging Face folder, as one would import it
    job = finished(studio.imports.start(str(folder), "short"))
    assert job.state == "done", job.message
    shown = on_load(studio, "sample-opposites", None, None, None)
    assert shown["tokens_of"].value == "base:base" and ("short", f"base:{job.key}") in shown["tokens_of"].choices
    assert f"Context {config['context_length']} tokens" in shown["status"]
    short = pick_base(studio, "sample-opposites", None, f"base:{job.key}")
    assert "Context 32 tokens" in short["status"]
    assert pick_base(studio, "sample-opposites", {"path": "x", "name": "x.csv"}, f"base:{job.key}") == {}
    assert on_load(studio, "sample-opposites", None, None, "base:gone")["tokens_of"].value == "base:base"
