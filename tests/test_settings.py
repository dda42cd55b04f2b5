"""Settings travel as data: CLI flags generated from the config fields, one error model, each task file
read and encoded once per command, one held-out split and one chat stop rule."""

from __future__ import annotations

import dataclasses

import pytest
from test_finetune import favourites_csv
from test_generate import ScriptedModel

from llm.cli import main
from llm.cli.flags import cli_fields, flag_name
from llm.cli.parser import build_parser
from llm.config import FinetuneConfig, ModelConfig, PreferConfig, PretrainConfig, SamplingConfig, TrainConfig
from llm.data import tasks
from llm.data.chat import stop_ids, user_messages
from llm.errors import ConfigError, LLMError
from llm.eval import tasks as task_eval
from llm.model.generate import stream_chat
from llm.train import finetune


def parser_flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {s for action in sub._actions for s in action.option_strings}


@pytest.mark.parametrize(
    "command, configs, skipped",
    [
        ("finetune", [FinetuneConfig], set()),
        ("prefer", [PreferConfig], set()),
        ("pretrain", [PretrainConfig], set()),
        ("pretrain", [TrainConfig, ModelConfig], {"vocab_size"}),
        ("generate", [SamplingConfig], set()),
    ],
)
def test_every_config_field_is_a_flag(command, configs, skipped):
    flags = parser_flags(command)
    for cls in configs:
        for f in cli_fields(cls):
            if f.name not in skipped:
                assert flag_name(f) in flags, (command, f.name)


def test_flags_fill_the_config_and_defaults_stay_the_dataclass_defaults(tmp_path):
    args = build_parser().parse_args(
        ["finetune", "--out", "x", "--data", "d.csv", "--lr", "0.002", "--probe", "a", "b", "--no-merge"]
    )
    from llm.cli.flags import config_from_args

    cfg = config_from_args(FinetuneConfig, args)
    assert (cfg.lr, cfg.probes, cfg.merge, cfg.data) == (0.002, ["a", "b"], False, "d.csv")
    untouched = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"lr", "probes", "merge", "data"}
    assert all(getattr(cfg, name) == getattr(FinetuneConfig(), name) for name in untouched)
    sampling = config_from_args(SamplingConfig, build_parser().parse_args(["generate"]))
    assert sampling == SamplingConfig(), "generate's defaults are SamplingConfig's (top-p included)"


def test_a_config_file_is_checked_like_any_config(tmp_path):
    path = tmp_path / "finetune.json"
    path.write_text('{"lr": "fast"}')
    with pytest.raises(ConfigError, match="lr must be a number or null"):
        FinetuneConfig.load(path)
    path.write_text('{"probes": "one prompt"}')
    with pytest.raises(ConfigError, match="probes must be of type list"):
        FinetuneConfig.load(path)
    path.write_text('{"mapping": {"prompt": 3}}')
    with pytest.raises(ConfigError, match="mapping"):
        FinetuneConfig.load(path)


def test_errors_carry_their_field_and_each_front_end_words_it(tmp_path, capsys, tiny_model_dir):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(batch_size=0)
    assert caught.value.field == "batch_size" and caught.value.kind == "config"
    assert caught.value.worded("Batch size") == "Batch size must be positive, got 0"
    data = favourites_csv(tmp_path / "f.csv")
    args = ["finetune", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "r")]
    assert main([*args, "--lora-rank", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --lora-rank must be positive, got 0"
    assert main([*args, "--probe-tokens", "-1"]) == 2 and "--probe-tokens" in capsys.readouterr().err


def test_a_bug_is_not_a_user_error(monkeypatch, tmp_path, tiny_model_dir):
    """A bare ValueError inside the library keeps its traceback: it is a bug, not bad input."""

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(finetune, "prepare", broken)
    data = favourites_csv(tmp_path / "f.csv")
    with pytest.raises(ValueError, match="a bug"):
        main(["finetune", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "r")])
    assert issubclass(ConfigError, LLMError) and not issubclass(LLMError, ValueError)


def test_a_finetune_command_reads_and_encodes_the_task_file_once(tmp_path, tiny_model_dir, monkeypatch, capsys):
    data = favourites_csv(tmp_path / "f.csv")
    reads, encoded_rows = [], []
    read, encode = tasks.read_task_file, tasks.encode_examples

    def counting_read(*args, **kwargs):
        reads.append(args[0])
        return read(*args, **kwargs)

    def counting_encode(task_data, *args, **kwargs):
        encoded_rows.extend(e.row for e in task_data.examples)
        return encode(task_data, *args, **kwargs)

    monkeypatch.setattr(finetune, "read_task_file", counting_read)
    monkeypatch.setattr(finetune, "encode_examples", counting_encode)
    monkeypatch.setattr(tasks, "read_task_file", counting_read)
    monkeypatch.setattr(tasks, "encode_examples", counting_encode)
    args = ["finetune", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "r")]
    assert main([*args, "--max-steps", "1"]) == 0
    assert reads == [str(data)] and sorted(encoded_rows) == list(range(1, 49)), "each row encoded once"
    assert "48 rows, 48 kept" in capsys.readouterr().out


def test_one_held_out_split_with_the_finetune_defaults(tmp_path):
    data = tasks.read_task_file(favourites_csv(tmp_path / "f.csv"))
    defaults = FinetuneConfig()
    assert tasks.split_examples(data) == tasks.split_examples(data, defaults.val_fraction, defaults.seed)


def test_one_chat_stop_rule_for_chat_compare_and_scoring(tok):
    """An answer ends at <|end|> or at <eos>, wherever it is generated."""
    words = tok.encode(" Tom")
    for stop in stop_ids(tok):
        model = ScriptedModel([*words, stop, *tok.encode(" never")], tok.vocab_size)
        streamed = "".join(stream_chat(model, tok, user_messages("Who?"), SamplingConfig(20, temperature=0)))
        model.calls = 0
        scored = task_eval.answer(model, tok, user_messages("Who?"), SamplingConfig(20, temperature=0))
        assert streamed.strip() == scored == "Tom"
