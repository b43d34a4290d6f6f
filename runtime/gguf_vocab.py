"""Rebuild an HF `tokenizers.Tokenizer` from the vocabulary stored inside a GGUF file.

Two vocabulary kinds, as llama.cpp names them:
- `gpt2`: byte-level BPE with merges (SmolLM2, Llama 3, Qwen). The pre-tokenizer regexes are
  llama.cpp's for the `tokenizer.ggml.pre` name; an unknown name is an error rather than a guess,
  because a wrong regex tokenizes some inputs differently without any sign.
- `llama`: SentencePiece BPE with scores and byte fallback (MiniCPM4, Llama 2). Merges are
  derived from the scores: a merge (a, b) exists when a, b and a+b are all pieces, ranked by the
  score of a+b, which reproduces SentencePiece's highest-score-first merging.

Token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
Control and user-defined tokens become added tokens, so `<|im_start|>` in a rendered chat
template is one token, as in llama.cpp's tokenizer with special parsing on.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import UnsupportedModelError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Keyed by llama.cpp's names for them (llama-vocab.cpp).
PRE_TOKENIZER_REGEXES = {
    "gpt-2": [GPT2_REGEX],
    "smollm": [r"\p{N}", GPT2_REGEX],
    "llama-bpe": [
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "qwen2": [
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
}


def tokenizer_from_gguf(metadata: dict[str, Any], source: str):
    """Build the tokenizer of a GGUF from its metadata; `source` names the file in errors."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedModelError(f"{source} carries no vocabulary (tokenizer.ggml.tokens); re-convert it with its tokenizer")
    types = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(metadata, tokens, source)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(metadata, tokens, types)
    else:
        raise UnsupportedModelError(
            f"{source} uses a '{kind}' vocabulary, which the torch runtime cannot rebuild (supported: gpt2, "
            "llama); run it with --backend gguf"
        )
    _add_special_tokens(tokenizer, tokens, types)
    return tokenizer


def _add_special_tokens(tokenizer, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken

    added = [
        AddedToken(tok, special=(typ == CONTROL), normalized=False)
        for tok, typ in zip(tokens, types)
        if typ in (CONTROL, USER_DEFINED) and tok
    ]
    tokenizer.add_tokens(added)


def _byte_level_bpe(metadata: dict[str, Any], tokens: list[str], source: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = metadata.get("tokenizer.ggml.pre") or "default"
    pre = {"default": "gpt-2", "llama3": "llama-bpe", "llama-v3": "llama-bpe"}.get(pre, pre)
    if pre not in PRE_TOKENIZER_REGEXES:
        raise UnsupportedModelError(
            f"{source} uses the pre-tokenizer '{pre}', which the torch runtime cannot reproduce exactly "
            f"(supported: {', '.join(PRE_TOKENIZER_REGEXES)}); run it with --backend gguf"
        )
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges") or []]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama-bpe"))
    tokenizer = Tokenizer(bpe)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_REGEXES[pre]]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(metadata: dict[str, Any], tokens: list[str], types: list[int]):
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    mergeable = {tok: i for i, tok in enumerate(tokens) if types[i] in (NORMAL, UNUSED)}
    merges = []
    for piece, i in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((scores[i], i, left, right))
    # Higher score merges first; ties in piece order, as SentencePiece breaks them by id.
    merges.sort(key=lambda m: (-m[0], m[1]))
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    bpe = models.BPE(
        vocab=vocab,
        merges=[(left, right) for _, _, left, right in merges],
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(bpe)
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    # llama.cpp puts the space prefix before every text fragment that follows a special token, even
    # one that already starts with a space; normalizers run per fragment between added tokens and
    # do the same (the Metaspace pre-tokenizer would skip the prefix before a leading space).
    steps = [normalizers.Prepend("▁")] if prefix else []
    tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        *([decoders.Strip(content=" ", left=1, right=0)] if prefix else []),
    ])
    return tokenizer
