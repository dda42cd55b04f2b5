"""Hostile-but-fair inputs (issue 9): bad task files, absurd model folders, malicious trainer states, and what a
SIGKILL during a checkpoint write leaves behind. Every one gets a clear message naming the file (and the row,
line or column where it applies) or field, never a traceback, and nothing is written or left behind."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_stories

from llm import device
from llm.config import ConfigError, ModelConfig, TrainConfig, preset
from llm.data.tasks import TaskFileError, encode_examples, read_task_file, summary
from llm.data.text import InputError, iter_documents
from llm.data.tokenizer import byte_fallback_share
from llm.model import checkpoint
from llm.model.checkpoint import CheckpointError, load_model, load_trainer_state, remove_stale_temporaries, write_dir
from llm.model.transformer import Transformer

DEEP = "[" * 100_000  # 200 KB of brackets: the json module's recursion limit, not a syntax error


def turns(*roles: str) -> dict:
    return {"messages": [{"role": r, "content": f"{r} says hi"} for r in roles]}


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def utf16(text: str, bom: bool) -> bytes:
    return text.encode("utf-16" if bom else "utf-16-le")


PAIRS = "question,answer\nWhat is big?,small\n"
# (file name, content, the message: file, then row / line / column where it applies)
BAD_FILES = [
    # New in issue 9: each of these was a traceback, a misleading message, or passed silently.
    ("deep.json", DEEP, r"deep.json, line 1, column \d+: JSON nested too deeply"),
    ("deep-record.json", '[{"question": "a", "answer": ' + DEEP, r"line 1, column \d+: JSON nested too deeply"),
    ("deep.jsonl", '{"question": "a", "answer": "b"}\n{"question": ' + DEEP, r"deep.jsonl, line 2, column \d+: JSON"),
    ("deep-cell.csv", f'messages\n"{DEEP}"\n', r"row 1, column 'messages': malformed JSON \(nested too deeply"),
    ("bom16.csv", utf16("\ufeff" + PAIRS, bom=True), r"bom16.csv: the file is saved as UTF-16: save it as UTF-8"),
    ("plain16.csv", utf16(PAIRS, bom=False), r"plain16.csv: the file is saved as UTF-16: save it as UTF-8"),
    (
        "wide.jsonl",
        utf16(jsonl({"question": "a", "answer": "b"}), bom=True),
        r"wide.jsonl: the file is saved as UTF-16",
    ),
    (
        "lines.json",
        jsonl({"question": "a", "answer": "b"}, {"question": "c", "answer": "d"}),
        r"lines.json: this is JSON Lines \(one object a line\), not a JSON array: rename it to .jsonl",
    ),
    (
        "array.jsonl",
        json.dumps([{"question": "a", "answer": "b"}], indent=1),
        r"array.jsonl: this is a JSON array, not JSON Lines .*: rename it to .json",
    ),
    (
        "dup.csv",
        "question,answer,question\na,b,c\n",
        r"dup.csv, header, column 'question': the name is used 2 times \(columns 1, 3\)",
    ),
    ("dup.tsv", "answer\tquestion\tanswer\na\tb\tc\n", r"dup.tsv, header, column 'answer': the name is used 2 times"),
    (
        "dup.json",
        '[{"question": "a", "answer": "b"},\n {"question": "c", "answer": "d", "answer": "e"}]',
        r"dup.json, row 2, column 'answer': the key appears twice in one record",
    ),
    (
        "dup-turn.jsonl",
        '{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}\n',
        r"dup-turn.jsonl, line 1, column 'content': the key appears twice",
    ),
    ("nul.csv", "question,answer\nWhat is big?,sm\x00all\n", r"row 1, column 'answer': NUL character"),
    ("nul.json", json.dumps([{"question": "a\x00", "answer": "b"}]), r"row 1, column 'question': NUL character"),
    (
        "assistant-first.jsonl",
        jsonl(turns("assistant", "user", "assistant")),
        r"row 1, column 'messages': assistant turn first \(turn 1 answers before any user turn asks\)",
    ),
    (
        "system-then-assistant.jsonl",
        jsonl(turns("system", "assistant", "user")),
        r"row 1, column 'messages': assistant turn first \(turn 2",
    ),
    ("only-assistant.jsonl", jsonl(turns("assistant"), turns("assistant", "assistant")), r"row 2, .*no user turn"),
    # Already handled before issue 9: they stay handled.
    ("empty.csv", "", r"empty.csv: the file is empty"),
    ("header-only.csv", "question,answer\n", r"header-only.csv: no rows"),
    ("latin1.csv", "question,answer\ncafé?,oui\n".encode("latin-1"), r"latin1.csv: not UTF-8 .*line 2"),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), r"image.csv: not UTF-8 text"),
    ("broken.json", '[{"question": "a", "answer": "b"},', r"broken.json, line 1, column \d+: malformed JSON"),
    ("object.json", '{"question": "a", "answer": "b"}', r"object.json: expected a JSON array of objects"),
    ("quote.csv", 'question,answer\n"big,small\n', r"quote.csv: malformed CSV"),
    ("columns.csv", "word,opposite\nbig,small\n", r"columns.csv: cannot tell the format from the columns"),
    ("blank.csv", "question,answer\n ,small\nbig, \n", r"no usable rows.*row 1, column 'question'"),
    ("role.jsonl", jsonl({"messages": [{"role": "robot", "content": "x"}]}), r"row 1, column 'messages': unknown role"),
    ("notes.txt", PAIRS, r"notes.txt: unsupported file type '.txt'"),
    # Issue 23: a hostile-input run found these read wrongly or worded unclearly.
    (
        "extra-first.csv",  # pandas read the first column as an index: question 'two', answer 'EXTRA'
        "question,answer\none,two,EXTRA\n" + "".join(f"q{i},a{i}\n" for i in range(20)),
        r"extra-first.csv, line 2: 3 cells where the header has 2",
    ),
    ("nan.json", '[{"question": NaN, "answer": "b"}]', r"nan.json, row 1, column 'question': NaN is not a JSON value"),
    (
        "inf.jsonl",
        '{"question": "a", "answer": "b"}\n{"question": "a", "answer": [-Infinity]}\n',
        r"inf.jsonl, line 2, column 'answer': -Infinity is not a JSON value",
    ),  # fmt: skip
    (
        "wide.csv",  # said "field larger than field limit (131072)", naming no place
        ",".join(f"c{i}" for i in range(50_000)) + "\n" + ",".join("x" * 50_000) + "\n",
        r"wide.csv, header: 50,000 columns; a task file holds a few",
    ),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_task_files_get_a_message_with_the_place_and_nothing_is_written(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TaskFileError, match=message):
        read_task_file(path)
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_the_cli_refuses_every_bad_task_file_with_exit_code_2(tmp_path, capsys, tiny_model_dir, name, content, message):
    from llm.cli import main

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["finetune", "--base", str(tiny_model_dir), "--data", str(path), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing written"


def test_a_folder_given_as_a_task_file_is_named_a_folder(tmp_path):
    for name in ("data.csv", "data"):
        (tmp_path / name).mkdir()
        with pytest.raises(TaskFileError, match=f"{name}: is a folder, not a file"):
            read_task_file(tmp_path / name)


def test_bad_conversations_are_reported_per_row_beside_good_ones(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(jsonl(turns("user", "assistant"), turns("assistant"), turns("assistant", "user", "assistant")))
    data = read_task_file(path)
    assert [e.row for e in data.examples] == [1]
    assert [(p.row, p.column, p.reason) for p in data.problems] == [
        (2, "messages", "no user turn"),
        (3, "messages", "assistant turn first"),
    ]


def test_a_task_file_too_deep_for_the_cli_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    result = subprocess.run(
        [sys.executable, "-m", "llm", "finetune", "--data", str(path), "--out", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "deep.json, line 1, column" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_huge_cell_drops_its_row_before_it_is_tokenized(tmp_path, tok):
    from llm.data.tasks import MAX_CELL_CHARS

    path = tmp_path / "huge.csv"
    path.write_text(f'question,answer\n"{"word " * (MAX_CELL_CHARS // 5 + 1)}",short\nUp?,down\n')
    data = read_task_file(path)
    assert [e.row for e in data.examples] == [2]
    ((row, column, reason, detail),) = [(p.row, p.column, p.reason, p.detail) for p in data.problems]
    assert (row, column, reason) == (1, "question", "too long") and f"at most {MAX_CELL_CHARS:,}" in detail
    assert len(encode_examples(data, tok, 64).items) == 1, "only the good row is encoded"


def test_a_link_to_a_device_is_named_not_a_regular_file(tmp_path):
    from llm.data.text import expand_inputs

    for name in ("zero.csv", "zero.txt"):
        (tmp_path / name).symlink_to("/dev/zero")
    with pytest.raises(TaskFileError, match=r"zero.csv: not a regular file"):
        read_task_file(tmp_path / "zero.csv")
    with pytest.raises(InputError, match=r"zero.txt: not a regular file"):
        expand_inputs([str(tmp_path / "zero.txt")])


def test_a_tokenizer_trains_on_a_text_saved_as_one_long_line(tmp_path):
    """SentencePiece skips a line longer than it reads (64 KiB): a book without line breaks left it nothing,
    and it failed with 'INTERNAL: ... [!sentences_.empty()]', naming no file."""
    from llm.data.tokenizer import train_tokenizer

    path = tmp_path / "one-line.txt"
    path.write_text(" ".join(make_stories(2000)))  # about 250 KB, no line break
    assert path.stat().st_size > 2**16
    tok = train_tokenizer([path], tmp_path / "tok", vocab_size=400)
    assert tok.decode(tok.encode("Once upon a time, Tom had a cat.")) == "Once upon a time, Tom had a cat."


# ----------------------------------------------------------------------------------------------------------
# Corpus text (llm/data/text.py)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("wide.txt", utf16("\ufeffOnce upon a time.\n", bom=True), r"wide.txt: the file is saved as UTF-16"),
        ("wide.jsonl", utf16('{"text": "Once"}\n', bom=False), r"wide.jsonl: the file is saved as UTF-16"),
        ("deep.jsonl", '{"text": "Once"}\n{"text": ' + DEEP + "\n", r"deep.jsonl, line 2: JSON nested too deeply"),
    ],
)
def test_bad_corpus_text_gets_a_message_with_the_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        list(iter_documents([path]))


# ----------------------------------------------------------------------------------------------------------
# Model folders with absurd config.json values


def model_folder(tmp_path: Path, tok, **values) -> Path:
    """A model folder whose config.json holds these values (over a valid tiny shape); no weights needed,
    as every case here must be refused before the weights are read."""
    folder = tmp_path / "model"
    folder.mkdir()
    config = {**preset("tiny", vocab_size=tok.vocab_size).to_dict(), **values}
    (folder / checkpoint.CONFIG).write_text(json.dumps(config))  # json writes NaN and Infinity as JS literals
    tok.save(folder)
    return folder


@pytest.mark.parametrize(
    "values,message",
    [
        ({"n_layer": 2.5}, r"n_layer must be a whole number, got 2.5"),
        ({"context_length": 1e9}, r"context_length must be a whole number, got 1000000000.0"),
        ({"mlp_hidden": -5}, r"mlp_hidden must be in \[0, 2147483647\], got -5"),
        ({"n_head": 0}, r"n_head must be in \[1, "),
        ({"d_model": 2**40}, r"d_model must be in \[1, 2147483647\]"),
        ({"norm_eps": math.nan}, r"norm_eps must be in \(0, 1\), got nan"),
        ({"norm_eps": 0.0}, r"norm_eps must be in \(0, 1\), got 0.0"),
        ({"rope_theta": 0.0}, r"rope_theta must be in \(0, inf\), got 0.0"),
        ({"rope_theta": -10000.0}, r"rope_theta must be in \(0, inf\)"),
        ({"rope_theta": math.inf}, r"rope_theta must be in \(0, inf\), got inf"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"dropout": math.nan}, r"dropout must be in \[0, 1\), got nan"),
        ({"tie_embeddings": "yes"}, r"tie_embeddings must be of type bool"),
        ({"vocab_size": True}, r"vocab_size must be a number, got True"),
    ],
)
def test_absurd_config_values_are_refused_naming_the_field(tmp_path, tok, values, message):
    folder = model_folder(tmp_path, tok, **values)
    with pytest.raises(CheckpointError, match=rf"{folder / 'config.json'}: .*{message}"):
        load_model(folder)


@pytest.mark.parametrize(
    "values,part",
    [
        ({"n_layer": 100_000}, r"100,000 layers"),
        (
            {"context_length": 2_000_000_000},
            r"rotary tables of 256.0 GB \(context_length 2,000,000,000 x head size 32\)",
        ),
        ({"d_model": 2**20, "n_head": 4}, r"d_model 1,048,576"),
    ],
)
def test_models_too_big_for_memory_are_refused_fast_with_the_numbers(tmp_path, tok, monkeypatch, values, part):
    folder = model_folder(tmp_path, tok, **values)
    monkeypatch.setattr(checkpoint, "Transformer", None)  # building one would fail: the check comes first
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"model: the model needs [\d,.]+ GB of memory but cpu has .* {part}"):
        load_model(folder)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": False}, {"mlp_hidden": 96, "n_layer": 3}, {"context_length": 48, "n_head": 4}],
)
def test_model_memory_arithmetic_matches_a_built_model(tok, overrides):
    cfg = preset("tiny", vocab_size=tok.vocab_size, **overrides)
    if "tie_embeddings" in overrides:
        cfg = ModelConfig(**{**cfg.to_dict(), **overrides})
    model = Transformer(cfg)
    memory = device.model_memory(cfg)
    assert memory.n_parameters == model.num_params()
    assert memory.parameter_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())


def test_pretraining_a_model_too_big_for_memory_is_refused_before_anything_is_written(tmp_path, data_dir, monkeypatch):
    from llm.train.pretrain import pretrain

    cfg = preset("tiny", context_length=64, vocab_size=400)  # the prepared data's vocabulary
    memory = device.model_memory(cfg)
    needed = 4 * memory.parameter_bytes + memory.buffer_bytes  # weights, gradients and AdamW's two moments
    monkeypatch.setattr(device, "available_memory", lambda _: needed - 1)
    with pytest.raises(ConfigError, match=rf"pretraining needs {needed / 1e6:.1f} MB of memory but cpu has"):
        pretrain(data_dir, tmp_path / "run", cfg, TrainConfig(max_steps=1, device="cpu"))
    assert not (tmp_path / "run").exists()


def test_available_memory_of_this_cpu_is_known_and_plausible():
    available = device.available_memory(torch.device("cpu"))
    assert available is not None and 1e7 < available < 1e14


# ----------------------------------------------------------------------------------------------------------
# trainer_state.pt that this project did not write


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def valid_state() -> dict:
    return {
        "step": 3,
        "train_config": TrainConfig().to_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "elapsed": 1.5,
        "best_val": math.inf,
        "patience_used": 0,
        "rng": [torch.get_rng_state()],
    }


def truncated(path: Path) -> None:
    torch.save(valid_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "write,why",
    [
        (lambda p: torch.save({**valid_state(), "x": RunsCode(p.parent / "ran")}, p), r"refers to code, posix.system"),
        (truncated, r"damaged or truncated"),
        (lambda p: p.write_bytes(b"not a torch file"), r"damaged or truncated"),
        (lambda p: torch.save([1, 2, 3], p), r"it holds list, not a dictionary"),
        (
            lambda p: torch.save({"step": 3}, p),
            r"missing train_config, optimizer, elapsed, best_val, patience_used, rng",
        ),
        (lambda p: torch.save({**valid_state(), "step": "3"}, p), r"wrong type: step"),
        (lambda p: torch.save({**valid_state(), "rng": []}, p), r"rng is not a list of random generator states"),
    ],
)
def test_a_trainer_state_this_project_did_not_write_is_refused_clearly(tmp_path, write, why):
    latest = tmp_path / "run" / "latest"
    latest.mkdir(parents=True)
    write(latest / checkpoint.STATE)
    with pytest.raises(CheckpointError) as error:
        load_trainer_state(latest)
    message = str(error.value)
    assert "not a trainer state this project wrote, so the run cannot be resumed from it" in message
    assert re.search(why, message), message
    assert "weights_only" not in message and "False" not in message
    assert not (latest / "ran").exists()  # the pickled command never ran


def test_a_valid_trainer_state_round_trips(tmp_path):
    latest = tmp_path / "latest"
    latest.mkdir()
    torch.save(valid_state(), latest / checkpoint.STATE)
    assert load_trainer_state(latest)["step"] == 3


# ----------------------------------------------------------------------------------------------------------
# Temporary checkpoint folders left by a kill


def ended_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_on_the_next_save_and_live_writers_are_left_alone(tmp_path):
    other_program = subprocess.Popen(["sleep", "60"])  # a live pid that is not Python: reused after a kill
    live_python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pids = {"dead": ended_pid(), "reused": other_program.pid, "writing": live_python.pid, "own": os.getpid()}
        for which, pid in pids.items():
            (tmp_path / f".latest.tmp-{pid}").mkdir()
            (tmp_path / f".latest.tmp-{pid}" / "model.safetensors").write_text(which)
        (tmp_path / ".notes.tmp-abc").mkdir()  # not write_dir's name: not ours to touch
        write_dir(tmp_path / "best", {"info.json": "{}"})
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(
            [".notes.tmp-abc", "best", f".latest.tmp-{pids['writing']}", f".latest.tmp-{pids['own']}"]
        )
    finally:
        other_program.kill()
        live_python.kill()
        other_program.wait()
        live_python.wait()


def test_a_resume_removes_stale_temporaries_too(tmp_path):
    latest = tmp_path / "latest"
    latest.mkdir()
    torch.save(valid_state(), latest / checkpoint.STATE)
    stale = tmp_path / f".latest.tmp-{ended_pid()}"
    stale.mkdir()
    load_trainer_state(latest)
    assert not stale.exists()
    assert remove_stale_temporaries(tmp_path / "nowhere") == []


WRITER = """
import sys, time
from llm.model.checkpoint import write_dir
def slow(path):
    path.write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
write_dir(sys.argv[1], {"config.json": "{}", "model.safetensors": slow})
"""


def test_sigkill_inside_a_checkpoint_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "run" / "latest"
    write_dir(target, {"config.json": '{"old": true}'})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        writer.kill()  # SIGKILL: no handler runs, write_dir cannot clean up
    finally:
        writer.wait()
    stale = target.parent / f".latest.tmp-{writer.pid}"
    assert stale.is_dir() and json.loads((target / "config.json").read_text()) == {"old": True}
    write_dir(target, {"config.json": '{"new": true}'})
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest"]
    assert json.loads((target / "config.json").read_text()) == {"new": True}


# ----------------------------------------------------------------------------------------------------------
# Text the tokenizer spells byte by byte


CHINESE = "北京的故事：小猫很开心，它和小狗一起玩了一整天。"


def test_byte_fallback_share_tells_known_text_from_unknown_script(tok, story_file):
    english = story_file.read_text().split("\n\n")[:20]
    assert byte_fallback_share(tok, english) < 0.01
    assert byte_fallback_share(tok, [CHINESE]) > 0.9
    assert byte_fallback_share(tok, []) == 0.0


def test_the_task_summary_warns_when_the_data_is_mostly_byte_fallback(tmp_path, tok):
    path = tmp_path / "zh.csv"
    path.write_text("question,answer\n" + "".join(f"{CHINESE[:i]}?,{CHINESE}\n" for i in range(3, 9)))
    data = read_task_file(path)
    info = summary(data, encode_examples(data, tok, 512))
    assert info["byte_fallback_share"] > 0.8
    assert len(info["warnings"]) == 1 and "single bytes (byte fallback)" in info["warnings"][0]
    english = tmp_path / "en.csv"
    english.write_text("question,answer\nWhat did Tom have?,a ball\n")
    data = read_task_file(english)
    assert summary(data, encode_examples(data, tok, 512))["warnings"] == []
