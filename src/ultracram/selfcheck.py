"""``ultracram selfcheck``: one command that checks and measures every GPU path.

Size (~480 lines): eight steps, each an argument builder and a summary of its figures, plus
the end-to-end step and the driver: one prepared check, read top to bottom.

A GPU machine is lent to this project only at times and for minutes, with nothing to install
and no network, so everything a first GPU run should find out is prepared here and runs in one
command (``scripts/gpu_check.sh OUT`` calls it):

1. ``env``: GPU name, torch / Triton / CUDA versions, bf16 support;
2. ``pytest``: ``pytest -m gpu`` (Triton kernels vs the masked reference on CUDA, whole models
   through ``for_inference``, an engine step in bf16);
3. ``ffn`` and ``model``: ``bench ffn`` / ``bench model`` (the FFF layer and the whole
   ultrafastbert-1x11 encoder vs dense and crammed-bert, outputs checked);
4. ``fff-train``: ``bench fff-train`` in bf16 (1x11, 16x7, 128x4: conditional vs masked vs GLU);
5. ``train`` and ``train-compile``: ``bench train --full`` in bf16-mixed at the largest micro
   batch that fits (found by doubling), then with ``--compile`` for crammed-bert and
   ultrafastbert-1x11 at the batch found: tokens/s, MFU, peak memory;
6. ``e2e``: shards from the embedded sample, ``pretrain --preset crammed-bert --compile`` for a
   fixed number of steps, the same run SIGKILLed after a checkpoint and resumed (final weights
   compared: bitwise, or the largest difference), then ``glue --tasks rte`` (embedded slice)
   from its final checkpoint;
7. a summary: ``OUT/summary.md`` (printed) and every figure in ``OUT/selfcheck.json``.

Each step is a subprocess with its own time limit, logged to ``OUT/logs/STEP.log``; a failure
or a time-out is recorded with its error and the next step runs. ``--device cpu --tiny`` runs
the same steps with tiny presets in seconds each: the test suite runs it, so the script cannot
rot between GPU runs. The package runs from a source tree without installing
(``PYTHONPATH=src python -m ultracram selfcheck``), with only torch, Lightning, numba,
tokenizers, safetensors, scikit-learn, matplotlib, rich (and Triton on GPUs).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ultracram.fileio import atomic_write_json, atomic_write_text
from ultracram.settings import comma_list

ROOT = Path(__file__).resolve().parents[2]  # the source tree (tests/ for the pytest step)


@dataclass(frozen=True)
class Step:
    """One check: ``argv(ctx)`` is the command; ``limit`` / ``tiny_limit`` its time limits (s)."""

    name: str
    limit: float
    tiny_limit: float
    argv: Callable[[Context], list[str]]
    summarize: Callable[[Context], dict[str, Any]]


@dataclass
class Context:
    out: Path
    device: str
    tiny: bool
    python: str
    results: dict[str, Any]

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def read(self, name: str) -> dict[str, Any]:
        path = self.path(name)
        return json.loads(path.read_text()) if path.is_file() else {}

    def ultracram(self, *args: str) -> list[str]:
        return [self.python, "-m", "ultracram", *args]


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


def _env_argv(ctx: Context) -> list[str]:
    return [ctx.python, "-m", "ultracram.selfcheck", "env", "--out", str(ctx.path("env.json")), "--device",
            ctx.device]  # fmt: skip


def environment(device: str) -> dict[str, Any]:
    """What the machine is: Python, torch, CUDA, Triton, the GPU, bf16 support, CPU cores."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count(), "machine": platform.machine(),
        "device": device,
    }  # fmt: skip
    for module in ("triton", "lightning", "numba", "tokenizers", "safetensors", "transformers", "datasets"):
        try:  # the installed version, without importing the package
            info[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            info[module] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported(),
                    gpus=torch.cuda.device_count())  # fmt: skip
    return info


# The modules that hold ``gpu`` tests, named: collecting every test module would import the
# CPU-side test dependencies too (datasets, ...), which a bare GPU machine may not have.
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_kernels.py")


def _pytest_argv(ctx: Context) -> list[str]:
    return [ctx.python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs",
            "--continue-on-collection-errors", f"--junitxml={ctx.path('pytest.xml')}",
            *(str(ROOT / f) for f in GPU_TEST_FILES)]  # fmt: skip


def _pytest_summary(ctx: Context) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    path = ctx.path("pytest.xml")
    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _ffn_argv(ctx: Context) -> list[str]:
    if ctx.tiny:
        extra = ["--tokens", "1,64", "--depth", "5", "--min_time", "0.02", "--threads", "1"]
    else:
        extra = ["--tokens", "1,64,1024,4096,16384", "--min_time", "0.2"]
    return ctx.ultracram("bench", "ffn", "--device", ctx.device, *extra, "--out", str(ctx.path("ffn.json")),
                         "--plot", str(ctx.path("ffn.png")))  # fmt: skip


def _ffn_summary(ctx: Context) -> dict[str, Any]:
    r = ctx.read("ffn.json")
    if not r:
        return {}
    fast = "triton" if ctx.device == "cuda" else "cpu"
    rows = {row["tokens"]: row for row in r["ratios"]}
    return {
        f"{fast}_vs_dense_at_{n}": round(row[f"{fast}_vs_dense"], 2) for n, row in sorted(rows.items())
    } | {"max_rel_error": max((c.get("max_relative_error", 0.0) for c in r.get("checks", [])), default=None)}


def _model_argv(ctx: Context) -> list[str]:
    extra = (["--preset", "ultrafastbert-tiny", "--baseline", "crammed-bert-tiny", "--batches", "1", "--min_time",
              "0.02", "--threads", "1"] if ctx.tiny else ["--batches", "1,32,128", "--min_time", "0.5"])  # fmt: skip
    return ctx.ultracram(
        "bench", "model", "--device", ctx.device, *extra, "--out", str(ctx.path("model.json"))
    )


def _model_summary(ctx: Context) -> dict[str, Any]:
    r = ctx.read("model.json")
    if not r:
        return {}
    out: dict[str, Any] = {}
    for row in r["ratios"]:
        base = next(k for k in row if k.startswith("fast_vs_") and k != "fast_vs_masked")
        out[f"batch {row['batch']}"] = {
            "vs_masked": round(row["fast_vs_masked"], 2),
            base: round(row[base], 2),
        }
    out["max_rel_error"] = max(c["max_relative_error"] for c in r["checks"])
    out["tokens_off"] = sum(c["tokens_off"] for c in r["checks"])
    return out


def _fff_train_argv(ctx: Context) -> list[str]:
    if ctx.tiny:
        extra = [
            "--shapes",
            "ultrafastbert-1x5",
            "--tokens",
            "64",
            "--repeats",
            "1",
        ]  # hidden 768, as the GLU
    else:
        extra = ["--shapes", "ultrafastbert-1x11,ultrafastbert-16x7,ultrafastbert-128x4", "--tokens", "16384",
                 "--repeats", "5", "--dtype", "bfloat16"]  # fmt: skip
    return ctx.ultracram("bench", "fff-train", "--device", ctx.device, *extra,
                         "--out", str(ctx.path("fff_train.json")))  # fmt: skip


def _fff_train_summary(ctx: Context) -> dict[str, Any]:
    r = ctx.read("fff_train.json")
    out = {}
    for row in r.get("layers", []):
        if row.get("path") == "conditional":
            out[row["shape"]] = {"vs_masked": round(row["speedup_vs_masked"], 2),
                                 "vs_glu": round(row["speedup_vs_glu"], 2),
                                 "max_rel_err": row.get("max_rel_err_vs_masked")}  # fmt: skip
    return out


TINY_TRAIN = "crammed-bert-tiny,ultrafastbert-tiny"
FULL_TRAIN = "bert-base,crammed-bert,ultrafastbert-1x11,fnet,switch"


def _train_argv(ctx: Context) -> list[str]:
    if ctx.tiny:
        extra = ["--presets", TINY_TRAIN, "--steps", "1", "--warmup", "1", "--batch_size", "2", "--max_batch", "4",
                 "--seq_len", "32", "--fff_paths", "masked,conditional"]  # fmt: skip
    else:
        extra = ["--presets", FULL_TRAIN, "--steps", "5", "--warmup", "2", "--batch_size", "32", "--max_batch",
                 "1024", "--fff_paths", "masked,conditional", "--precision", "bf16-mixed"]  # fmt: skip
    return ctx.ultracram(
        "bench", "train", "--device", ctx.device, *extra, "--out", str(ctx.path("train.json"))
    )


def _train_compile_argv(ctx: Context) -> list[str]:
    # Compiling every preset at every batch tried would take far longer than the whole check:
    # the two presets the targets name, at the micro batch the uncompiled step found.
    found = {r["preset"]: r["batch_size"] for r in ctx.read("train.json").get("results", [])}
    presets = "crammed-bert-tiny" if ctx.tiny else "crammed-bert,ultrafastbert-1x11"
    batch = str(min((found.get(p, 32) for p in presets.split(",")), default=32))
    extra = (["--steps", "1", "--warmup", "1", "--seq_len", "32"] if ctx.tiny
             else ["--steps", "5", "--warmup", "3", "--precision", "bf16-mixed"])  # fmt: skip
    return ctx.ultracram("bench", "train", "--device", ctx.device, "--presets", presets, "--compile", "true",
                         "--batch_size", batch, "--fff_paths", "conditional", *extra,
                         "--out", str(ctx.path("train_compile.json")))  # fmt: skip


def _train_summary_of(name: str) -> Callable[[Context], dict[str, Any]]:
    def summary(ctx: Context) -> dict[str, Any]:
        r = ctx.read(name)
        out = {}
        for row in r.get("results", []):
            label = row["preset"] + (f" [{row['fff_path']}]" if row.get("fff_path") else "")
            out[label] = {"batch": row["batch_size"], "tokens_per_s": round(row["tokens_per_s"]),
                          "mfu": round(row["mfu"], 3), "peak_memory_gb": row.get("peak_memory_gb"),
                          "vs_masked": row.get("vs_masked"), "vs_crammed": row.get("vs_crammed")}  # fmt: skip
        return out

    return summary


def _e2e_argv(ctx: Context) -> list[str]:
    return [ctx.python, "-m", "ultracram.selfcheck", "e2e", "--out", str(ctx.path("e2e")), "--device", ctx.device,
            *(["--tiny"] if ctx.tiny else [])]  # fmt: skip


STEPS = [
    Step("env", 30, 30, _env_argv, lambda ctx: ctx.read("env.json")),
    Step("pytest", 100, 60, _pytest_argv, _pytest_summary),
    Step("ffn", 40, 30, _ffn_argv, _ffn_summary),
    Step("model", 40, 30, _model_argv, _model_summary),
    Step("fff-train", 40, 30, _fff_train_argv, _fff_train_summary),
    Step("train", 110, 60, _train_argv, _train_summary_of("train.json")),
    Step("train-compile", 70, 90, _train_compile_argv, _train_summary_of("train_compile.json")),
    Step("e2e", 110, 90, _e2e_argv, lambda ctx: ctx.read("e2e/e2e.json")),
]
# The GPU limits add up to 540 s: with the start-up, within one 10-minute call on the device.
STEP_NAMES = [s.name for s in STEPS]


# --------------------------------------------------------------------------------------------
# The end-to-end step (runs inside its own subprocess)
# --------------------------------------------------------------------------------------------


def end_to_end(out: Path, device: str, tiny: bool) -> dict[str, Any]:
    """Shards -> pretrain (full, and killed + resumed) -> GLUE RTE; returns and writes figures."""
    import torch
    from safetensors.torch import load_file

    from ultracram.data.corpus import prepare_corpus
    from ultracram.data.sample import read_sample_paragraphs, sample_glue_dir
    from ultracram.data.tokenizer import save_tokenizer, train_tokenizer
    from ultracram.train.finetune import run_glue
    from ultracram.train.pretrain import PretrainConfig, pretrain

    if out.exists():
        shutil.rmtree(out)  # the check's own scratch directory, made below
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    paragraphs = read_sample_paragraphs()[: 400 if tiny else None]
    tok = train_tokenizer(paragraphs, vocab_size=1024 if tiny else 8192)
    save_tokenizer(tok, out / "tokenizer.json")
    (out / "text.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    seq_len = 32 if tiny else 128
    prepare_corpus([out / "text.txt"], out / "shards", out / "tokenizer.json", seq_len=seq_len, workers=0,
                   max_token_ratio=1.0)  # fmt: skip
    figures: dict[str, Any] = {"data_s": round(time.perf_counter() - t0, 1)}
    steps, kill_after, every = (6, 4, 3) if tiny else (40, 25, 10)
    values = dict(preset="crammed-bert-tiny" if tiny else "crammed-bert", data=str(out / "shards"),
                  budget=f"{steps}-steps", micro_batch_size=8 if tiny else 64, batch_size=8 if tiny else 256,
                  batch_ramp_until=0.0, checkpoint_every_steps=every, log_every_steps=1, progress=False,
                  tensorboard=False, val_batches=2, compile=not tiny, accelerator=device,
                  precision="32-true" if device == "cpu" else "bf16-mixed")  # fmt: skip
    t0 = time.perf_counter()
    full = pretrain(PretrainConfig(**values, out=str(out / "full")))
    figures["pretrain_s"] = round(time.perf_counter() - t0, 1)
    figures.update({k: full[k] for k in ("steps", "tokens", "first_loss", "final_loss", "val_loss", "tokens_per_s",
                                         "precision")})  # fmt: skip
    # The same run, SIGKILLed after step `kill_after` (its newest state is older), then resumed.
    killed = PretrainConfig(**values, out=str(out / "killed"))
    script = (
        "import os, signal\n"
        "from ultracram.train.pretrain import FaultInjection, PretrainConfig, pretrain\n"
        f"config = PretrainConfig(**{killed.to_dict()!r})\n"
        "def kill(step):\n"
        f"    if step == {kill_after}: os.kill(os.getpid(), signal.SIGKILL)\n"
        "pretrain(config, faults=FaultInjection(after_step=kill))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    figures["killed_returncode"] = r.returncode
    t0 = time.perf_counter()
    pretrain(killed, resume=True)
    figures["resume_s"] = round(time.perf_counter() - t0, 1)
    a = load_file(str(out / "full" / "final" / "model.safetensors"))
    b = load_file(str(out / "killed" / "final" / "model.safetensors"))
    diffs = [float((a[k].float() - b[k].float()).abs().max()) for k in a]
    figures["resume_bitwise"] = all(torch.equal(a[k], b[k]) for k in a)
    figures["resume_max_abs_diff"] = max(diffs)
    t0 = time.perf_counter()
    glue = run_glue([f"e2e={out / 'full' / 'final'}"], [sample_glue_dir()], out / "glue", tasks="rte",
                    overrides={"epochs": 1 if tiny else 3, **({"max_train_examples": 32} if tiny else {})},
                    device=device, log=lambda m: None)  # fmt: skip
    figures["glue_s"] = round(time.perf_counter() - t0, 1)
    figures["rte_accuracy"] = glue["checkpoints"][0]["tasks"]["rte"]["summary"]["dev"]["accuracy"]["median"]
    atomic_write_json(out / "e2e.json", figures)
    return figures


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def run_selfcheck(
    out: str,
    device: Literal["cuda", "cpu"] = "cuda",
    tiny: bool = False,
    only: list[str] | str | None = None,
) -> dict[str, Any]:
    """check and measure every GPU path in one command (scripts/gpu_check.sh); --device cpu --tiny: dry run

    Runs, each as a subprocess with its own time limit (a failure or time-out is recorded and
    the next step runs): env, pytest -m gpu, bench ffn, bench model, bench fff-train (bf16),
    bench train --full (bf16-mixed, largest micro batch that fits), the same with --compile for
    crammed-bert and ultrafastbert-1x11, and an end-to-end pretrain (killed and resumed) + GLUE
    RTE. Writes OUT/selfcheck.json (every figure), OUT/summary.md (printed at the end),
    OUT/logs/STEP.log and the benchmarks' JSON and plots. About 8 minutes on one H100/H200.
    See docs/gpu.md.

    Args:
        out: directory for every result (created)
        device: the device to check (cpu: a dry run of the same steps)
        tiny: tiny presets, seconds per step (the CPU dry run)
        only: comma list of steps: env,pytest,ffn,model,fff-train,train,train-compile,e2e (default: all)
    """
    return run_steps(out, device=device, tiny=tiny, only=comma_list(only))


def run_steps(
    out: str | Path, *, device: str = "cuda", tiny: bool = False, only: Sequence[str] | None = None,
    python: str = sys.executable, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Run the steps (all, or ``only``) into ``out`` with ``python``, reporting progress to
    ``log``; returns what is written to selfcheck.json."""
    unknown = [s for s in only or () if s not in STEP_NAMES]
    if unknown:
        raise ValueError(f"unknown selfcheck step(s) {unknown}; steps: {', '.join(STEP_NAMES)}")
    out = Path(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    ctx = Context(out, device, tiny, python, {})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                       if p), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    report: dict[str, Any] = {"device": device, "tiny": tiny, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "steps": {}}  # fmt: skip
    start = time.perf_counter()
    for step in STEPS:
        if only and step.name not in only:
            continue
        limit = step.tiny_limit if tiny else step.limit
        argv = step.argv(ctx)
        log(
            f"[selfcheck] {step.name}: {' '.join(argv[2:] if argv[1] == '-m' else argv)} (limit {limit:.0f} s)"
        )
        t0 = time.perf_counter()
        status, error = _run(argv, out / "logs" / f"{step.name}.log", limit, env)
        seconds = time.perf_counter() - t0
        try:
            figures = step.summarize(ctx)
        except Exception as e:  # a summary must never stop the other steps
            figures, error = {}, error or f"summary failed: {type(e).__name__}: {e}"
        report["steps"][step.name] = {"status": status, "seconds": round(seconds, 1), "error": error,
                                      "figures": figures, "log": f"logs/{step.name}.log"}  # fmt: skip
        log(f"[selfcheck] {step.name}: {status} in {seconds:.0f} s" + (f": {error}" if error else ""))
        atomic_write_json(
            out / "selfcheck.json", {**report, "seconds": round(time.perf_counter() - start, 1)}
        )
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["targets"] = targets(report)
    atomic_write_json(out / "selfcheck.json", report)
    summary = summary_markdown(report)
    atomic_write_text(out / "summary.md", summary)
    log(summary)
    return report


def _run(argv: list[str], log_path: Path, limit: float, env: dict[str, str]) -> tuple[str, str | None]:
    """Run ``argv`` with its output in ``log_path``; (status, error) with status ok / failed / timeout.
    A time-out kills the step's whole process group (DDP ranks, compile workers)."""
    with open(log_path, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", f"no result within {limit:.0f} s"
    if rc == 0:
        return "ok", None
    tail = [
        line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
    ]
    return "failed", f"exit {rc}: {tail[-1][:300] if tail else 'no output'}"


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU targets, judged from the figures (``None``: not measured in this run, or a
    ``--tiny`` dry run, where only the resume check means something)."""
    steps = report["steps"]

    def fig(step: str) -> dict[str, Any]:
        return steps.get(step, {}).get("figures", {}) or {}

    train, compiled, e2e = fig("train"), fig("train-compile"), fig("e2e")
    suffix = "-tiny" if report["tiny"] else ""
    ufb = "ultrafastbert-tiny" if report["tiny"] else "ultrafastbert-1x11"
    cond = train.get(f"{ufb} [conditional]", {})
    crammed_c = compiled.get(f"crammed-bert{suffix}", {})
    pytest = fig("pytest")
    out = [
        ("GPU tests pass (Triton kernels = masked reference)",
         None if not pytest else pytest.get("failures", 1) + pytest.get("errors", 1) == 0 and pytest.get("passed", 0) > 0),
        (f"{ufb} conditional >= 1.5x its masked path", None if cond.get("vs_masked") is None else cond["vs_masked"] >= 1.5),
        (f"{ufb} conditional >= crammed-bert tokens/s", None if cond.get("vs_crammed") is None else cond["vs_crammed"] >= 1.0),
        (f"crammed-bert{suffix} bf16 + compile MFU >= 40%", None if "mfu" not in crammed_c else crammed_c["mfu"] >= 0.40),
        ("kill + resume gives the same weights", e2e.get("resume_bitwise")),
    ]  # fmt: skip
    if report["tiny"]:
        out = [(t, met if t.startswith("kill") else None) for t, met in out]
    return [{"target": t, "met": met} for t, met in out]


def summary_markdown(report: dict[str, Any]) -> str:
    env = report["steps"].get("env", {}).get("figures", {})
    lines = [f"# ultracram selfcheck ({report['device']}{', tiny' if report['tiny'] else ''})", "",
             f"{env.get('gpu') or env.get('machine', '?')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"Triton {env.get('triton')}, bf16 {env.get('bf16')}; started {report['started']}, "
             f"{report['seconds']:.0f} s in all.", "",
             "| step | status | seconds | figures |", "|---|---|---:|---|"]  # fmt: skip
    for name, s in report["steps"].items():
        figures = "" if name == "env" else json.dumps(s["figures"], default=str)
        figures = (figures[:400] + " ...") if len(figures) > 400 else figures
        error = f" **{s['error']}**" if s["error"] else ""
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.0f} | {figures.replace('|', '/')}{error} |")
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {t['target']} | {'-' if t['met'] is None else 'yes' if t['met'] else 'NO'} |"
              for t in report.get("targets", [])]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ultracram.selfcheck env|e2e ...``: the steps that run inside a subprocess."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ultracram.selfcheck")
    p.add_argument("what", choices=["env", "e2e"])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    if args.what == "env":
        info = environment(args.device)
        atomic_write_json(Path(args.out), info)
        print(json.dumps(info, indent=2))
    else:
        print(json.dumps(end_to_end(Path(args.out), args.device, args.tiny), indent=2))


if __name__ == "__main__":
    main()
