"""Self-distillation text for an Eagle head: the model's own greedy replies to the survey agent's prompts.

    python -m training.data.eagle_distill [--n 120] [--out training/data/eagle/distill.jsonl]

A draft head is judged on the text the model writes, so it should learn from that text, not only
from human prose: the head's acceptance is the share of the model's own greedy tokens it guesses.
For each of the first abstracts of the paper corpus's sample (the benchmarks draw their prompts
from its last ones), the survey agent's paragraph prompt over three papers and its one-sentence
prompt over one, in the chat template, and the model's greedy reply (up to --max-tokens tokens,
--quant int4 for speed: its replies are the float model's up to rare near-ties). Each line is
{"text": prompt + reply}, which `minicpm train eagle` reads with `data:`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "eagle" / "distill.jsonl"
QUERY = "recent advances in artificial intelligence"


def first_papers(n: int) -> list[tuple[str, str]]:
    """(title, abstract) of the first n papers with both, from the sample the corpus ships or the shared one."""
    from benchmarks.quantization import SHARED_ABSTRACTS
    from survey.corpus import shipped_sample

    path = SHARED_ABSTRACTS if SHARED_ABSTRACTS.is_file() else shipped_sample()
    papers = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for row in map(json.loads, f):
            title, abstract = " ".join(row.get("title", "").split()), row.get("abstract", "").strip()
            if title and len(abstract) > 400:
                papers.append((title, abstract))
            if len(papers) == n:
                break
    return papers


def build(n: int, max_tokens: int, out: Path, model: str = "default") -> int:
    from rich.progress import Progress

    from agents.survey_agent import prompts as survey
    from runtime.atomic import atomic_write_text
    from runtime.backends.torch_backend import TorchBackend
    from runtime.events import SamplingParams

    backend = TorchBackend.load(model, quant="int4")
    papers = first_papers(3 * n)
    system = {"role": "system", "content": survey.GENERIC_SYSTEM}
    requests = []
    for i in range(n):
        group = papers[3 * i : 3 * i + 3]
        listing = "\n".join(f"[{j}] {title}: {abstract[:500]}" for j, (title, abstract) in enumerate(group, 1))
        requests.append(survey.PARAGRAPH.format(papers=listing, part=group[0][0], query=QUERY, plan=""))
        title, abstract = group[1]
        requests.append(survey.ONE_SENTENCE.format(title=title, abstract=abstract[:1200]))
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    lines = []
    with Progress(disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("replies", total=len(requests))
        for request in requests:
            prompt = backend.render_chat([system, {"role": "user", "content": request}])
            tokens = [e.token for e in backend.generate_tokens(backend.tokenize(prompt), params) if e.token is not None]
            lines.append(json.dumps({"text": prompt + backend.decode(tokens)}, ensure_ascii=False))
            bar.advance(task)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120, help="paper groups; two prompts each (120)")
    parser.add_argument("--max-tokens", type=int, default=96, help="reply tokens at most (96)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    count = build(args.n, args.max_tokens, args.out)
    print(f"{count} samples -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
