"""Who may point laminar where: a Dask scheduler reached with TLS (or a warning where it is
reached in the clear), and a deployment run's artifacts dir and scheduler held to what its
worker's operator allows (docs/security.md). The SAE files a user hands in are checked by
tasks.saefiles."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from tasks.config import Config
from tasks.host import logger
from tasks.settings import LaminarError, flag

TLS_FIELDS = {  # Config field -> (Security argument, Dask's own setting for it)
    "dask_tls_ca": ("tls_ca_file", "distributed.comm.tls.ca-file"),
    "dask_tls_cert": ("tls_client_cert", "distributed.comm.tls.client.cert"),
    "dask_tls_key": ("tls_client_key", "distributed.comm.tls.client.key"),
}


def dask_client(cfg: Config) -> Any:
    """The client's TLS settings for a tls:// scheduler (the Config's files, else Dask's own
    settings); None for tcp://, with a warning when that crosses the network unencrypted."""
    if not cfg.dask_address.startswith("tls://"):
        warn_if_open(cfg.dask_address)
        return None
    from distributed import Security

    given = {arg: getattr(cfg, f) for f, (arg, _) in TLS_FIELDS.items() if getattr(cfg, f)}
    sec = Security(require_encryption=True, **given)
    for field, (arg, setting) in TLS_FIELDS.items():
        value = getattr(sec, arg)
        if value is None and field != "dask_tls_key":  # a key may sit in the cert file
            raise LaminarError(
                f"--dask-address {cfg.dask_address} is a TLS scheduler but no {flag(field)} "
                f"was given (nor Dask's {setting}): pass the cluster's CA and this client's "
                "certificate and key (PEM files)."
            )
        if value is not None and "\n" not in value and not Path(value).is_file():
            raise LaminarError(
                f"{flag(field)} '{value}' is not a readable file: give the PEM file's path."
            )
    return sec


def warn_if_open(address: str) -> None:
    """One warning line for a plain tcp:// scheduler off this machine."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        logger().warning(
            "--dask-address %s is unencrypted and unauthenticated: anyone who reaches it can run "
            "code on the workers; start the cluster with TLS certificates and use tls://%s "
            "with --dask-tls-ca/--dask-tls-cert/--dask-tls-key (docs/security.md)",
            address,
            address.split("://")[-1],
        )


# Where a deployment run may point laminar: a deployment's parameters come from whoever can
# start it (the UI, the API), and its artifacts dir decides what the run reads and trusts
# (docs/security.md). The worker's operator allows more with these variables.
ALLOWED_ROOTS_ENV = "LAMINAR_DEPLOYMENT_ARTIFACTS_ROOTS"  # folders, os.pathsep-separated
ALLOWED_DASK_ENV = "LAMINAR_DEPLOYMENT_DASK_ADDRESSES"  # scheduler addresses, comma-separated
# What prefect.runtime.deployment reads outside a flow run's context: the flow run id a worker
# hands the process it starts, and the variable that stands in for the deployment's id.
DEPLOYMENT_ENV = frozenset({"PREFECT__FLOW_RUN_ID", "PREFECT__RUNTIME__DEPLOYMENT__ID"})


def check_deployment_targets(cfg: Config) -> None:
    """In a run started from a deployment: the artifacts dir must lie in a folder the worker
    allows (by default its own `artifacts/`), and a Dask scheduler must be one it allows (by
    default none: a local cluster only). A run from the command line is its user's own."""
    if "prefect" not in sys.modules and not DEPLOYMENT_ENV & os.environ.keys():
        return  # no flow run in this process (none without Prefect loaded), nor a worker's
    from prefect.runtime import deployment

    if not deployment.id:
        return
    given = os.environ.get(ALLOWED_ROOTS_ENV, "")
    roots = [Path(p).expanduser().resolve() for p in given.split(os.pathsep) if p]
    roots = roots or [Path("artifacts").resolve()]
    if not any(cfg.root == r or r in cfg.root.parents for r in roots):
        raise LaminarError(
            f"this deployment run's artifacts_dir '{cfg.root}' is outside the folders its worker "
            f"allows ({', '.join(map(str, roots))}): start the run with an artifacts_dir there, "
            f"or have the worker's operator add the folder to {ALLOWED_ROOTS_ENV}."
        )
    allowed = [a.strip() for a in os.environ.get(ALLOWED_DASK_ENV, "").split(",") if a.strip()]
    if cfg.dask_address and cfg.dask_address not in allowed:
        raise LaminarError(
            f"this deployment run's dask_address '{cfg.dask_address}' is not one its worker "
            f"allows ({', '.join(allowed) or 'none: a local cluster only'}): leave it empty, or "
            f"have the worker's operator add it to {ALLOWED_DASK_ENV}."
        )
