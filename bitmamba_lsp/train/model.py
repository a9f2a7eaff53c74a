"""PyTorch BitMamba-2 with quantization-aware training (QAT), matching the C++ engine's math.

The math is ``docs/formats.md`` section 1 (the C++ engine implements the same thing token by token):

* ``rms_norm(x, w) = x * w / sqrt(mean(x^2) + 1e-6)``
* ``bitlinear(x, W, norm_w)``: ``xn = rms_norm(x, norm_w)``; per token ``sx = 127 / (max|xn| + 1e-5)``,
  ``xq = clamp(round_half_away_from_zero(xn * sx), -128, 127)``; ternary weights
  ``q = clamp(rint(W * s), -1, 1)`` with ``s = 1 / mean|W|`` (float32, one per matrix);
  ``out = (q @ xq) / (sx * s)``.
* per layer ``h += block(h)``: ``p = bitlinear(h, in_proj)`` split into ``z | x | B | C | dt``;
  causal depthwise conv (width 4) on ``x``, ``silu``; per head ``dt = softplus(dt + dt_bias)``,
  ``decay = exp(-exp(A_log) * dt)``; per channel ``s = s * decay + xa * B * dt``,
  ``y = (s * C + xa * D) * silu(z)``; ``block = bitlinear(y, out_proj)``.
* ``logits = bitlinear(rms_norm(h, norm_f), lm_head, lm_head_norm)``.

Training uses the straight-through estimator for both roundings (weights and activations) and a
chunked (parallel) form of the scan, :func:`chunked_scan`; :func:`sequential_scan` is the plain
recurrence it is tested against. ``BitMamba2.forward(ids, exact=True)`` (used in eval) computes the
bit-linear layers the way the engine does: integer products scaled by ``1 / (sx * s)``.

The weight quantizer (:func:`ternary_quantize`) is the single source of truth for the exported
``(q, scale)`` pairs, so what the QAT forward used is exactly what ends up in the ``.bin`` file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config

NORM_EPS = 1e-6
ACT_EPS = 1e-5
WEIGHT_EPS = 1e-8


@dataclass(frozen=True)
class ModelConfig(BitMamba2Config):
    """The engine's BitMamba-2 shape (same fields and derived sizes), as the trainer records it."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.d_conv != 4 or self.expand != 2:
            raise ValueError("the engine supports d_conv=4 and expand=2 only")
        if self.d_inner % self.n_heads:
            raise ValueError(f"d_inner={self.d_inner} is not divisible by n_heads={self.n_heads}")


# ----------------------------------------------------------------------------------- quantizers


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero (C's ``roundf``); ``torch.round`` rounds half to even."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ternary_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization: ``(q, s)`` with ``q = clamp(rint(w * s), -1, 1)``, ``s = 1/mean|w|``.

    Computed in the weight's dtype (float32 in training), no gradient. ``rint`` is half-to-even,
    like ``np.rint`` in ``bitmamba_bin.quantize_ternary``. The exporter writes exactly these values.
    """
    w = w.detach()
    s = 1.0 / w.abs().mean().clamp_min(WEIGHT_EPS)
    q = torch.clamp(torch.round(w * s), -1, 1)
    return q, s


def activation_quantize(xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization: ``(xq, sx)`` with ``sx = 127 / (max|xn| + 1e-5)``."""
    xn = xn.detach()
    sx = 127.0 / (xn.abs().amax(-1, keepdim=True) + ACT_EPS)
    xq = torch.clamp(round_half_away(xn * sx), -128, 127)
    return xq, sx


class LoRA(nn.Module):
    """A low-rank float correction of a BitLinear, as bitmamba.cpp applies its adapters
    (``docs/formats.md``, LoRA adapters): ``(alpha / rank) * B (A xn)``, ``xn`` the BitLinear's input
    after its RMSNorm (before the int8 quantization). A [rank, in] starts random (PEFT's Kaiming
    uniform), B [out, rank] at zero: a new adapter changes nothing until it is trained."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.rank, self.alpha = rank, float(alpha)
        # float32 alpha / rank, the factor the engine (and bitmamba.cpp) computes from the file
        self.scale = float(torch.tensor(self.alpha, dtype=torch.float32) / rank)

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(xn, self.A), self.B) * self.scale


class BitLinear(nn.Module):
    """RMSNorm + int8 activations + ternary weights, trained with the straight-through estimator.
    ``lora`` (None unless attached, ``train/lora.py``) adds a :class:`LoRA` term."""

    def __init__(self, d_in: int, d_out: int, std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.norm = nn.Parameter(torch.ones(d_in))
        nn.init.normal_(self.weight, std=std)
        self.lora: LoRA | None = None

    def forward(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        xn = rms_norm(x, self.norm)
        xq, sx = activation_quantize(xn)
        q, s = ternary_quantize(self.weight)
        if exact:
            # Engine form: exact integer products, one float multiply by 1 / (sx * s).
            acc = torch.matmul(xq, q.t())
            out = acc * (1.0 / (sx * s))
        else:
            x_ste = xn + (xq / sx - xn).detach()
            w_ste = self.weight + (q / s - self.weight).detach()
            out = F.linear(x_ste, w_ste)
        return out if self.lora is None else out + self.lora(xn)


# ----------------------------------------------------------------------------------------- scan


def sequential_scan(
    log_decay: torch.Tensor, u: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference recurrence ``s_t = exp(log_decay_t) * s_{t-1} + u_t``.

    ``log_decay`` [B, T, H], ``u`` [B, T, H, P] (P channels per head share the decay). Returns the
    states [B, T, H, P] and the final state [B, H, P].
    """
    Bsz, T, H, P = u.shape
    s = u.new_zeros(Bsz, H, P) if state is None else state
    out = []
    for t in range(T):
        s = s * torch.exp(log_decay[:, t])[..., None] + u[:, t]
        out.append(s)
    return torch.stack(out, 1), s


def segsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., t, j] = sum_{j < k <= t} x[..., k]`` for ``j <= t``, ``-inf`` above the diagonal.

    Summed directly (a masked cumsum), not as a difference of prefix sums, so it stays accurate when
    the prefix sums are large.
    """
    Q = x.size(-1)
    xx = x[..., None].expand(*x.shape, Q)  # [..., t, j] = x_t
    strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device), diagonal=-1)
    xx = xx.masked_fill(~strict, 0.0)
    seg = torch.cumsum(xx, dim=-2)
    lower = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device))
    return seg.masked_fill(~lower, float("-inf"))


def chunked_scan(
    log_decay: torch.Tensor, u: torch.Tensor, chunk: int = 64, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel form of :func:`sequential_scan` (same arguments and results).

    Within each chunk of ``chunk`` steps ``s_t = sum_{j<=t} exp(L[t, j]) u_j`` (a batched matrix
    product with ``L = segsum(log_decay)``, every exponent <= 0), plus the state carried into the
    chunk decayed by ``exp(cumsum(log_decay)_t)``; the carried states are a short loop over chunks.
    """
    Bsz, T, H, P = u.shape
    pad = (-T) % chunk
    if pad:  # padded steps: no decay (log 0 -> 1) and no input, so the final state is unchanged
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        u = F.pad(u, (0, 0, 0, 0, 0, pad))
    n = (T + pad) // chunk
    la = log_decay.reshape(Bsz, n, chunk, H).permute(0, 1, 3, 2)  # [B, n, H, Q]
    uc = u.reshape(Bsz, n, chunk, H, P).permute(0, 1, 3, 2, 4)  # [B, n, H, Q, P]
    cs = torch.cumsum(la, dim=-1)  # [B, n, H, Q]
    s_intra = torch.matmul(torch.exp(segsum(la)), uc)  # states with zero initial state per chunk
    chunk_decay = torch.exp(cs[..., -1])  # [B, n, H]
    carry = uc.new_zeros(Bsz, H, P) if state is None else state
    carries = []
    for c in range(n):
        carries.append(carry)
        carry = carry * chunk_decay[:, c, :, None] + s_intra[:, c, :, -1, :]
    carry_in = torch.stack(carries, 1)  # [B, n, H, P]
    s = s_intra + torch.exp(cs)[..., None] * carry_in[:, :, :, None, :]
    s = s.permute(0, 1, 3, 2, 4).reshape(Bsz, n * chunk, H, P)[:, :T]
    return s, carry


# ---------------------------------------------------------------------------------------- model


class MambaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        d, di, H = cfg.d_model, cfg.d_inner, cfg.n_heads
        self.cfg = cfg
        self.in_proj = BitLinear(d, cfg.d_in_proj)
        self.out_proj = BitLinear(di, d, std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.conv1d_w = nn.Parameter(torch.empty(di, 1, cfg.d_conv))
        self.conv1d_b = nn.Parameter(torch.zeros(di))
        bound = 1.0 / math.sqrt(cfg.d_conv)
        nn.init.uniform_(self.conv1d_w, -bound, bound)
        # dt ~ log-uniform in [1e-3, 1e-1]; dt_bias = softplus^-1(dt). A = 1..16 as in Mamba-2.
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(di))

    def forward(self, h: torch.Tensor, exact: bool = False, scan: str = "chunked") -> torch.Tensor:
        cfg = self.cfg
        di, H, P = cfg.d_inner, cfg.n_heads, cfg.head_dim
        Bsz, T, _ = h.shape
        p = self.in_proj(h, exact)
        z, x, Bm, Cm, dt = torch.split(p, [di, di, H, H, H], dim=-1)
        xc = F.conv1d(F.pad(x.transpose(1, 2), (cfg.d_conv - 1, 0)), self.conv1d_w, self.conv1d_b, groups=di)
        xa = F.silu(xc.transpose(1, 2))  # [B, T, di]
        dt = F.softplus(dt + self.dt_bias)  # [B, T, H]
        log_decay = -torch.exp(self.A_log) * dt
        xh = xa.reshape(Bsz, T, H, P)
        u = xh * (Bm * dt)[..., None]
        if scan == "sequential":
            s, _ = sequential_scan(log_decay, u)
        else:
            s, _ = chunked_scan(log_decay, u)
        y = s * Cm[..., None] + xh * self.D.view(H, P)
        y = y.reshape(Bsz, T, di) * F.silu(z)
        return self.out_proj(y, exact)


class BitMamba2(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        nn.init.normal_(self.embed, std=0.1)
        self.layers = nn.ModuleList(MambaBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = nn.Parameter(torch.ones(cfg.d_model))
        self.lm_head = BitLinear(cfg.d_model, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, exact: bool = False, scan: str = "chunked") -> torch.Tensor:
        """Logits [B, T, V] for token ids [B, T] (states start at zero)."""
        h = F.embedding(ids, self.embed)
        for layer in self.layers:
            h = h + layer(h, exact, scan)
        return self.lm_head(rms_norm(h, self.norm_f), exact)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, ids: list[int], max_new: int, stop: set[int] | None = None) -> list[int]:
        """Greedy decoding with the engine-form forward (recomputes the prefix; for tests/samples)."""
        out = list(ids)
        for _ in range(max_new):
            logits = self.forward(torch.tensor([out]), exact=True)[0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            if stop and nxt in stop:
                break
        return out[len(ids) :]
