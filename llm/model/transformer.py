"""A decoder-only transformer in the Llama family.

RMSNorm, rotary position embeddings, SwiGLU MLP, no biases, pre-norm, optional tied embeddings, and causal
multi-head attention through torch's scaled_dot_product_attention (flash kernels on a GPU). Shapes in the
comments use B = batch, T = sequence length, C = d_model, H = heads, D = head size, V = vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for stability under bf16 autocast, then cast back.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def llama3_frequencies(inv_freq: torch.Tensor, scaling: dict[str, float]) -> torch.Tensor:
    """Llama 3's rotary scaling of the frequencies (D/2,): a wavelength longer than the original context over
    low_freq_factor is slowed down by factor, one shorter than it over high_freq_factor is kept, and those between
    are blended smoothly, so that the near positions keep their resolution while the far ones reach further."""
    factor, original = scaling["factor"], scaling["original_context_length"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)  # 0 at the long end of the band, 1 at the short end
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    in_band = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(in_band, blended, scaled)


def rotary_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (context_length, D/2) for rotary position embeddings."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    if cfg.rope_scaling:
        inv_freq = llama3_frequencies(inv_freq, cfg.rope_scaling)
    angles = torch.outer(torch.arange(cfg.context_length).float(), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) of x (B, H, T, D) by position angles (T, D/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class KVCache:
    """Keys and values of the positions seen so far, preallocated for `length` positions (default: the context
    length). Generation sizes it to the prompt and the new tokens: a long-context model's whole context would be
    gigabytes of zeros per answer."""

    def __init__(
        self, cfg: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype, length: int | None = None
    ):
        assert length is None or 0 < length <= cfg.context_length, (length, cfg.context_length)
        shape = (batch_size, cfg.kv_heads, length or cfg.context_length, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0  # positions already stored; the next token sits at this position

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, Hkv, T, D) at self.length and return all keys/values so far (B, Hkv, length+T, D)."""
        start, end = self.length, self.length + k.size(2)
        assert end <= self.keys[layer].size(2), "KV cache overflow: the sequence exceeds the positions it was sized for"
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention written out, for inspection: the fused kernel computes the same output without ever
    holding the weights. q (B, H, T, D) at positions past..past+T-1; k, v (B, Hkv, past+T, D), where Hkv
    divides H (key/value heads shared by groups of query heads). Returns (output (B, H, T, D), weights
    (B, H, T, past+T)); no dropout, so it is for evaluation only."""
    T, S = q.size(2), k.size(2)
    if k.size(1) != q.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, S)
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)  # query i sees keys <= past+i
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (weights @ v.float()).type_as(q), weights


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        self.keep_weights = False  # set by llm.eval.inside: compute the attention weights explicitly and keep them
        self.weights: torch.Tensor | None = None  # (B, H, T, past+T) of the last forward, when keep_weights

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) -> (B, H, T, D); keys and values have Hkv <= H heads (grouped-query attention)
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.store(layer, k, v)  # (B, Hkv, past+T, D)
        dropout = self.dropout if self.training else 0.0
        # Grouped-query attention: each group of H/Hkv query heads shares one key/value head (enable_gqa: the
        # kernel reads the shared heads; no copies of keys and values per query head).
        gqa = self.n_kv_head != self.n_head
        if self.keep_weights:
            y, self.weights = attention_with_weights(q, k, v, past)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
        elif T == 1:  # decoding one token: it sees every key, so no mask (a mask would select a slower kernel)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa)
        else:
            # Query i (absolute position past+i) may see keys 0..past+i.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.w_down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual-scaled init (GPT-2): the projections that write into the residual stream get
        # std / sqrt(2 * n_layer), so the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.wo.weight") or name.endswith("mlp.w_down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward) in sequences of seq_len tokens (default: the context
        length), as in the PaLM paper: 6N + 12 L C T.

        N counts the weights a token is multiplied by: all but the embedding lookup, so the output
        projection (V x C) is in N whether or not it is tied to the embedding matrix. T is the length the
        batch really has: short fine-tuning rows attend over far fewer positions than a long context.
        """
        cfg = self.cfg
        n = self.num_params(non_embedding=True) + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.d_model * (seq_len or cfg.context_length)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V). With a cache, idx continues the cached sequence."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        assert start + T <= self.cfg.context_length, (
            f"sequence of {start + T} tokens exceeds the context length {self.cfg.context_length}"
        )
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.norm(x))


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not -1 (padding and masked prompts)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
