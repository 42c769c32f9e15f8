"""The laminar flow: article -> tokens -> activations -> one SAE per (model, layer) -> report.

The flow only wires tasks; each lives in its own module under tasks/. Run it with `python
flows/laminar.py --help`, or from a Prefect deployment (its `config` parameter is the CLI's)."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python flows/laminar.py ARGS` is the `laminar` command. It runs
    # before the imports below, so a bad flag fails before torch and Prefect load (0.4 s, not 7 s);
    # the command imports this module by its name, flows.laminar, for the flow itself.
    from flows.cli import laminar as command

    sys.exit(command())

from pathlib import Path
from typing import Any

import cloudpickle
from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import paths, provenance, saelens
from tasks.cluster import fanout
from tasks.config import Config
from tasks.costs import announce
from tasks.extract import extract_activations
from tasks.latents import latent_cards, publish_cards
from tasks.prefect_api import record_before_exit
from tasks.preflight import checked_for
from tasks.published import profile_sae
from tasks.recipes import train_recipe
from tasks.records import EvalBatch, LayerFile, LayerResult, ModelFacts, Splice
from tasks.report import publish, write_report
from tasks.runs import Job, Runner
from tasks.scrape import fetch_page, parse_page, publish_text
from tasks.settings import plural
from tasks.splice import release_splicers, splice_sae
from tasks.stability import pairs, seed_stability, with_stability
from tasks.tokens import holdout, tokenize
from tasks.train import train_sae

# Dask workers unpickle this flow (its run context travels with every task). Run as a script
# (__main__) or loaded by a Prefect deployment (as 'laminar'), the module cannot be imported on a
# worker by that name, so its functions travel by value.
if __name__ != "flows.laminar":
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


class LayerFailedError(Exception):
    """Some (model, layer) trainings failed; the report covers the rest."""


# One training at a time saturates a GPU (or all CPU cores); the flow thread meanwhile extracts
# the next model, so extraction and training overlap.
@flow(
    name="laminar",
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    log_prints=True,
    persist_result=True,  # the run's result (where the report is) shows in the UI
    result_serializer="json",
    on_running=[record_before_exit],  # a temporary server records the run before it stops
)
def laminar(config: Config = Config()) -> dict[str, Any]:  # noqa: B008 (Prefect reads the default)
    """Profile SAE density and loss across the depth of each model."""
    started_at = provenance.now()
    cfg, described, family = checked_for(config)  # cfg: canonical; with --saes, the family's hook
    if unread := config.unread_given():
        print(f"laminar: {unread}")
    run = Runner(cfg)
    fetch = fetch_page.with_options(retries=cfg.fetch_retries)
    pages = run.each(fetch, [(cfg, url) for url in cfg.urls])
    texts = run.each(parse_page, [(cfg, page) for page in pages])
    tokens, holdouts = {}, {}
    for m in described:
        if (fp := m["tokenizer_fingerprint"]) not in tokens:
            tokens[fp] = run(tokenize, cfg, texts, m["model"], fp)
            if cfg.n_eval_seqs:
                holdouts[fp] = run(holdout, cfg, tokens[fp], m["model"])
    publish_text(pages, texts, list(tokens.values()))
    announce(cfg, described, tokens, holdouts)
    extractions, jobs = [], []
    with fanout(cfg) as pool:
        print(f"laminar: per-layer work on the {pool.describe()}")
        for m in described:
            batch = tokens[m["tokenizer_fingerprint"]]
            args = (cfg, m["model"], m["name"], m["weights_fingerprint"], batch)
            ext = run.on(pool, extract_activations, *args)
            extractions.append(ext)
            jobs += layer_jobs(run, pool, cfg, m["name"], ext["files"], family)
        results, failed = run.gather(jobs, pool.slots)
        if holdouts:
            splices, splice_failed = splice_all(run, pool, cfg, described, results, holdouts)
            results, failed = with_splices(results, splices), failed + splice_failed
    if stable := pairs(cfg, results):  # 2+ seeds kept: do fresh SAEs find the same latents?
        args = [(cfg, a, b, f"{a['name']} L{a['layer']}") for a, b in stable]
        results = with_stability(results, run.each(seed_stability, args))
    cards = []
    for m in described if cfg.save_saes or cfg.saes else []:
        shown = [r for r in results if r["sae_seed"] == cfg.shown_seed]
        if mine := [r for r in shown if r["name"] == m["name"]]:
            batch = tokens[m["tokenizer_fingerprint"]]
            made = run(latent_cards, cfg, m["model"], m["name"], mine, batch)
            publish_cards(m["name"], made)
            cards += made
    batches = list(tokens.values())
    args = (cfg, pages, texts, batches, extractions, results, failed, cards, started_at)
    report = run(write_report, *args, list(holdouts.values()))
    publish(report)
    summary = {"report": report["dir"], "failed": failed, "tasks": run.states}
    summary["flow_run_id"] = str(flow_run.id)
    print(f"laminar: report in {report['dir']}; tasks {run.tally()}")
    if failed:
        raise LayerFailedError(failure_sentence(failed, report["dir"]))
    return summary


def failure_sentence(failed: list[str], where: str) -> str:
    """What failed, in one sentence: SAE trainings (their layers are missing from the report)
    and splices (their layers are in it without the downstream measures)."""
    spliced = [f for f in failed if f.startswith("splice ")]
    trained = [f for f in failed if not f.startswith("splice ")]
    parts = []
    if n := len(trained):
        are = "is" if n == 1 else "are"
        parts.append(f"{plural(n, 'layer')} failed and {are} missing from the report in {where}")
    if n := len(spliced):
        have = "has" if n == 1 else "have"
        parts.append(
            f"{plural(n, 'layer')} could not be spliced into the model and {have} no downstream "
            f"measures in {where}"
        )
    what = ", and ".join(parts)
    return f"{what}: {'; '.join(failed)}. Rerun the same command to retry only those."


def layer_jobs(
    run: Runner, pool: Any, cfg: Config, name: str, files: list[LayerFile], family: dict
) -> list[Job]:
    """One job per (layer, seed): a fresh SAE trained, or (--saes) the published one measured."""
    jobs = []
    for f in files:
        # a published SAE is one SAE a layer: measured once, under the first seed
        labels = sae_labels(cfg, name, f["layer"])[: 1 if family else None]
        for seed, label in labels:
            if family:
                folder = family[f["layer"]].folder
                args = (cfg, name, f["layer"], f, str(folder), saelens.fingerprint(folder), label)
                task_name, future = run.submit(pool, profile_sae, *args)
            else:
                trainer = train_sae if cfg.sae_arch == "course" else train_recipe
                task_name, future = run.submit(pool, trainer, cfg, name, f["layer"], f, seed, label)
            progress = paths.epochs_file(paths.layer_json(cfg, Path(f["path"]), seed))
            jobs.append(Job(task_name, future, name, progress))
    return jobs


def splice_all(
    run: Runner,
    pool: Any,
    cfg: Config,
    described: list[ModelFacts],
    results: list[LayerResult],
    holdouts: dict[str, EvalBatch],
) -> tuple[list[tuple[LayerResult, Splice]], list[str]]:
    """Each SAE spliced into its model on the held-out windows (tasks.splice), model by model
    so each model is loaded once; (result, its measures) pairs, and the failures."""
    by_name = {m["name"]: m for m in described}
    jobs, pairs = [], []
    for r in results:
        m = by_name[r["name"]]
        label = dict(sae_labels(cfg, r["name"], r["layer"]))[r["sae_seed"]]
        args = (cfg, m["model"], m["weights_fingerprint"], r["layer"])
        args += (r["sae_files"], holdouts[m["tokenizer_fingerprint"]], label)
        task_name, future = run.submit(pool, splice_sae, *args)
        jobs.append(Job(task_name, future, r["name"], None, "splice_seconds"))  # no epochs
        pairs.append((r, future))
    try:
        _, failed = run.gather(jobs, pool.slots, what="SAEs spliced in")
    finally:  # the model and passes the splices shared, wherever they ran, go with the run
        release_splicers(pool, str(flow_run.id))
    return [(r, f.result()) for r, f in pairs if f.state.is_completed()], failed


def with_splices(
    results: list[LayerResult], splices: list[tuple[LayerResult, Splice]]
) -> list[LayerResult]:
    """Each result with its downstream measures; one whose splice failed keeps its own numbers
    (the failure is reported by name, and the rerun splices it)."""
    measured = {id(r): s for r, s in splices}
    return [
        {**r, **{k: v for k, v in measured.get(id(r), {}).items() if k != "layer"}} for r in results
    ]


def sae_labels(cfg: Config, name: str, layer: int) -> list[tuple[int, str]]:
    """(seed, task label) per SAE seed: 'gpt2 L3', or 'gpt2 L3 s1' when there are several."""
    many = len(cfg.sae_seeds) > 1
    return [(s, f"{name} L{layer}" + (f" s{s}" if many else "")) for s in cfg.sae_seeds]
