"""FR-Spec frequency files: the tokens of a corpus ranked by how often they occur.

    minicpm train frspec --model default --data abstracts --vocab 4096 8192 16384 --out DRAFT_DIR

FR-Spec (Zhao et al. 2025) drafts over the most frequent tokens only, so a draft step reads that
share of the lm_head (runtime/eagle.py). The files are upstream's format (CPM.cu's
scripts/fr_spec/gen_fr_index.py): `freq_N.pt`, a torch-saved list of N token ids, most frequent
first, with the end-of-sequence ids forced in (in place of the least frequent) so a draft can end.
Upstream counts wikitext; a corpus of the text the model will write (here the arXiv abstracts the
survey agent quotes) ranks the tokens that matter for it, as the FR-Spec paper suggests.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from runtime.eagle import frequency_ids


def rank_tokens(tokenizer, texts: list[str]) -> tuple[list[int], Counter]:
    """Token ids by count, most frequent first (ties by id, so the ranking is reproducible)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(tokenizer.encode(text, add_bos=False))
    return sorted(counts, key=lambda t: (-counts[t], t)), counts


def write_frequency_files(model: str, data: str, sizes: list[int], out: Path, limit: int | None = None,
                          log=print) -> dict:
    """Count the tokens of `data` with `model`'s tokenizer and write freq_N.pt for each size into
    `out`; returns, per size, the share of the corpus's token occurrences it covers."""
    import torch

    from runtime.atomic import atomic_write_bytes
    from runtime.loading import load_tokenizer
    from training.eagle import read_texts

    texts, _ = read_texts(data, limit)
    tokenizer, config = load_tokenizer(model)
    vocab = config.vocab_size
    stop_ids = sorted(tokenizer.stop_token_ids)
    bad = [n for n in sizes if not len(stop_ids) < n <= vocab]
    if bad:
        raise ValueError(f"--vocab sizes must be between {len(stop_ids) + 1} (the stop ids and one more) and the "
                         f"vocabulary's {vocab} tokens (got {bad})")
    ranked, counts = rank_tokens(tokenizer, texts)
    total = sum(counts.values())
    out.mkdir(parents=True, exist_ok=True)
    report = {"texts": len(texts), "tokens": total, "distinct_tokens": len(ranked), "vocabulary": vocab, "files": {}}
    for size in sorted(set(sizes)):
        ids = frequency_ids(ranked, size, stop_ids)
        if len(ids) < size:  # the corpus has fewer distinct tokens: pad with the remaining ids in order
            seen = set(ids)
            ids += [t for t in range(vocab) if t not in seen][: size - len(ids)]
        buffer = io.BytesIO()
        torch.save(ids, buffer)
        path = out / f"freq_{size}.pt"
        atomic_write_bytes(path, buffer.getvalue())
        covered = sum(counts[t] for t in ids) / total if total else 0.0
        report["files"][str(path)] = {"size": size, "coverage": round(covered, 4)}
        log(f"{path}: {size} tokens, {covered:.1%} of the corpus's {total:,} token occurrences")
    return report
