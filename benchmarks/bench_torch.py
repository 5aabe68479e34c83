"""Comparison 3: the same ensemble step in PyTorch on the CPU (and MC-dropout's torch loop).

PyTorch runs in worker processes (``python -m benchmarks.bench_torch --worker``), one per thread
setting, because ``OMP_WAIT_POLICY`` must be set before torch starts: 1 thread, and 2 threads
(JAX's count here) with ``OMP_WAIT_POLICY=PASSIVE`` (2 threads with the default policy can
collapse on this machine, PERF-NOTES). Each worker times its own calls (``ExternalTimer``), and
the main process interleaves them with the JAX step, so the ratios are paired.

Torch methods: a loop of N ``nn.Module``s with one ``torch.optim.Adam`` each, and
``torch.func.stack_module_state`` + ``functional_call`` + ``vmap(grad)`` (``randomness="different"``)
with one Adam over the stacked tensors (Adam is elementwise, so it is per-member Adam). L2 on the
weights as coupled weight decay ``2 * L2`` (the gradient of ``L2 * sum(w**2)``), dropout 0.5.
Skipped with a note when torch is not installed (``pip install jaxreg[bench]``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BATCH, L2, LR, RATE, SIZES, Row, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
THREAD_SETTINGS = {
    "1 thread": {"threads": 1, "env": {}},
    "2 threads passive": {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


class Worker:
    """A torch worker process; ``setup`` builds a workload, ``timer(id)`` times it."""

    def __init__(self, threads: int, extra_env: dict[str, str]):
        env = dict(os.environ)
        env.update(extra_env)
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_torch", "--worker", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(REPO_ROOT),
        )
        self._info: dict[str, Any] | None = None

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._ask({"op": "info"})
        return self._info

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch worker died (exit {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"torch worker: {reply['error']}")
        return reply

    def setup(self, kind: str, n: int) -> str:
        return self._ask({"op": "setup", "kind": kind, "n": n})["id"]

    def timer(self, wid: str):
        import jaxreg as jr

        return jr.benchmark.ExternalTimer(
            lambda number: self._ask({"op": "time", "id": wid, "number": number})["seconds"]
        )

    def drop(self, wid: str) -> None:
        self._ask({"op": "drop", "id": wid})

    def close(self) -> None:
        try:
            self._ask({"op": "quit"})
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def workers(ctx: dict[str, Any]) -> dict[str, Worker]:
    """The torch workers of this run, one per thread setting, started once (in parallel) and kept
    in ``ctx``; the runner closes them at the end (``ctx["cleanup"]``)."""
    if "torch_workers" not in ctx:
        ctx["torch_workers"] = {name: Worker(s["threads"], s["env"]) for name, s in THREAD_SETTINGS.items()}
        ctx.setdefault("cleanup", []).append(lambda: close_workers(ctx.pop("torch_workers", {})))
    return ctx["torch_workers"]


def close_workers(workers: dict[str, Worker]) -> None:
    for w in workers.values():
        w.close()


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    import jaxreg as jr
    from benchmarks import bench_ensemble

    if not torch_available():
        return [
            Row(
                "3 torch",
                "ensemble step vs PyTorch",
                "-",
                "-",
                status="skipped",
                note="torch not installed (pip install 'jaxreg[bench]')",
            )
        ]
    emap, _ = bench_ensemble.ensemble_map()
    rows: list[Row] = []
    pool = workers(ctx)
    ctx["torch_info"] = {k: w.info for k, w in pool.items()}
    for n in settings.torch_members:
        # The JAX side: jaxreg's helper if present, else the faster of plain vmap / loop measured in section 2.
        which = "jaxreg" if emap is not None else ctx.get("ensemble_jax", {}).get(n, {}).get("best", "vmap")
        if which == "jaxreg" and emap is None:
            which = "vmap"
        jfn, jargs, _ = bench_ensemble.build(n, which)
        fns, args, labels = [jfn], [jargs], ["jax"]
        chunked = bench_ensemble.build(n, "chunked") if which == "jaxreg" else None
        if chunked is not None:  # the state held as jr.ensemble.Chunked blocks (size measured in section 2)
            fns, args, labels = [*fns, chunked[0]], [*args, chunked[1]], [*labels, "jax chunked"]
        ids = []
        for wname, w in pool.items():
            for kind in ("loop", "vmap"):
                wid = w.setup(kind, n)
                ids.append((w, wid))
                fns.append(w.timer(wid))
                args.append(())
                labels.append(f"torch {kind}, {wname}")
        ts = jr.benchmark.interleave(
            fns,
            args,
            rounds=settings.pairs,
            warmup=settings.warmup,
            number=settings.number,
            min_time=settings.min_time,
        )
        t = dict(zip(labels, ts))
        torch_labels = [k for k in labels if k.startswith("torch")]
        best = min(torch_labels, key=lambda k: t[k].median)
        jlabel = {"jaxreg": "jr.ensemble.train_step", "vmap": "jax.vmap (hand)", "loop": "JAX loop (hand)"}[which]
        jaxes = [("jax", jlabel)]
        if chunked is not None:
            jaxes.append(
                ("jax chunked", f"jr.ensemble.train_step, Chunked state (blocks of {bench_ensemble._BLOCK[n]})")
            )
        for key, label in jaxes:
            speedups = [b / a for a, b in zip(t[key].times, t[best].times)]
            rows.append(
                Row(
                    "3 torch",
                    f"ensemble step, N = {n}",
                    label,
                    f"best torch: {best}",
                    unit="member-steps/s",
                    jaxreg_value=n / t[key].median,
                    baseline_value=n / t[best].median,
                    ratio=float(np.median(speedups)),
                    ratio_q25=float(np.quantile(speedups, 0.25)),
                    ratio_q75=float(np.quantile(speedups, 0.75)),
                    ratios=speedups,
                    jaxreg_rel_iqr=t[key].rel_iqr,
                    baseline_rel_iqr=t[best].rel_iqr,
                    target=">= 2.0",
                    note="; ".join(f"{k}: {n / t[k].median:.0f}" for k in torch_labels),
                    extra={"member_steps_per_s": {k: n / v.median for k, v in t.items()}, "jax_method": which},
                )
            )
        for w, wid in ids:
            w.drop(wid)
    return rows


# ----------------------------------------------------------------------------- the worker


def _worker_main(threads: int) -> None:  # pragma: no cover - runs in a subprocess
    import time

    import torch
    from torch import nn
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from benchmarks.common import digits

    xs, ys = digits()
    x_all = torch.from_numpy(xs)
    xb, yb = torch.from_numpy(xs[:BATCH]), torch.from_numpy(ys[:BATCH]).long()

    def make_model() -> nn.Module:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
            layers.append(nn.Linear(a, b))
            if i < len(SIZES) - 2:
                layers += [nn.ReLU(), nn.Dropout(RATE)]
        return nn.Sequential(*layers)

    def adam(named: list[tuple[str, torch.Tensor]]) -> torch.optim.Optimizer:
        weights = [p for name, p in named if name.endswith("weight")]
        biases = [p for name, p in named if not name.endswith("weight")]
        return torch.optim.Adam(
            [{"params": weights, "weight_decay": 2 * L2}, {"params": biases, "weight_decay": 0.0}], lr=LR
        )

    loss_fn = nn.CrossEntropyLoss()

    def setup_loop(n: int):
        models = [make_model().train() for _ in range(n)]
        opts = [adam(list(m.named_parameters())) for m in models]

        def call():
            for m, o in zip(models, opts):
                o.zero_grad(set_to_none=True)
                loss_fn(m(xb), yb).backward()
                o.step()

        return call

    def setup_vmap(n: int):
        models = [make_model().train() for _ in range(n)]
        params, buffers = stack_module_state(models)
        base = make_model().to("meta").train()

        def member_loss(p, b, x, y):
            return loss_fn(functional_call(base, (p, b), (x,)), y)

        grad_fn = vmap(grad(member_loss), in_dims=(0, 0, None, None), randomness="different")
        leaves = {k: v.detach().requires_grad_(False) for k, v in params.items()}
        opt = adam(list(leaves.items()))

        def call():
            grads = grad_fn(leaves, buffers, xb, yb)
            for k, v in leaves.items():
                v.grad = grads[k]
            opt.step()

        return call

    def setup_mc(k: int):
        model = make_model().train()

        def call():
            with torch.no_grad():
                s = torch.zeros(x_all.shape[0], SIZES[-1])
                s2 = torch.zeros_like(s)
                for _ in range(k):
                    p = torch.softmax(model(x_all), dim=-1)
                    s += p
                    s2 += p * p
                mean = s / k
                return mean, s2 / k - mean * mean

        return call

    builders = {"loop": setup_loop, "vmap": setup_vmap, "mc_loop": setup_mc}
    workloads: dict[str, Any] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            op = msg["op"]
            if op == "quit":
                print(json.dumps({"ok": True}), flush=True)
                return
            if op == "info":
                reply = {
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                }
            elif op == "setup":
                wid = f"{msg['kind']}-{msg['n']}-{len(workloads)}"
                workloads[wid] = builders[msg["kind"]](int(msg["n"]))
                reply = {"id": wid}
            elif op == "time":
                fn = workloads[msg["id"]]
                t0 = time.perf_counter()
                for _ in range(int(msg["number"])):
                    fn()
                reply = {"seconds": time.perf_counter() - t0}
            elif op == "drop":
                workloads.pop(msg["id"], None)
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker_main(int(sys.argv[sys.argv.index("--threads") + 1]))
