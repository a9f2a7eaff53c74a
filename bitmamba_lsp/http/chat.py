"""Chat prompts: the model's own chat template when it ships one, else a ChatML-style default.

A template is looked for beside the model (``tokenizer_config.json`` with a ``chat_template``
field, or ``chat_template.jinja``) and rendered with Jinja2's sandbox (the Hugging Face convention:
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``). Without one, the default is

    <|im_start|>system
    You are a helpful assistant.<|im_end|>      (only when the request has a system message)
    <|im_start|>user
    Hello<|im_end|>
    <|im_start|>assistant

and ``<|im_end|>`` is added to the stop sequences. Special tokens named in the rendered prompt
(the tokenizer's added special tokens) are encoded as their ids; everything else is plain text.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.http.schemas import bad

log = logging.getLogger(__name__)

CHATML_END = "<|im_end|>"
# End-of-turn markers of common templates; those present in a template become stop sequences
# (by id when the tokenizer has them as special tokens).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


def chatml(messages: list[dict[str, str]]) -> str:
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def _find_template(model: Model) -> tuple[str | None, dict[str, Any]]:
    if model.path is None:
        return None, {}
    folder = model.path if model.path.is_dir() else model.path.parent
    cfg: dict[str, Any] = {}
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", cfg_path, e)
            cfg = {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = folder / "chat_template.jinja"
    if not isinstance(template, str) and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return (template if isinstance(template, str) else None), cfg


def _token_text(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("content", ""))
    return v if isinstance(v, str) else ""


class ChatFormatter:
    def __init__(self, model: Model) -> None:
        self.model = model
        template, cfg = _find_template(model)
        self._template = None
        self.source = "chatml-default"
        self._bos = _token_text(cfg.get("bos_token"))
        self._eos = _token_text(cfg.get("eos_token"))
        if template is not None:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment

                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                env.globals["raise_exception"] = _raise
                self._template = env.from_string(template)
                self.source = "tokenizer"
            except ImportError:
                log.warning("the model has a chat template but jinja2 is not installed; using ChatML")
            except Exception as e:  # a broken template: fall back rather than refuse to start
                log.warning("cannot compile the model's chat template (%s); using ChatML", e)
        tok = model.tokenizer
        self._specials: dict[str, int] = {}
        if tok is not None:
            for i in tok.special_ids:
                piece = tok.tokenizer.id_to_token(i)
                if piece:
                    self._specials[piece] = i
        self._special_re = (
            re.compile("|".join(re.escape(s) for s in sorted(self._specials, key=len, reverse=True)))
            if self._specials
            else None
        )
        text = template if self._template is not None else CHATML_END
        markers = [m for m in END_OF_TURN if m in (text or "")]
        if self._eos and self._template is not None:
            markers.append(self._eos)
        self.stop_ids = frozenset(self._specials[m] for m in markers if m in self._specials)
        self.stop_texts = tuple(dict.fromkeys(m for m in markers if m not in self._specials))

    def render(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            return chatml(messages)
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos
            )
        except _TemplateError as e:
            raise bad(f"chat template: {e}", "messages") from None
        except Exception as e:
            raise bad(f"the model's chat template failed on these messages: {e}", "messages") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt: special-token names become their ids."""
        tok = self.model.require_tokenizer()
        if self._special_re is None:
            return tok.encode(text)
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids.extend(tok.encode(text[pos : m.start()]))
            ids.append(self._specials[m.group(0)])
            pos = m.end()
        ids.extend(tok.encode(text[pos:]))
        return ids


class _TemplateError(Exception):
    pass


def _raise(message: str) -> None:
    raise _TemplateError(message)
