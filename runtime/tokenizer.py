"""The tokenizer of a model: HF `tokenizers` underneath, from tokenizer.json or a GGUF vocabulary,
plus what generation needs on top (BOS, stop tokens, chat template, streaming detokenization).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.chat_template import render_chat
from runtime.errors import ModelLoadError

# Special tokens that end a generation whatever the config lists (llama.cpp finds the same by
# name): a raw completion that reaches a document end or a turn end stops there.
END_OF_GENERATION = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
                     "<end_of_turn>", "<|end_of_text|>")


def end_of_generation_ids(backend, special_tokens: list[str]) -> set[int]:
    """Ids of the special tokens named in END_OF_GENERATION."""
    return {backend.token_to_id(t) for t in special_tokens if t in END_OF_GENERATION and backend.token_to_id(t) is not None}


@dataclass
class Tokenizer:
    backend: Any  # tokenizers.Tokenizer
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    add_bos: bool = False  # prepend BOS to every encoded prompt (MiniCPM4 expects it; SmolLM2 not)
    chat_template: str | None = None
    stop_token_ids: set[int] = field(default_factory=set)  # every id that ends generation

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.backend.id_to_token(token_id) or ""

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special tokens written in the text (`<|im_start|>`) are recognised."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:  # the template may already have written BOS
                ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        # Special tokens rendered: tool-call markers and <think> may be special tokens, and stop
        # tokens never reach the text (runtime/streaming.py gives them none).
        return self.backend.decode(ids, skip_special_tokens=False)

    def render_chat(self, messages: list[dict[str, Any]], tools=None, **template_kwargs: Any) -> str:
        return render_chat(
            self.chat_template,
            messages,
            bos_token=self.token_text(self.bos_token_id),
            eos_token=self.token_text(self.eos_token_id),
            tools=tools,
            **template_kwargs,
        )

    def encode_chat(self, messages: list[dict[str, Any]], tools=None, **template_kwargs: Any) -> list[int]:
        return self.encode(self.render_chat(messages, tools=tools, **template_kwargs))

    # Constructors -------------------------------------------------------------------------------

    @classmethod
    def from_hf_folder(cls, folder: Path, stop_token_ids: list[int]) -> Tokenizer:
        """tokenizer.json plus tokenizer_config.json (chat template, BOS/EOS, add_bos_token)."""
        from tokenizers import Tokenizer as HFTokenizer

        from runtime.checkpoint import read_json

        path = folder / "tokenizer.json"
        if not path.is_file():
            hint = " (only a SentencePiece tokenizer.model is present)" if (folder / "tokenizer.model").is_file() else ""
            raise ModelLoadError(
                f"{folder} has no tokenizer.json{hint}; save the tokenizer with a recent transformers "
                "(tokenizer.save_pretrained) or use the model's GGUF"
            )
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"{path} cannot be read by tokenizers ({exc}); re-download it") from None
        cfg_path = folder / "tokenizer_config.json"
        cfg = read_json(cfg_path, "tokenizer_config.json") if cfg_path.is_file() else {}

        def token_id(key: str) -> int | None:
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        bos_id, eos_id = token_id("bos_token"), token_id("eos_token")
        if "add_bos_token" in cfg:
            add_bos = bool(cfg["add_bos_token"])
        else:  # no explicit switch: ask the tokenizer's own post-processor
            probe = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos_id is not None and probe[:1] == [bos_id]
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        stops = set(stop_token_ids) | ({eos_id} if eos_id is not None else set())
        specials = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        stops |= end_of_generation_ids(backend, specials)
        return cls(backend, bos_id, eos_id, add_bos, template, stops)

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], source: str, stop_token_ids: list[int]) -> Tokenizer:
        from runtime.gguf_vocab import tokenizer_from_gguf

        backend = tokenizer_from_gguf(metadata, source)
        bos = metadata.get("tokenizer.ggml.bos_token_id")
        eos = metadata.get("tokenizer.ggml.eos_token_id")
        default_add_bos = metadata.get("tokenizer.ggml.model") == "llama"
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos))
        stops = set(stop_token_ids) | ({int(eos)} if eos is not None else set())
        types = metadata.get("tokenizer.ggml.token_type") or []
        tokens = metadata.get("tokenizer.ggml.tokens") or []
        stops |= end_of_generation_ids(backend, [t for t, kind in zip(tokens, types, strict=False) if kind == 3])
        return cls(
            backend,
            int(bos) if bos is not None else None,
            int(eos) if eos is not None else None,
            add_bos,
            metadata.get("tokenizer.chat_template"),
            stops,
        )

