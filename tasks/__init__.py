"""laminar's modules, in layers: each imports only from layers below its own (never from its own
layer or above), so the import graph reads top-down like the DAG it serves. flows/ sits on top
and may import any of them; tests/test_layers.py walks every import to hold this.

    preflight                                  the checks before any heavy work
    runs                                       the run machinery the flow drives
    cluster  failures                          where per-layer work runs (threads, Dask); how
                                               a failed task is told, in one sentence
    sweep  sweep_matrix                        a sweep's grid, points and cost; its verdict matrix
    published  recipes                         --saes: a published family measured, or
                                               --sae-arch: the field's SAEs trained, not train's
    family                                     --saes: the family's cfg.json files, checked
    scrape tokens extract train latents report splice stability   the tasks, a module a job;
    costs                                      and what a run will cost, said before it starts
    cache wikitext figures tables progress provenance minibatch saelens   what the tasks share
    sae  stats                                 the SAE and the statistics of a profile
    models                                     models and tokenizers: loading, fingerprints
    locks                                      the cache's file locks, their holders named
    store  saefiles                            files: atomic writes, hashes, Parquet layouts;
                                               the SAE files a user hands in, checked
    security                                   who may point laminar where: Dask TLS, what a
                                               deployment run may reach
    host  prefect_api  precision  codehash     this process and machine; Prefect's private API;
                                               float32 matmul precision per block; code hashes
    paths  cli                                 where every file of a run goes; the command line
    config  records  columns                   the settings; the records tasks hand on; every
                                               column they carry, declared once
    config_input  config_sae  config_run       the settings' fields by topic: what is measured,
                                               how SAEs train, what a run adds and where it runs
    settings                                   what Config is built from: field roles, errors,
                                               parsing and naming its values
"""

LAYERS: tuple[tuple[str, ...], ...] = (  # bottom first
    ("settings",),
    ("config_input", "config_sae", "config_run"),
    ("config", "records", "columns"),
    ("paths", "cli"),
    ("host", "prefect_api", "precision", "codehash", "hf"),
    ("security",),
    ("store", "saefiles"),
    ("locks",),
    ("models",),
    ("sae", "stats"),
    ("cache", "wikitext", "figures", "tables", "progress", "provenance", "minibatch", "saelens"),
    ("scrape", "tokens", "extract", "train", "latents", "report", "splice", "stability", "costs"),
    ("family",),
    ("published", "recipes"),
    ("sweep", "sweep_matrix"),
    ("cluster", "failures"),
    ("runs",),
    ("preflight",),
)
