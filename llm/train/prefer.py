"""Preference tuning by Direct Preference Optimization (DPO, Rafailov et al. 2023), through the one training loop.

For a prompt x with a chosen answer c and a rejected answer r, let pi(a) be the tuned model's summed
log-probability of answer a's tokens (the answer and its <|end|>, after the chat template's prompt) and ref(a)
the same under a frozen reference model (the model the run starts from). DPO minimises

    L = -log sigmoid(beta * ((pi(c) - ref(c)) - (pi(r) - ref(r))))

averaged over the pairs: it raises the chosen answer's likelihood relative to the rejected one, measured
against the reference, with no reward model and no sampling. beta * (pi(a) - ref(a)) is the answer's implicit
reward; the reward margin is the bracket times beta, and reward accuracy the share of pairs where it is > 0.
With sft_weight > 0 (the default, 1) the mean next-token loss on the chosen answers is added (DPO + NLL, as in
Pang et al. 2024): pure DPO (sft_weight 0) only moves the two answers' likelihoods apart, and a model that never
learned to answer in the chat format (the shipped base) then drifts into degenerate text ("and and and ...")
while its reward accuracy reaches 100% (datasets/README.md).

With LoRA (the default) the reference is the same model with its adapters switched off (llm.model.lora.disabled),
so no second copy of the weights is held; full tuning keeps a frozen copy. Checkpoints, resume, metrics and
info.json are the trainer's and fine-tuning's (llm.train.finetune): a LoRA checkpoint stores the adapter only.

    PreferConfig -> prepare() (read pairs once, split, encode) -> prefer() -> PairBatches + DPOObjective
                 -> trainer.train (loss_fn = the DPO loss; on_eval = reward margin and accuracy on held-out pairs)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llm.config import ModelConfig, PreferConfig, TrainConfig
from llm.data.batches import PairBatches
from llm.data.preferences import EncodedPairs, PreferenceData, encode_pairs, read_preference_file
from llm.data.tasks import split_examples
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError, TaskFileError
from llm.eval.preferences import reward_margins, reward_stats, sequence_logps
from llm.model import checkpoint, lora
from llm.model.transformer import Transformer, causal_lm_loss
from llm.run import RunDir, is_main_process
from llm.train import tuning
from llm.train.trainer import TrainHooks, TrainResult, train

KIND = "preferred"  # info.json "kind" of a preference-tuned checkpoint


# ----------------------------------------------------------------------------------------------------------
# The loss


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean DPO loss, margins (B,)) from summed answer log-probs, each (B,). margin = beta * ((pi_c - ref_c)
    - (pi_r - ref_r)), the chosen answer's implicit reward minus the rejected one's."""
    margins = reward_margins(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    return -F.logsigmoid(margins).mean(), margins


class DPOObjective:
    """The trainer's loss_fn(model, x, y) for pair batches: x (2B, T) holds B chosen sequences then their B
    rejected ones (PairBatches), y the answer targets (-1 elsewhere). reference: a frozen model, or None for
    the model itself with its LoRA adapters switched off."""

    def __init__(self, beta: float, sft_weight: float = 0.0, reference: Transformer | None = None):
        self.beta, self.sft_weight, self.reference = beta, sft_weight, reference
        if reference is not None:
            reference.eval().requires_grad_(False)

    @torch.no_grad()
    def reference_logps(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            with lora.disabled(model):
                return sequence_logps(model(x), y)
        self.reference.to(x.device)  # a no-op once there; the trainer moves only the tuned model
        return sequence_logps(self.reference(x), y)

    def margins_and_loss(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.size(0) % 2 == 0, "a pair batch holds chosen then rejected sequences"
        B = x.size(0) // 2
        logits = model(x)  # (2B, T, V)
        policy = sequence_logps(logits, y)
        reference = self.reference_logps(model, x, y)
        loss, margins = dpo_loss(policy[:B], policy[B:], reference[:B], reference[B:], self.beta)
        if self.sft_weight:
            loss = loss + self.sft_weight * causal_lm_loss(logits[:B], y[:B])
        return margins, loss

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.margins_and_loss(model, x, y)[1]

    @torch.no_grad()
    def reward_stats(self, model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]):
        """Reward margin (mean) and reward accuracy (share of margins > 0) over pair batches."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        margins = torch.cat([self.margins_and_loss(model, x.to(device), y.to(device))[0].float() for x, y in batches])
        model.train(was_training)
        return reward_stats(margins)


# ----------------------------------------------------------------------------------------------------------
# A run


@dataclass
class Prepared:
    """A preference run's inputs, read, split and encoded once, and checked before anything is written."""

    cfg: PreferConfig
    base_dir: Path
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    data: PreferenceData
    train: EncodedPairs
    val: EncodedPairs
    train_cfg: TrainConfig
    steps_per_epoch: int


def prepare(cfg: PreferConfig, data: PreferenceData | None = None) -> Prepared:
    """Read (unless data is given), split and encode the pairs for the base model, and derive the training
    settings (as fine-tuning does: llm.train.tuning.training_settings). Writes nothing."""
    if not cfg.data and data is None:
        raise ConfigError("is required: the preference file to tune on", field="data")
    base_dir, model_cfg, tokenizer = tuning.open_base(cfg)
    data = data if data is not None else read_preference_file(cfg.data)
    train_data, val_data = split_examples(data, cfg.val_fraction, cfg.seed)
    T = model_cfg.context_length
    train_enc = encode_pairs(train_data, tokenizer, T, cfg.overflow)
    val_enc = encode_pairs(val_data, tokenizer, T, cfg.overflow)
    if not train_enc.items:
        raise TaskFileError(f"{data.source}: no training pair is left after dropping pairs longer than the context")
    longest = max(len(side[0]) for pair in train_enc.items for side in pair)
    train_cfg, steps_per_epoch = tuning.training_settings(cfg, len(train_enc.items), len(val_enc.items), longest)
    return Prepared(cfg, base_dir, model_cfg, tokenizer, data, train_enc, val_enc, train_cfg, steps_per_epoch)


def summary(prep: Prepared) -> dict[str, Any]:
    """What the run trains on: pairs kept, dropped (with reasons) and truncated, train and held-out counts."""
    data, train, val = prep.data, prep.train, prep.val
    dropped = sorted(data.problems + train.dropped + val.dropped, key=lambda p: p.row)
    return {
        **tuning.source_info(data),
        "form": data.form,
        "dropped": len(dropped),
        "problems": [str(p) for p in dropped],
        "truncated": len(train.truncated) + len(val.truncated),
        "train_pairs": len(train.items),
        "val_pairs": len(val.items),
        "validation": f"{prep.cfg.val_fraction:.0%} of the pairs, seed {prep.cfg.seed}",
    }


def prefer(job: PreferConfig | Prepared, out_dir: str | Path, metrics_path: str | Path | None = None) -> TrainResult:
    """Start a preference-tuning run in out_dir (latest/, best/ and the metrics file). Everything is checked
    before the first file is written."""
    prep = job if isinstance(job, Prepared) else prepare(job)
    RunDir(out_dir).check_new()
    model = tuning.start_model(prep.cfg, prep.base_dir, prep.tokenizer)
    reference = copy.deepcopy(model) if prep.cfg.method == "full" else None  # LoRA: the model, adapters off
    return _train(prep, model, reference, prep.train_cfg, Path(out_dir), metrics_path, resume=False)


def resume(
    out_dir: str | Path, max_steps: int | None = None, device: str | None = None, metrics_path: str | Path | None = None
) -> TrainResult:
    """Continue the preference run in out_dir from its latest checkpoint with its own saved settings (RunDir's
    resume rule: only the step budget and the device may change). A changed preference file is refused."""
    run = RunDir(out_dir)
    saved, cfg = tuning.resumed_settings(run, KIND, PreferConfig, device)
    prep = prepare(cfg)
    tuning.check_same_data(cfg.data, saved, prep.data.content_hash)
    train_cfg = TrainConfig.from_dict(run.resumed_train_settings(max_steps, device))
    model = tuning.resumed_model(run, cfg.method)
    reference = checkpoint.load_model(prep.base_dir)[0] if cfg.method == "full" else None
    return _train(prep, model, reference, train_cfg, run.path, metrics_path, resume=True)


def _train(
    prep: Prepared,
    model: Transformer,
    reference: Transformer | None,
    train_cfg: TrainConfig,
    out_dir: Path,
    metrics_path,
    resume: bool,
) -> TrainResult:
    cfg, tokenizer = prep.cfg, prep.tokenizer
    adapter_state = tuning.adapter_saver(model, cfg, prep.base_dir, tokenizer)
    data = str(Path(prep.data.source).resolve())
    info = tuning.run_info(KIND, cfg, prep.base_dir, tokenizer, dataset=summary(prep), data=data)
    batches = PairBatches(
        prep.train, prep.val, train_cfg.batch_size, train_cfg.grad_accum, cfg.seed, tokenizer.pad_id, cfg.max_eval_rows
    )
    objective = DPOObjective(cfg.beta, cfg.sft_weight, reference)
    probes = tuning.make_probe_logger(tokenizer, cfg.probes, cfg.probe_tokens) if cfg.probes else None

    def on_eval(model: Transformer, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        """Reward margin and accuracy on the held-out pairs (and probe answers) at each evaluation."""
        held_out = batches.eval_batches("val", train_cfg.eval_batches)
        stats = objective.reward_stats(model, held_out) if batches.val else {}
        return {**{k: round(v, 5) for k, v in stats.items()}, **(probes(model, step, metrics) if probes else {})}

    hooks = TrainHooks(on_eval=on_eval, adapter_state=adapter_state, loss_fn=objective)
    result = train(
        model, tokenizer, batches, train_cfg, out_dir=out_dir, metrics_path=metrics_path, resume=resume, info=info,
        hooks=hooks,
    )  # fmt: skip
    if cfg.merge and is_main_process():  # under torchrun, one process writes
        tuning.merge_best(out_dir)
    return result
