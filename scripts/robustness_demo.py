"""The robustness machinery on tiny random-weight models, with no network: the course setting
(one article, full batch, one GPT-2-architecture model) against more text, minibatches and a
second family (GPT-NeoX), served from the test suite's Wikipedia-shaped pages, then
flows/compare.py. Random weights: it shows what the options produce, not a science result.

    .venv/bin/python scripts/robustness_demo.py [OUT_DIR]     # about a minute on 2 cores
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test fixtures it reuses: not a package

from conftest import (  # noqa: E402
    ARTICLE,
    LAMP_PROSE,
    SECOND_ARTICLE,
    TOKENIZER_DIR,
    ArticleServer,
    article_prose,
    legacy_skin,
    make_family_model,
    make_model,
    wiki_page,
)

from flows.laminar import laminar  # noqa: E402
from tasks.config import Config  # noqa: E402


def main(root: Path) -> None:
    server = ArticleServer()
    server.routes[ARTICLE] = (200, wiki_page(article_prose(100)).encode())
    lead = "An LED lamp is an electric light that produces light using LEDs."
    lamp = legacy_skin([("Applications", LAMP_PROSE)], revision=7654321, lead=lead)
    server.routes[SECOND_ARTICLE] = (200, lamp.encode())
    gpt2 = make_model(root / "models" / "tiny-gpt2", TOKENIZER_DIR, n_layer=6)
    neox = make_family_model(root / "models" / "tiny-neox", TOKENIZER_DIR, "neox")
    common = {"artifacts_dir": str(root / "art"), "device": "cpu", "seq_len": 64, "epochs": 20}
    common |= {"quiet": True, "save_saes": False}
    course = laminar(Config(models=[str(gpt2)], urls=[server.url(ARTICLE)], n_seqs=10, **common))
    urls = [server.url(ARTICLE), server.url(SECOND_ARTICLE)]
    more = Config(models=[str(gpt2), str(neox)], urls=urls, n_seqs=60, batch_tokens=256, **common)
    robust = laminar(more)
    server.close()
    compare = [sys.executable, str(ROOT / "flows" / "compare.py"), course["report"]]
    compare += [robust["report"], "--labels", "course", "robustness", "--out", str(root / "cmp")]
    subprocess.run(compare, check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/robustness-demo").resolve())
