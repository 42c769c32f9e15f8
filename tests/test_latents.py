"""Latent cards: the latents chosen and the contexts shown for planted activations, computed
by hand; the cards of a real run are written beside its report and linked from it."""

from __future__ import annotations

import numpy as np

from tasks.latents import cards, pick, to_html

# 60 tokens in 5 sequences of 13 (position 0 dropped, as laminar does): token i sits at
# sequence i // 12, position i % 12 + 1, and its id is 100 * sequence + position.
N, M = 60, 30
WHERE = np.array([(i // 12, i % 12 + 1) for i in range(N)])
BATCH = np.array([[100 * s + p for p in range(13)] for s in range(5)])


def planted() -> np.ndarray:
    """Latent l fires on tokens 0 .. 29-l (30-l times), with activation i + 1 on token i."""
    z = np.zeros((N, M), np.float32)
    for latent in range(M):
        fires = np.arange(30 - latent)
        z[fires, latent] = fires + 1
    return z


def decode(ids: list[int]) -> str:
    return " ".join(map(str, ids))


def test_the_latents_chosen() -> None:
    counts = (planted() > 0).sum(axis=0)
    chosen = pick(counts, seed=0)
    assert [lat for lat, g in chosen if g == "frequent"] == [0, 1, 2, 3, 4, 5, 6, 7]
    # The rarest that fire at least 3 times: 27 fires 3 times, 28 and 29 fewer.
    assert [lat for lat, g in chosen if g == "rare"] == [27, 26, 25, 24, 23, 22, 21, 20]
    drawn = [lat for lat, g in chosen if g == "random"]
    assert len(drawn) == 8 and set(drawn) <= {*range(8, 20), 28, 29}  # any other live latent
    assert drawn == sorted(drawn) and pick(counts, seed=0) == chosen  # seeded
    assert pick(counts, seed=1) != chosen


def test_cards_show_the_top_tokens_in_context() -> None:
    made = cards(planted(), WHERE, BATCH, decode, seed=0)
    assert len(made) == 24
    first = made[0]
    assert (first["latent"], first["group"]) == (0, "frequent")
    assert first["freq"] == 30 / 60 and first["mean_activation"] == np.mean(np.arange(1, 31))
    # Its strongest token is token 29: sequence 2, position 6, activation 30.
    top = first["contexts"][0]
    assert top == {
        "before": "200 201 202 203 204 205",
        "token": "206",
        "after": "207 208 209 210 211 212",
        "activation": 30.0,
    }
    assert [c["activation"] for c in first["contexts"]] == [30.0, 29.0, 28.0, 27.0, 26.0, 25.0]
    rare = next(c for c in made if c["latent"] == 27)
    assert [c["token"] for c in rare["contexts"]] == [
        "3",
        "2",
        "1",
    ]  # its 3 tokens, strongest first


def test_html_is_self_contained_and_escaped() -> None:
    made = cards(planted(), WHERE, BATCH, lambda ids: "<b>&" + decode(ids), seed=0)
    page = to_html("m", {3: made})
    assert page.count('class="card"') == 24 and 'id="L03"' in page
    assert "<b>&" not in page and "&lt;b&gt;&amp;" in page
    assert "http" not in page and "<script" not in page


def test_streamed_cards_equal_those_of_the_whole_layer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """layer_cards reads the layer a row group at a time: the same cards as encoding it whole."""
    import pyarrow.parquet as pq
    import torch

    from tasks.latents import layer_cards
    from tasks.sae import course, files
    from tasks.store import activation_schema, activation_table, file_record

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5 * 12, 16)) + 0.5).astype(np.float32)  # 5 sequences of 12 rows
    with pq.ParquetWriter(tmp_path / "L00.parquet", activation_schema(16, {})) as writer:
        for s in range(5):  # a row group per sequence, as extraction writes them
            rows = slice(12 * s, 12 * s + 12)
            writer.write_table(
                activation_table(WHERE[rows, 0], WHERE[rows, 1], WHERE[rows, 1], x[rows])
            )
    model = course.TiedSAE(16, 32, 10, torch.Generator().manual_seed(0))
    files.save(model, tmp_path / "sae", "blocks.0.mlp.hook_pre", "m", {})
    result = {
        "activations": file_record(tmp_path / "L00.parquet"),
        "sae_files": [file_record(tmp_path / "sae" / files.WEIGHTS_FILE)],
    }
    with torch.no_grad():
        whole = cards(model.encode(torch.from_numpy(x)).numpy(), WHERE, BATCH, decode, seed=0)
    assert layer_cards(result, BATCH, decode, seed=0) == whole  # type: ignore[arg-type]
    assert len(whole) == 24


def test_the_markdown_cards_show_page_text_as_text() -> None:
    """The Prefect UI's cards render page and tokenizer text literally: a context holding a link,
    an image tag, backticks, a table bar or emphasis marks makes none of them; the token is the
    one bold thing in its line. Rendered by a CommonMark renderer with raw HTML on and GFM's
    tables and strikethrough (markdown-it-py), as the Prefect UI renders artifacts."""
    import html
    import re

    from markdown_it import MarkdownIt

    from tasks.latents import md_text, to_markdown

    evil = [
        ("see [x](http://evil.example) and ![i](http://evil.example/i.png)", "tok"),
        ("<img src=x onerror=alert(1)> <a href='http://evil.example'>a</a>", "<b>"),
        ("`code` ``more`` | a | b |", "*star*"),
        ("line one\nline two _under_ ~~gone~~ #h", "]("),
    ]
    contexts = [{"before": b, "token": t, "after": " after", "activation": 1.5} for b, t in evil]
    card = {"latent": 7, "group": "rare", "freq": 0.25, "mean_activation": 0.5}
    page = to_markdown("model<x>", {3: [{**card, "contexts": contexts}]})
    shown = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(page)
    for tag in ("<img", "<a ", "<code", "<em", "<del", "<b>", "<h1>h", "<h2>h"):
        assert tag not in shown, tag
    assert shown.count("<strong>") == 1 + len(evil)  # the latent's name, then each token
    rows = shown.split("<tbody>")[1].split("<tr>")[1:]
    assert len(rows) == len(evil)
    for (before, token), row in zip(evil, rows, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        got_before, got_token, got_after = (html.unescape(c) for c in cells[:3])
        assert got_before == before.replace("\n", "↵")
        assert got_token == f"<strong>{token}</strong>" and got_after == " after".strip()
    assert md_text("a\nb") == "a↵b" and md_text("x|y") == "x\\|y"
    leading = (
        MarkdownIt("commonmark")
        .enable("table")
        .render(to_markdown("m", {0: [{**card, "contexts": [{**contexts[0], "token": " the"}]}]}))
    )
    assert "<strong>the</strong>" in leading  # a leading space: bold all the same
