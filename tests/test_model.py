"""The transformer, its configs and its checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from llm.config import ConfigError, ModelConfig, TrainConfig, preset
from llm.model import checkpoint
from llm.model.transformer import KVCache, Transformer, causal_lm_loss


def random_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny", **{"vocab_size": 300, "context_length": 32, **overrides})).eval()


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "n_layer": 3}, {"dropout": 0.2}])
def test_changing_a_later_token_never_changes_earlier_logits(overrides):
    model = random_model(**overrides)
    torch.manual_seed(1)
    x = torch.randint(0, 300, (2, 32))
    base = model(x)
    for k in (0, 7, 31):
        changed = x.clone()
        changed[:, k] = (changed[:, k] + 1) % 300
        out = model(changed)
        torch.testing.assert_close(out[:, :k], base[:, :k], atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, k], base[:, k])  # the changed position itself does react


def test_kv_cache_forward_matches_full_forward():
    model = random_model()
    x = torch.randint(0, 300, (2, 32))
    full = model(x)
    cache = KVCache(model.cfg, 2, torch.device("cpu"), torch.float32)
    chunks = [model(x[:, :10], cache)]  # a prompt of several tokens, then one token at a time
    chunks += [model(x[:, t : t + 1], cache) for t in range(10, 25)]
    chunks.append(model(x[:, 25:], cache))  # and a chunk of several tokens on top of a filled cache
    assert cache.length == 32
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


def test_sequence_longer_than_context_is_refused():
    model = random_model()
    with pytest.raises(AssertionError, match="context length"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_loss_ignores_minus_one_targets():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    masked = targets.clone()
    masked[:, :2] = -1
    expected = torch.nn.functional.cross_entropy(logits[:, 2:].reshape(-1, 11), targets[:, 2:].reshape(-1))
    torch.testing.assert_close(causal_lm_loss(logits, masked), expected)
    # A uniform prediction costs ln(V) nats per token.
    assert causal_lm_loss(torch.zeros(1, 4, 11), targets[:1, :4]).item() == pytest.approx(math.log(11))


def test_param_count_counts_tied_weights_once():
    tied, untied = random_model(), random_model(tie_embeddings=False)
    assert untied.num_params() - tied.num_params() == 300 * 64
    assert tied.num_params(non_embedding=True) == untied.num_params(non_embedding=True) - 300 * 64


def test_flops_per_token_counts_the_output_projection_tied_or_not():
    tied, untied = random_model(), random_model(tie_embeddings=False)
    assert tied.flops_per_token() == untied.flops_per_token()  # the same matrix products either way
    attention = 12 * 2 * 64 * 32  # 12 L C T
    assert tied.flops_per_token() == 6 * (tied.num_params(non_embedding=True) + 300 * 64) + attention


def test_model_config_json_round_trip(tmp_path):
    cfg = ModelConfig(vocab_size=321, context_length=48, n_layer=3, n_head=2, d_model=32, tie_embeddings=False)
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.mlp_hidden == 128  # 8/3 * 32 rounded up to a multiple of 64


def test_train_config_json_round_trip():
    cfg = TrainConfig(max_steps=7, lr=5e-4, min_lr=1e-5, keep_best=True, extra={"dataset": "x.csv", "rank": 8})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig.from_dict({"lr": 1, "min_lr": 0}).lr == 1  # JSON integers are fine floats


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: ModelConfig(d_model=30, n_head=4), "d_model"),
        (lambda: ModelConfig(d_model=12, n_head=4), "head size"),
        (lambda: ModelConfig(n_layer=0), "n_layer"),
        (lambda: ModelConfig(dropout=1.0), "dropout"),
        (lambda: ModelConfig.from_dict({"n_layers": 2}), "n_layers"),
        (lambda: ModelConfig.from_dict({"n_layer": "2"}), "n_layer must be a number, got '2'"),
        (lambda: ModelConfig.from_dict({"tie_embeddings": 1}), "tie_embeddings must be of type bool, got 1"),
        (lambda: ModelConfig.from_dict([1, 2]), "expected a JSON object"),
        (lambda: TrainConfig.from_dict({"lr": True}), "lr must be a number, got True"),
        (lambda: TrainConfig(batch_size=0), "batch_size must be positive"),
        (lambda: TrainConfig(lr=1e-4, min_lr=1e-3), "min_lr"),
        (lambda: preset("huge"), "huge"),
    ],
)
def test_bad_config_names_the_parameter(make, names):
    with pytest.raises(ConfigError, match=names):
        make()


def test_bad_config_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        ModelConfig.load(path)


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, tok, tie):
    model = random_model(vocab_size=tok.vocab_size, tie_embeddings=tie)
    info = {"kind": "test", "note": "ü"}
    checkpoint.save_checkpoint(tmp_path / "ckpt", model, tok, info)
    loaded, loaded_tok, loaded_info = checkpoint.load_model(tmp_path / "ckpt")
    x = torch.randint(0, tok.vocab_size, (2, 32))
    assert torch.equal(loaded(x), model(x))
    assert loaded.cfg == model.cfg and loaded_info == info and loaded_tok.same_vocabulary(tok)
    assert not loaded.training
    if tie:
        assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_fp16_checkpoint_gives_close_logits(tmp_path, tok):
    model = random_model(vocab_size=tok.vocab_size)
    checkpoint.save_checkpoint(tmp_path / "half", model, tok, dtype=torch.float16)
    checkpoint.save_checkpoint(tmp_path / "full", model, tok)
    half_size = (tmp_path / "half" / checkpoint.WEIGHTS).stat().st_size
    assert half_size < 0.6 * (tmp_path / "full" / checkpoint.WEIGHTS).stat().st_size
    loaded, _, _ = checkpoint.load_model(tmp_path / "half")
    assert loaded.tok_emb.weight.dtype == torch.float32  # loaded back into the model's own dtype
    x = torch.randint(0, tok.vocab_size, (2, 32))
    expected = model(x)
    got = loaded(x)
    assert not torch.equal(got, expected)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_run_directory_resolves_to_best_then_latest(tmp_path, tok):
    model = random_model(vocab_size=tok.vocab_size)
    checkpoint.save_checkpoint(tmp_path / "run" / "latest", model, tok, {"which": "latest"})
    assert checkpoint.load_model(tmp_path / "run")[2] == {"which": "latest"}
    checkpoint.save_checkpoint(tmp_path / "run" / "best", model, tok, {"which": "best"})
    assert checkpoint.load_model(tmp_path / "run")[2] == {"which": "best"}


def test_crash_inside_write_dir_leaves_no_partial_target(tmp_path):
    def explode(path):
        path.write_bytes(b"half a file")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        checkpoint.write_dir(tmp_path / "ckpt", {"a.txt": "first", "b.bin": explode})
    assert list(tmp_path.iterdir()) == []


def test_crash_while_overwriting_keeps_the_previous_directory(tmp_path):
    checkpoint.write_dir(tmp_path / "ckpt", {"a.txt": "old"})

    def explode(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_dir(tmp_path / "ckpt", {"a.txt": "new", "b.bin": explode})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "old"
    checkpoint.write_dir(tmp_path / "ckpt", {"a.txt": "new"})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "new"


def test_crash_inside_save_file_leaves_no_partial_checkpoint(tmp_path, tok, monkeypatch):
    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save_checkpoint(tmp_path / "ckpt", random_model(vocab_size=tok.vocab_size), tok)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rename_still_loads_the_old_checkpoint(tmp_path, tok):
    """A crash between moving latest -> latest.old and moving the new one in leaves only latest.old."""
    model = random_model(vocab_size=tok.vocab_size)
    checkpoint.save_checkpoint(tmp_path / "run" / "latest", model, tok, {"step": 5})
    (tmp_path / "run" / "latest").rename(tmp_path / "run" / "latest.old")
    assert checkpoint.load_model(tmp_path / "run" / "latest")[2] == {"step": 5}


def edit_config(directory: Path, **changes) -> None:
    """Change config.json's fields (None: leave the field out)."""
    config = {**json.loads((directory / checkpoint.CONFIG).read_text()), **changes}
    (directory / checkpoint.CONFIG).write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / checkpoint.WEIGHTS).unlink(), "missing model.safetensors"),
        (lambda d: (d / "tokenizer.model").unlink(), "missing tokenizer.model"),
        (lambda d: (d / checkpoint.WEIGHTS).write_bytes(b"garbage"), "unreadable weights"),
        (lambda d: (d / "tokenizer.model").write_bytes(b"garbage"), "not a SentencePiece model"),
        (lambda d: edit_config(d, vocab_size=4096), "tokenizer has"),
        (lambda d: (d / checkpoint.CONFIG).write_text('{"n_layer": "2"}'), "config.json: n_layer must be a number"),
        (lambda d: edit_config(d, n_layer=3), "weights do not match"),
        (lambda d: edit_config(d, d_model=None), r"config.json: d_model missing; a model's config.json gives every"),
        (lambda d: shutil.rmtree(d), "no such model directory"),
    ],
)
def test_damaged_checkpoint_gives_a_clear_error(tmp_path, tok, damage, message):
    from llm.errors import LLMError

    model = random_model(vocab_size=tok.vocab_size, n_layer=2)
    directory = checkpoint.save_checkpoint(tmp_path / "ckpt", model, tok)
    damage(directory)
    with pytest.raises(LLMError, match=message):
        checkpoint.load_model(directory)
