"""The laminar flow: article -> tokens -> activations -> one SAE per (model, layer) -> report.

The flow only wires tasks; each task lives in its own module under tasks/. Run it with
`python flows/laminar.py --help`, or from a Prefect deployment (the `config` parameter is the
same typed model that builds the CLI)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

# No telemetry from the ephemeral Prefect server (it would only time out on offline machines).
os.environ.setdefault("DO_NOT_TRACK", "1")
if __name__ == "__main__":  # a malformed flag fails in a second, before torch and Prefect load
    from tasks.cli import exit_on_bad_flags

    exit_on_bad_flags(sys.argv[1:])

import cloudpickle
from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import models, paths, provenance
from tasks.cli import config_from_args
from tasks.cluster import fanout
from tasks.config import Config, LaminarError, resolve_device
from tasks.extract import extract_activations
from tasks.latents import latent_cards, publish_cards
from tasks.progress import announce
from tasks.records import ModelFacts
from tasks.report import publish, write_report
from tasks.runs import Job, Runner, check_deployment_targets
from tasks.scrape import fetch_page, parse_page, publish_text
from tasks.store import check_writable
from tasks.tokens import tokenize
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
)
def laminar(config: Config = Config()) -> dict[str, Any]:  # noqa: B008 (Prefect reads the default)
    """Profile SAE density and loss across the depth of each model."""
    cfg = config
    started_at = provenance.now()
    described = preflight(cfg)
    run = Runner(cfg)
    fetch = fetch_page.with_options(retries=cfg.fetch_retries)
    pages = run.each(fetch, [(cfg, url) for url in cfg.urls])
    texts = run.each(parse_page, [(cfg, page) for page in pages])
    tokens = {}
    for m in described:
        if (fp := m["tokenizer_fingerprint"]) not in tokens:
            tokens[fp] = run(tokenize, cfg, texts, m["model"], fp)
    publish_text(pages, texts, list(tokens.values()))
    announce(cfg, described, tokens)
    extractions, jobs = [], []
    with fanout(cfg) as pool:
        print(f"laminar: per-layer work on the {pool.describe()}")
        for m in described:
            batch = tokens[m["tokenizer_fingerprint"]]
            args = (cfg, m["model"], m["name"], m["weights_fingerprint"], batch)
            ext = run.on(pool, extract_activations, *args)
            extractions.append(ext)
            for f in ext["files"]:
                for seed, label in sae_labels(cfg, m["name"], f["layer"]):
                    name, future = run.submit(
                        pool, train_sae, cfg, m["name"], f["layer"], f, seed, label
                    )
                    progress = paths.epochs_file(paths.layer_json(cfg, Path(f["path"]), seed))
                    jobs.append(Job(name, future, m["name"], progress))
        results, failed = run.gather(jobs, pool.slots)
    cards = []
    for m in described if cfg.save_saes else []:
        first_seed = [r for r in results if r["sae_seed"] == cfg.sae_seeds[0]]
        if mine := [r for r in first_seed if r["name"] == m["name"]]:
            batch = tokens[m["tokenizer_fingerprint"]]
            made = run(latent_cards, cfg, m["model"], m["name"], mine, batch)
            publish_cards(m["name"], made)
            cards += made
    batches = list(tokens.values())
    args = (cfg, pages, texts, batches, extractions, results, failed, cards, started_at)
    report = run(write_report, *args)
    publish(report)
    summary = {
        "report": report["dir"],
        "failed": failed,
        "tasks": run.states,
        "flow_run_id": str(flow_run.id),
    }
    print(f"laminar: report in {report['dir']}; tasks {run.tally()}")
    if failed:
        raise LayerFailedError(
            f"{len(failed)} layer(s) failed and are missing from the report in {report['dir']}: "
            + "; ".join(failed)
            + ". Rerun the same command to retry only those."
        )
    return summary


def sae_labels(cfg: Config, name: str, layer: int) -> list[tuple[int, str]]:
    """(seed, task label) per SAE seed: 'gpt2 L3', or 'gpt2 L3 s1' when there are several."""
    many = len(cfg.sae_seeds) > 1
    return [(s, f"{name} L{layer}" + (f" s{s}" if many else "")) for s in cfg.sae_seeds]


_CHECKED: dict[str, list[ModelFacts]] = {}  # config JSON -> its models, checked by main


def preflight(cfg: Config, *, keep: bool = False) -> list[ModelFacts]:
    """Checks that need no heavy work, so bad input fails in seconds with nothing lost:
    the artifacts dir is writable, the device exists (here, or on a Dask cluster's workers,
    which check it themselves), every model and its layers resolve. The CLI runs it before
    Prefect starts and keeps the answer (`keep`) for the flow run it starts next, which takes
    it instead of loading every tokenizer and model config again; any other flow run (a
    deployment's, a second run in one process) checks for itself."""
    if (checked := _CHECKED.pop(cfg.model_dump_json(), None)) is not None:
        return checked
    check_deployment_targets(cfg)
    check_writable(cfg.root)
    if cfg.task_runner == "thread":
        resolve_device(cfg.device)
    described = [models.describe(cfg, m) for m in cfg.models]
    if keep:
        _CHECKED[cfg.model_dump_json()] = described
    return described


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every task/flow exception with its traceback; for a LaminarError (bad input,
    a fixable condition) the one-sentence message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LaminarError | LayerFailedError):
            record.exc_info, record.exc_text = None, None
        return True


def main(argv: list[str] | None = None) -> int:
    for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForUserErrors())
    try:
        cfg = config_from_args(argv)
        preflight(cfg, keep=True)  # before Prefect's server starts: bad input fails in seconds
        summary = laminar(cfg)
    except (LaminarError, LayerFailedError) as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, LaminarError) else 1
    print(f"report: {Path(summary['report']) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
