"""Independent NumPy reference of the bitmamba-student forward pass (Mamba-1 + BitLinear), float64
except where the engine's float32 arithmetic decides a rounding (weight quantization at load)."""

from __future__ import annotations

import numpy as np
from reference import Ties, rms_norm, silu, softplus
from reference import quantize as quantize_act

from bitmamba_lsp.engine.formats.student import StudentConfig


def ternary_rows(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W32 = W.astype(np.float32)
    s = np.maximum(np.abs(W32.astype(np.float64)).mean(axis=1), 1e-8).astype(np.float32)
    q = np.clip(np.rint(W32 / s[:, None]), -1, 1)
    return q.astype(np.float64), s.astype(np.float64)


def int8_rows(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W32 = W.astype(np.float32)
    a = np.abs(W32).max(axis=1)
    s = np.where(a > 0, a / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(W32 / s[:, None]), -127, 127)
    return q.astype(np.float64), s.astype(np.float64)


class RefStudent:
    def __init__(self, cfg: StudentConfig, t: dict, quantize: bool = True, lm_head: str = "int8") -> None:
        self.cfg, self.quant = cfg, quantize
        f = lambda n: np.asarray(t[n], dtype=np.float64)  # noqa: E731
        self.embed = f("embed")
        self.norm_f = f("norm_f")
        head = t["lm_head"] if "lm_head" in t else t["embed"]
        if lm_head == "int8":
            q, s = int8_rows(head)
            self.head = lambda x, q=q, s=s: (q @ quantize_act(x)[0]) / quantize_act(x)[1] * s
        else:
            H = np.asarray(head, dtype=np.float64)
            self.head = lambda x, H=H: H @ x
        self.layers = []
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            ly = {k: f(p + k) for k in ("norm", "conv1d_b", "x_proj", "dt_proj", "dt_proj_b", "A_log", "D")}
            ly["conv_w"] = f(p + "conv1d_w").reshape(cfg.d_inner, cfg.d_conv)
            for name in ("in_proj", "out_proj"):
                alpha = f(p + name + ".alpha") if p + name + ".alpha" in t else 1.0
                if quantize:
                    q, s = ternary_rows(t[p + name])
                    ly[name] = (q, s * alpha)
                else:
                    ly[name] = (f(p + name), alpha)
            self.layers.append(ly)

    def bitlinear(self, x: np.ndarray, w: tuple) -> np.ndarray:
        W, mult = w
        if self.quant:
            xq, sx = quantize_act(x)
            return (W @ xq) / sx * mult
        return (W @ x) * mult

    def new_state(self) -> list[dict]:
        c = self.cfg
        return [
            dict(conv=np.zeros((c.d_inner, c.d_conv - 1)), ssm=np.zeros((c.d_inner, c.d_state)))
            for _ in self.layers
        ]

    def step(self, state: list[dict], token: int) -> np.ndarray:
        c = self.cfg
        di, S, R = c.d_inner, c.d_state, c.dt_rank
        h = self.embed[token].copy()
        for ly, st in zip(self.layers, state, strict=True):
            p = self.bitlinear(rms_norm_eps(h, ly["norm"], c.norm_eps), ly["in_proj"])
            x, z = p[:di], p[di:]
            window = np.concatenate([st["conv"], x[:, None]], axis=1)
            xa = silu(ly["conv1d_b"] + (window * ly["conv_w"]).sum(axis=1))
            st["conv"] = window[:, 1:]
            xdbl = ly["x_proj"] @ xa
            dt = softplus(ly["dt_proj"] @ xdbl[:R] + ly["dt_proj_b"])
            B, C = xdbl[R : R + S], xdbl[R + S :]
            A = -np.exp(ly["A_log"])
            st["ssm"] = np.exp(dt[:, None] * A) * st["ssm"] + (dt * xa)[:, None] * B[None, :]
            y = st["ssm"] @ C
            g = (y + ly["D"] * xa) * silu(z) if c.gate == "skip_d" else y * silu(z) * ly["D"]
            h = h + self.bitlinear(g, ly["out_proj"])
        return self.head(rms_norm_eps(h, self.norm_f, c.norm_eps))

    @staticmethod
    def flat(state: list[dict]) -> np.ndarray:
        return np.concatenate([np.concatenate([st["conv"].T.ravel(), st["ssm"].ravel()]) for st in state])

    def load_flat(self, flat: np.ndarray) -> list[dict]:
        di, S = self.cfg.d_inner, self.cfg.d_state
        per = 3 * di + di * S
        out = []
        for i in range(len(self.layers)):
            chunk = np.asarray(flat[i * per : (i + 1) * per], dtype=np.float64)
            out.append(
                dict(conv=chunk[: 3 * di].reshape(3, di).T.copy(), ssm=chunk[3 * di :].reshape(di, S).copy())
            )
        return out


def rms_norm_eps(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x * w / np.sqrt(np.mean(x * x) + eps)


__all__ = ["RefStudent", "Ties", "int8_rows", "rms_norm", "ternary_rows"]
