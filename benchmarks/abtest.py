"""Is a change to the SAE step faster? laminar's training with tasks/sae/ as it is now against
the same code at another commit, interleaved in one process (base, now, base, now, ... for
`rounds` rounds) on the same random activations at the GPT-2 shapes: seconds per epoch as the
median with min-max over the rounds, the speed-up, and whether the trained weights and losses
are identical.

    .venv/bin/python benchmarks/abtest.py --base HEAD~1
    .venv/bin/python benchmarks/abtest.py --base 0730d3c --shapes gpt2-small --precisions bf16"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.common import N_TOKENS, SHAPES, spread, timed_once, train_sae
from tasks.sae import fit
from tasks.store import write_json

ROOT = Path(__file__).resolve().parent.parent


def sae_at(rev: str) -> ModuleType:
    """The SAE training (the module with `train`) as it was at commit `rev`, imported apart from
    the current one: tasks/sae/ copied out as a package of its own name (its `tasks.sae`
    imports renamed to it), or at commits before that package, tasks/sae.py as one module."""
    name = f"sae_at_{rev.replace('~', '_').replace('^', '_')}"
    listed = git("ls-tree", "--name-only", rev, "tasks/sae/")
    if listed.returncode == 0 and listed.stdout.strip():
        home = Path(tempfile.mkdtemp(prefix="laminar-abtest-"))  # lives as long as the process
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        (home / name).mkdir()
        for path in listed.stdout.split():
            source = git("show", f"{rev}:{path}").stdout.replace("tasks.sae", name)
            (home / name / Path(path).name).write_text(source)
        sys.path.insert(0, str(home))
        return importlib.import_module(f"{name}.fit")
    shown = git("show", f"{rev}:tasks/sae.py")
    if shown.returncode:
        raise SystemExit(
            f"abtest.py: --base {rev!r} has no tasks/sae here ({shown.stderr.strip()}); "
            "give a commit of this repository, e.g. HEAD~1."
        )
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(shown.stdout, f"{rev}:tasks/sae.py", "exec"), module.__dict__)
    return module


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def epochs_of(module: ModuleType, x: torch.Tensor, precision: str, epochs: int) -> Any:
    return timed_once(
        lambda: train_sae(x, epochs, precision=precision, module=module), x.device.type
    )


def compare(
    base: ModuleType, n: int, d: int, precision: str, device: str, rounds: int, epochs: int
) -> dict[str, Any]:
    """One shape and precision: base and current timed alternately on the same activations."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(device)
    epochs_of(fit, x[:256], precision, 1)  # warm-up: kernels, thread pools
    times: dict[str, list[float]] = {"base": [], "now": []}
    results = {}
    for _ in range(rounds):
        for side, module in (("base", base), ("now", fit)):
            seconds, results[side] = epochs_of(module, x, precision, epochs)
            times[side].append(seconds / epochs)
    a, b = results["base"], results["now"]
    return {
        "N": n,
        "d": d,
        "precision": precision,
        "epochs": epochs,
        "rounds": rounds,
        "base_s": spread(times["base"]),
        "now_s": spread(times["now"]),
        "per_round_s": times,
        "speedup": spread([p / q for p, q in zip(times["base"], times["now"], strict=True)]),
        "same_weights": bool(torch.equal(a.sae.weight, b.sae.weight)),
        "max_rel_loss_diff": max(
            abs(p - q) / abs(p) for p, q in zip(a.losses, b.losses, strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="commit whose tasks/sae is the base")
    parser.add_argument("--shapes", default="gpt2-small,gpt2-large")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timing")
    parser.add_argument("--tokens", type=int, default=N_TOKENS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    base = sae_at(args.base)
    rows = []
    for shape in args.shapes.split(","):
        d = SHAPES[shape][2]
        for precision in args.precisions.split(","):
            row = compare(base, args.tokens, d, precision, args.device, args.rounds, args.epochs)
            rows.append({"shape": shape, "base": args.base, **row})
            med = {k: row[k]["median"] for k in ("base_s", "now_s", "speedup")}
            print(
                f"{shape} {precision}: base {med['base_s']:.2f} s/epoch, now {med['now_s']:.2f} "
                f"(x{med['speedup']:.3f}, {row['speedup']['min']:.3f}-"
                f"{row['speedup']['max']:.3f}); same weights {row['same_weights']}, "
                f"losses rel {row['max_rel_loss_diff']:.2g}",
                flush=True,
            )
    if args.out:
        write_json(args.out, rows)


if __name__ == "__main__":
    main()
