"""Independent NumPy reference of the BitMamba-2 forward pass (docs/formats.md section 1), float64.

Written from the format description, not from the C++ code: unpack the file's 2-bit codes,
quantize activations per token with round-half-away-from-zero, run the recurrence channel by channel.
"""

from __future__ import annotations

import numpy as np

from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config, TernaryTensor


def round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rms_norm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x * w / np.sqrt(np.mean(x * x) + 1e-6)


class Ties:
    """Smallest distance of a scaled activation to a rounding boundary (k + 0.5) seen so far.
    The engine computes in float32 and this reference in float64; where an activation lies within
    ~1e-4 of a boundary the two may legitimately round differently (one int8 step apart)."""

    nearest = float("inf")

    @classmethod
    def reset(cls) -> None:
        cls.nearest = float("inf")


def quantize(xn: np.ndarray) -> tuple[np.ndarray, float]:
    sx = 127.0 / (np.max(np.abs(xn)) + 1e-5)
    v = xn * sx
    frac = np.abs(v) - np.floor(np.abs(v))
    Ties.nearest = min(Ties.nearest, float(np.min(np.abs(frac - 0.5))))
    return np.clip(round_half_away(v), -128, 127), sx


def bitlinear(x: np.ndarray, q: np.ndarray, scale: float, norm_w: np.ndarray) -> np.ndarray:
    xq, sx = quantize(rms_norm(x, norm_w))
    return (q @ xq) / (sx * scale)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


class RefBitMamba2:
    def __init__(self, cfg: BitMamba2Config, tensors: dict) -> None:
        self.cfg = cfg
        f = lambda n: np.asarray(tensors[n], dtype=np.float64)  # noqa: E731
        self.embed = f("embed")
        self.layers = []
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            tin: TernaryTensor = tensors[p + "in_proj"]
            tout: TernaryTensor = tensors[p + "out_proj"]
            self.layers.append(
                dict(
                    in_norm=f(p + "in_proj_norm"),
                    in_q=tin.unpack().astype(np.float64),
                    in_scale=float(np.float32(tin.scale)),
                    conv_w=f(p + "conv1d_w").reshape(cfg.d_inner, 4),
                    conv_b=f(p + "conv1d_b"),
                    dt_bias=f(p + "dt_bias"),
                    A_log=f(p + "A_log"),
                    D=f(p + "D"),
                    out_norm=f(p + "out_proj_norm"),
                    out_q=tout.unpack().astype(np.float64),
                    out_scale=float(np.float32(tout.scale)),
                )
            )
        self.norm_f = f("norm_f")
        self.lm_norm = f("lm_head_norm")
        lm: TernaryTensor = tensors["lm_head"]
        self.lm_q = lm.unpack().astype(np.float64)
        self.lm_scale = float(np.float32(lm.scale))

    def new_state(self) -> list[dict]:
        di = self.cfg.d_inner
        return [dict(conv=np.zeros((di, 3)), ssm=np.zeros(di)) for _ in self.layers]  # one per layer pass

    def step(self, state: list[dict], token: int) -> np.ndarray:
        h = self.embed[token].copy()
        for ly, st in zip(self.layers, state, strict=True):
            y = self.mixer(ly, st, bitlinear(h, ly["in_q"], ly["in_scale"], ly["in_norm"]))
            h = h + bitlinear(y, ly["out_q"], ly["out_scale"], ly["out_norm"])
        return self.logits(h)

    def logits(self, h: np.ndarray) -> np.ndarray:
        return bitlinear(rms_norm(h, self.norm_f), self.lm_q, self.lm_scale, self.lm_norm)

    def mixer(self, ly: dict, st: dict, p: np.ndarray) -> np.ndarray:
        """A layer's SSM mixer on its in_proj output `p`: conv, scan, gate; updates `st`, returns y."""
        cfg = self.cfg
        di, nh, hd = cfg.d_inner, cfg.n_heads, cfg.head_dim
        z, x = p[:di], p[di : 2 * di]
        B, C, dt = p[2 * di : 2 * di + nh], p[2 * di + nh : 2 * di + 2 * nh], p[2 * di + 2 * nh :]
        window = np.concatenate([st["conv"], x[:, None]], axis=1)  # [di, 4], oldest first
        c = ly["conv_b"] + np.sum(window * ly["conv_w"], axis=1)
        st["conv"] = window[:, 1:]
        xa = silu(c)
        dth = softplus(dt + ly["dt_bias"])
        decay = np.exp(-np.exp(ly["A_log"]) * dth)
        head = np.arange(di) // hd
        st["ssm"] = st["ssm"] * decay[head] + xa * B[head] * dth[head]
        return (st["ssm"] * C[head] + xa * ly["D"]) * silu(z)

    def load_flat(self, flat: np.ndarray) -> list[dict]:
        """A reference state from the engine's layout (to re-synchronise after a rounding tie)."""
        di = self.cfg.d_inner
        per = 4 * di
        out = []
        for i in range(len(self.layers)):  # one slot per layer pass, in schedule order
            chunk = np.asarray(flat[i * per : (i + 1) * per], dtype=np.float64)
            out.append(dict(conv=chunk[: 3 * di].reshape(3, di).T.copy(), ssm=chunk[3 * di :].copy()))
        return out

    @staticmethod
    def flat(state: list[dict]) -> np.ndarray:
        """The state in the engine's layout: per layer conv [3][d_inner] then ssm [d_inner]."""
        return np.concatenate([np.concatenate([st["conv"].T.ravel(), st["ssm"]]) for st in state])
