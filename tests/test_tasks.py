"""Task datasets: reading each file type and format, column mapping, validation messages, encoding, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llm.data.chat import render
from llm.data.tasks import (
    TaskFileError,
    encode_examples,
    read_task_file,
    split_examples,
    summary,
)
from llm.errors import ConfigError

PAIR = [{"role": "user", "content": "What is big?"}, {"role": "assistant", "content": "small"}]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ----------------------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize(
    "prompt,response",
    [
        ("question", "answer"),
        ("Question", "Answer"),
        ("input", "output"),
        ("prompt", "completion"),
        ("instruction", "response"),
    ],
)
def test_pairs_detected_from_common_column_names(tmp_path, prompt, response):
    path = write(tmp_path, "t.csv", f"{prompt},{response}\nWhat is big?,small\n")
    data = read_task_file(path)
    assert data.format == "pairs"
    assert data.mapping == {"prompt": prompt, "response": response}
    assert data.examples[0].messages == PAIR
    assert data.examples[0].row == 1


def test_every_file_type_reads_the_same_rows(tmp_path):
    frame = pd.DataFrame({"question": ["What is big?", "What is hot?"], "answer": ["small", "cold"]})
    paths = [
        write(tmp_path, "t.csv", frame.to_csv(index=False)),
        write(tmp_path, "t.tsv", frame.to_csv(sep="\t", index=False)),
    ]
    paths.append(write(tmp_path, "t.json", frame.to_json(orient="records")))
    paths.append(write(tmp_path, "t.jsonl", frame.to_json(orient="records", lines=True)))
    frame.to_parquet(tmp_path / "t.parquet")
    paths.append(tmp_path / "t.parquet")
    read = [read_task_file(p) for p in paths]
    assert {d.format for d in read} == {"pairs"}
    assert all([e.messages for e in d.examples] == [e.messages for e in read[0].examples] for d in read)
    assert read[0].examples[1].messages[1] == {"role": "assistant", "content": "cold"}


def test_csv_keeps_cells_as_written(tmp_path):
    data = read_task_file(write(tmp_path, "t.csv", "question,answer\nWhat is 2+5?,007\nSay NA,NA\n"))
    assert [e.messages[1]["content"] for e in data.examples] == ["007", "NA"]


def test_mapping_names_other_columns_and_a_system_column(tmp_path):
    path = write(tmp_path, "t.csv", "word,opposite,persona\nbig,small,Be brief.\n")
    with pytest.raises(TaskFileError, match=r"cannot tell the format .*\['word', 'opposite', 'persona'\]"):
        read_task_file(path)
    data = read_task_file(path, mapping={"prompt": "word", "response": "opposite", "system": "persona"})
    assert data.format == "pairs"
    assert data.examples[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "big"},
        {"role": "assistant", "content": "small"},
    ]
    with pytest.raises(TaskFileError, match=r"t.csv: no column 'answer' \(for response\)"):
        read_task_file(path, mapping={"prompt": "word", "response": "answer"})


def test_alpaca_with_input_and_system(tmp_path):
    rows = [
        {"instruction": "Who are you?", "input": "", "output": "I am Pebble."},
        {
            "instruction": "Answer the question.",
            "input": "Who made you?",
            "output": "The studio.",
            "system": "Be kind.",
        },
    ]
    data = read_task_file(write(tmp_path, "t.json", json.dumps(rows)))
    assert data.format == "alpaca"
    assert data.examples[0].messages == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Pebble."},
    ]
    assert data.examples[1].messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Answer the question.\n\nWho made you?"},
        {"role": "assistant", "content": "The studio."},
    ]


def test_a_system_column_mapping_keeps_the_detected_format(tmp_path):
    rows = [{"instruction": "Add one.", "input": "2", "output": "3", "persona": "Be exact."}]
    data = read_task_file(write(tmp_path, "t.json", json.dumps(rows)), mapping={"system": "persona"})
    assert data.format == "alpaca"
    assert data.examples[0].messages[:2] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Add one.\n\n2"},
    ]


def test_messages_multi_turn_trains_on_every_assistant_turn(tmp_path, tok):
    turns = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Tom had a ball."},
        {"role": "user", "content": "A title?"},
        {"role": "assistant", "content": "The Ball"},
    ]
    data = read_task_file(write(tmp_path, "t.jsonl", jsonl([{"messages": turns}])))
    assert data.format == "messages" and data.examples[0].messages == turns
    ids, mask = encode_examples(data, tok, 64).items[0]
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    end = tok.special["<|end|>"]
    assert trained == tok.encode(" Tom had a ball.") + [end] + tok.encode(" The Ball") + [end]  # texts get a space


def test_sharegpt_from_value_and_a_column_named_conversations(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "Hi."},
            {"from": "human", "value": "a"},
            {"from": "gpt", "value": "b"},
        ]
    }
    data = read_task_file(write(tmp_path, "t.jsonl", jsonl([row])))
    assert data.format == "messages"
    assert [m["role"] for m in data.examples[0].messages] == ["system", "user", "assistant"]


def test_messages_from_parquet_and_from_json_text_in_csv(tmp_path):
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    pd.DataFrame({"messages": [turns]}).to_parquet(tmp_path / "t.parquet")
    assert read_task_file(tmp_path / "t.parquet").examples[0].messages == turns
    frame = pd.DataFrame({"messages": [json.dumps(turns)]})
    assert read_task_file(write(tmp_path, "t.csv", frame.to_csv(index=False))).examples[0].messages == turns


def test_unknown_roles_are_reported_with_their_row(tmp_path):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}]}
    data = read_task_file(write(tmp_path, "t.jsonl", jsonl([good, bad, good])))
    assert [e.row for e in data.examples] == [1, 3]
    (problem,) = data.problems
    assert str(problem) == (
        "row 2, column 'messages': unknown role (turn 2 has role 'narrator'; expected user/assistant/system/tool "
        "(or ShareGPT's human/gpt/function_call/observation))"
    )


def test_format_can_be_forced_and_then_needs_its_columns(tmp_path):
    path = write(tmp_path, "t.csv", "question,answer\nWhat is big?,small\n")
    with pytest.raises(TaskFileError, match=r"t.csv: missing column for the alpaca format's instruction"):
        read_task_file(path, format="alpaca")
    with pytest.raises(TaskFileError, match="unknown task format 'chat'"):
        read_task_file(path, format="chat")


# ----------------------------------------------------------------------------------------------------------
# Validation messages


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("t.csv", "", r"t.csv: the file is empty"),
        ("t.csv", "question,answer\n", r"t.csv: no rows \(only the columns \['question', 'answer'\]\)"),
        ("t.json", "[]", r"t.json: no rows"),
        ("t.jsonl", "\n\n", r"t.jsonl: no rows"),
        ("t.csv", 'question,answer\n"big,small\n', r"t.csv: malformed CSV"),
        ("t.json", '{"question": "a"}', r"t.json: expected a JSON array of objects, got an object"),
        ("t.json", '[{"question": "a"},\n "b"]', r"t.json, row 2: expected a JSON object, got str"),
        ("t.json", '[{"question": "a",\n  "answer": }]', r"t.json, line 2, column 13: malformed JSON"),
        (
            "t.jsonl",
            '{"question": "a", "answer": "b"}\n\n{"question": "a" "answer": "b"}\n',
            r"t.jsonl, line 3, column 18: malformed JSON",
        ),
        (
            "t.jsonl",
            '{"question": "a", "answer": "b"}\n[1, 2]\n',
            r"t.jsonl, line 2: expected a JSON object, got a list",
        ),
        ("t.txt", "question,answer\n", r"t.txt: unsupported file type '.txt'"),
        ("t.xlsx", b"PK\x03\x04", r"t.xlsx: unsupported file type '.xlsx'; .* Save as > CSV \(UTF-8\)"),
    ],
)
def test_unusable_files_are_refused_with_the_place(tmp_path, name, content, message):
    with pytest.raises(TaskFileError, match=message):
        read_task_file(write(tmp_path, name, content))


def test_missing_file(tmp_path):
    with pytest.raises(TaskFileError, match="nope.csv: no such file"):
        read_task_file(tmp_path / "nope.csv")


def test_not_utf8_gives_byte_offset_and_line(tmp_path):
    content = b"question,answer\nWhat is big?,small\n" + b"caf\xe9,x\n"
    with pytest.raises(TaskFileError, match=r"t.csv: not UTF-8 text \(invalid byte 0xe9 at byte offset 38, line 3\)"):
        read_task_file(write(tmp_path, "t.csv", content))
    bom = write(tmp_path, "bom.csv", "\ufeffquestion,answer\nWhat is big?,small\n")
    assert read_task_file(bom).columns == ["question", "answer"]


def test_bad_rows_are_dropped_with_row_and_column(tmp_path):
    rows = [
        {"question": "What is big?", "answer": "small"},
        {"question": "  ", "answer": "x"},
        {"question": "What is hot?", "answer": None},
        {"question": "What is 2+2?", "answer": 4},
        {"question": ["a"], "answer": "b"},
    ]
    data = read_task_file(write(tmp_path, "t.json", json.dumps(rows)))
    assert [e.row for e in data.examples] == [1]
    assert [str(p) for p in data.problems] == [
        "row 2, column 'question': empty prompt",
        "row 3, column 'answer': empty response",
        "row 4, column 'answer': wrong type (response should be text, got a number (4))",
        "row 5, column 'question': wrong type (prompt should be text, got a list)",
    ]


def test_bad_conversations_are_dropped_with_the_turn(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": "a"}]},
        {"messages": [{"role": "user", "content": "a"}, {"speaker": "gpt", "text": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
        {"messages": []},
    ]
    data = read_task_file(write(tmp_path, "t.jsonl", jsonl(rows)))
    assert [str(p) for p in data.problems] == [
        "row 2, column 'messages': wrong type (expected a list of turns, got text ('not a list'))",
        "row 3, column 'messages': no assistant turn (nothing to learn from this row)",
        "row 4, column 'messages': malformed turn (turn 2 needs role/content or from/value keys)",
        "row 5, column 'messages': empty turn 2 content",
        "row 6, column 'messages': empty conversation",
    ]


def test_a_file_with_no_usable_row_is_refused_listing_rows(tmp_path):
    path = write(tmp_path, "t.csv", "question,answer\n,small\nWhat is hot?,\n")
    with pytest.raises(TaskFileError, match=r"t.csv: no usable rows, all 2 were dropped: row 1, column 'question'"):
        read_task_file(path)


def test_rows_longer_than_the_context_are_truncated_or_dropped_and_counted(tmp_path, tok):
    long_answer = " ".join(["Tom had a ball."] * 40)
    path = write(tmp_path, "t.csv", f"question,answer\nWhat is big?,small\nTell a story.,{long_answer}\n")
    data = read_task_file(path)
    cut = encode_examples(data, tok, 32, overflow="truncate")
    assert cut.rows == [1, 2] and cut.truncated == [2]
    assert len(cut.items[1][0]) == 33  # context + 1: the last id is only a target
    texts = len(tok.encode(" Tell a story.")) + len(tok.encode(" " + long_answer))
    assert cut.lengths[1] == texts + 5  # eos, <|user|>, <|end|>, <|assistant|>, <|end|>
    dropped = encode_examples(data, tok, 32, overflow="drop")
    assert dropped.rows == [1]
    assert str(dropped.dropped[0]) == f"row 2: too long ({cut.lengths[1]} tokens; the context holds 32)"
    info = summary(data, dropped)
    assert (info["kept"], info["dropped"], info["drop_reasons"]) == (1, 1, {"too long": 1})
    assert summary(data, cut)["truncated"] == 1
    with pytest.raises(ConfigError, match="overflow must be one of"):
        encode_examples(data, tok, 32, overflow="wrap")


def test_a_prompt_that_fills_the_context_is_cut_from_the_start_so_the_answer_survives(tmp_path, tok):
    """Cutting the end would leave nothing of the answer: the row keeps the end of its prompt and the whole
    answer with its <|end|>, as generation sees a long prompt (its last context_length tokens)."""
    story = "Tom had a ball. " * 40
    path = write(tmp_path, "t.csv", f"question,answer\n{story},yes\nWhat is big?,{story}\n{story},{story}\n")
    cut = encode_examples(read_task_file(path), tok, 32)
    assert cut.rows == [1, 2] and cut.truncated == [1, 2] and cut.cut_start == [1], "row 1 lost its start"
    ids, mask = cut.items[0]
    answer = tok.encode(" yes") + [tok.special["<|end|>"]]
    assert len(ids) == 33 and ids[-len(answer) :] == answer and ids[-len(answer) - 1] == tok.special["<|assistant|>"]
    assert [i for i, m in zip(ids, mask, strict=True) if m] == answer  # the whole answer is trained, no prompt
    question = [tok.eos_id, tok.special["<|user|>"], *tok.encode(" What is big?")]
    assert cut.items[1][0][: len(question)] == question  # a long answer: the end is cut, as before
    assert [str(p) for p in cut.dropped] == [
        f"row 3: too long (the prompt fills the context of 32 tokens, and the answer alone takes "
        f"{len(tok.encode(' ' + story.strip())) + 2})"
    ]


# ----------------------------------------------------------------------------------------------------------
# Splits and summaries


def numbered(tmp_path: Path, n: int) -> Path:
    return write(tmp_path, "t.csv", "question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(n)))


def test_split_is_seeded_disjoint_and_keeps_file_order(tmp_path):
    data = read_task_file(numbered(tmp_path, 50))
    train, val = split_examples(data, 0.2, seed=3)
    again, _ = split_examples(data, 0.2, seed=3)
    other, _ = split_examples(data, 0.2, seed=4)
    rows = lambda d: [e.row for e in d.examples]  # noqa: E731
    assert len(rows(val)) == 10 and len(rows(train)) == 40
    assert sorted(rows(train) + rows(val)) == list(range(1, 51))
    assert rows(train) == sorted(rows(train)) and rows(train) == rows(again) and rows(train) != rows(other)
    assert split_examples(data, 0.0, 3)[1].examples == []
    with pytest.raises(ConfigError, match="val_fraction"):
        split_examples(data, 1.0, 3)


def test_summary_and_content_hash(tmp_path, tok):
    path = write(tmp_path, "t.csv", "question,answer\nWhat is big?,small\n,x\nWhat is hot?,cold\n")
    data = read_task_file(path)
    info = summary(data, encode_examples(data, tok, 64))
    assert (info["rows"], info["kept"], info["dropped"]) == (3, 2, 1)
    assert info["drop_reasons"] == {"empty prompt": 1}
    assert info["problems"] == ["row 2, column 'question': empty prompt"]
    assert info["tokens"]["min"] <= info["tokens"]["median"] <= info["tokens"]["max"]
    assert info["tokens"]["trained"] == len(tok.encode(" small")) + len(tok.encode(" cold")) + 2
    path.write_text(path.read_text().replace("cold", "cool"))
    assert read_task_file(path).content_hash != data.content_hash


def test_the_sample_datasets_read_cleanly():
    samples = Path(__file__).resolve().parent.parent / "datasets" / "samples"
    formats = {name: read_task_file(samples / name) for name in ("identity.json", "opposites.csv", "stories.jsonl")}
    assert {n: d.format for n, d in formats.items()} == {
        "identity.json": "alpaca",
        "opposites.csv": "pairs",
        "stories.jsonl": "messages",
    }
    assert all(not d.problems for d in formats.values())
    assert 300 <= len(formats["opposites.csv"].examples) <= 600
    assert any(len(e.messages) > 2 for e in formats["stories.jsonl"].examples)


def glaive_rows(n: int) -> list[dict]:
    """ShareGPT tool-use rows as glaive writes them: human, function_call, observation, gpt, and a tools column."""
    tools = json.dumps([{"name": "get_weather", "parameters": {"city": {"type": "string"}}}])
    rows = []
    for i in range(n):
        call = json.dumps({"name": "get_weather", "arguments": {"city": f"Town{i}"}})
        turns = [
            {"from": "human", "value": f"What is the weather in Town{i}?"},
            {"from": "function_call", "value": call},
            {"from": "observation", "value": json.dumps({"temperature": 20 + i % 10})},
            {"from": "gpt", "value": f"It is {20 + i % 10} degrees in Town{i}."},
        ]
        rows.append({"conversations": turns, "tools": tools if i % 3 else "[]"})
    return rows


def test_tool_use_conversations_keep_their_rows_and_train_on_calls_and_answers(tmp_path, tok):
    path = tmp_path / "glaive.jsonl"
    rows = glaive_rows(40) + [{"conversations": [{"from": "robot", "value": "x"}], "tools": "[]"}]  # one bad row
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_task_file(path)
    assert len(data.examples) == 40 and [str(p) for p in data.problems] == [
        "row 41, column 'conversations': unknown role (turn 1 has role 'robot'; expected user/assistant/system/tool "
        "(or ShareGPT's human/gpt/function_call/observation))"
    ], "every row but the bad one is kept, and the bad one is listed"
    first = data.examples[1].messages
    assert [m["role"] for m in first] == ["system", "user", "assistant", "tool", "assistant"]
    assert first[0]["content"].startswith("Tools you can call: ") and "get_weather" in first[0]["content"]
    assert [m["role"] for m in data.examples[0].messages][0] == "user", "no tools on offer: no system turn"
    ids, mask = render(tok, first)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert '"get_weather"' in trained and "degrees in Town1" in trained, "the call and the answer are learnt"
    assert "temperature" not in trained and "Tool result:" in tok.decode(ids), "the tool's result is read, not learnt"


def test_openai_tool_calls_are_the_assistant_turn(tmp_path):
    calls = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    messages = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "It is 3."},
    ]
    path = tmp_path / "openai.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    (example,) = read_task_file(path).examples
    assert [m["role"] for m in example.messages] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(example.messages[1]["content"]) == calls


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_csv_separator_is_the_one_that_splits_the_header(tmp_path, sep):
    # A spreadsheet's export where "," is the decimal mark uses ";"; commas in cells stay in the cells.
    text = f"prompt{sep}response\r\nPrice of 2,5 kg?{sep}3,75 €\r\nSay hi{sep}hi, you\r\n"
    data = read_task_file(write(tmp_path, "t.csv", "\ufeff" + text))
    assert [e.messages[1]["content"] for e in data.examples] == ["3,75 €", "hi, you"]
    comma = read_task_file(write(tmp_path, "c.csv", 'prompt,response\n"a;b",c\n'))
    assert comma.examples[0].messages[0]["content"] == "a;b"


def test_header_names_with_spaces_around_them_are_found(tmp_path):
    data = read_task_file(write(tmp_path, "t.csv", " Question , Answer \nUp?,down\n"))
    assert data.mapping == {"prompt": " Question ", "response": " Answer "}
    assert data.examples[0].messages[1]["content"] == "down"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("t.csv", "question,answer\nUp?,down\nSay a, b,c\n", r"t.csv, line 3: 3 cells where the header has 2 \(a cell"),
        ("t.csv", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n', r"rename it to \.jsonl"),
        ("t.csv", '[{"question": "a", "answer": "b"}]', r"t.csv: this is JSON, not a table: rename it to \.json "),
        ("t.json", "question,answer\nUp?,down\n", r"t.json: this is a table .*'question,answer'.*rename it to \.csv"),
        ("t.jsonl", "question;answer\nUp?;down\n", r"t.jsonl: this is a table .* rename it to \.csv"),
    ],
)
def test_a_file_in_another_shape_than_its_name_says_is_explained(tmp_path, name, content, message):
    with pytest.raises(TaskFileError, match=message):
        read_task_file(write(tmp_path, name, content))


def test_a_split_of_the_whole_files_encoding_equals_encoding_the_split(tmp_path, tok):
    """What lets a caller encode a file once and split it for any held-out share and seed (the studio's plan)."""
    from llm.data.tasks import split_examples

    story = "Tom had a ball. " * 40
    rows = "".join(f"What is {i}?,{story if i % 3 == 0 else i}\n" for i in range(30))
    data = read_task_file(write(tmp_path, "t.csv", "question,answer\n" + rows))
    whole = encode_examples(data, tok, 32)
    for share, seed in ((0.1, 1), (0.3, 7)):
        for part in split_examples(data, share, seed):
            assert whole.select(part.examples) == encode_examples(part, tok, 32)
