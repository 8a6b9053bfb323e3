"""Measures what one training step, teacher logits and evaluation cost on the CPU.

Usage: .venv/bin/python benchmarks/step_cost.py [--threads N] [--models NAME ...]
           [--parts train teacher evaluate compile] [--steps 30] [--repeats 5]
e.g.   .venv/bin/python benchmarks/step_cost.py --threads 2 --models resnet18 --parts train

Inputs are 1x28x28 with 10 classes, the paper's batch size 8. Prints markdown tables:

* train: one step as ``protocol.directional_pass`` runs it for a non-leaf (a pool of
  8 bridge samples is one batch), with a) the project's optimizer, b) SGD with
  ``foreach=True``, c) model and inputs in ``channels_last``, d) b and c together, and
  SGD with ``fused=True``;
* teacher: ``protocol.teacher_logits`` over 512 samples in "train" and "eval" mode at
  chunk 8, and eval chunks of 256 (ms per sample);
* evaluate: ``protocol.evaluate`` on 500 samples at batch 256, 64 and 1024 (ms per sample);
* compile: ``torch.compile`` of resnet10 for the train step, in a child process
  killed after ``--compile-timeout`` seconds.

The machine is assumed shared and noisy: variants run interleaved (A, B, C, D, A, ...),
each table cell is a median, and a ratio is the median of the per-round ratios
variant/baseline, so a burst of load hits both sides of a pair alike. Use
``--threads N`` only with N cores free: when other work holds them, OpenMP's barriers
wait on descheduled threads and steps have been seen to run 20-30x slower.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch
from torch import nn

from rayagg.learning import protocol
from rayagg.learning.models import BUILTIN_MODELS, build_model

BATCH = 8
CLASSES = 10
SHAPE = (1, 28, 28)
SETTINGS = protocol.DistillSettings(batch_size=BATCH)  # paper's T=3, beta=10
OPTIMIZER = dict(lr=0.001, momentum=0.9, weight_decay=5e-4)  # the project's SGD
DEFAULT_MODELS = ["cnn", "resnet10", "resnet18", "resnet10-imagenet", "resnet18-imagenet"]
PARTS = ["train", "teacher", "evaluate", "compile"]


# --- models and data -----------------------------------------------------------------

def make_model(name: str) -> nn.Module:
    """Builds ``name`` through rayagg (the ImageNet-stem ResNets here if rayagg lacks them)."""
    torch.manual_seed(0)
    if name in BUILTIN_MODELS:
        return build_model(name, in_channels=SHAPE[0], image_size=SHAPE[1], num_classes=CLASSES)
    # For a rayagg that predates the ImageNet-stem builtins.
    if name in ("resnet10-imagenet", "resnet18-imagenet"):
        return _imagenet_resnet([1, 1, 1, 1] if name.startswith("resnet10") else [2, 2, 2, 2])
    raise SystemExit(f"unknown model {name!r}")


def _imagenet_resnet(layers: list[int]) -> nn.Module:
    """torchvision's ResNet with its own 7x7 stride-2 stem and max-pool, for one channel."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, layers, num_classes=CLASSES)
    model.conv1 = nn.Conv2d(SHAPE[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def make_data(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images, labels and teacher logits: timing does not depend on their values."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(count, *SHAPE, generator=gen),
            torch.randint(0, CLASSES, (count,), generator=gen),
            torch.randn(count, CLASSES, generator=gen))


# --- timing --------------------------------------------------------------------------

def interleaved(variants: dict[str, Callable[[], object]], rounds: int,
                warmup: int) -> dict[str, list[float]]:
    """Runs each variant once per round, in turn, and returns each one's seconds per round."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def summarise(times: dict[str, list[float]], per: int = 1) -> dict[str, tuple[float, float]]:
    """Returns {variant: (median ms per unit, median paired ratio to the first variant)}."""
    base = next(iter(times.values()))
    return {name: (statistics.median(t) * 1e3 / per,
                   statistics.median(v / b for v, b in zip(t, base)))
            for name, t in times.items()}


def cell(ms: float, ratio: float, baseline: bool = False) -> str:
    """Formats one table cell: the median, and its ratio unless it is the baseline."""
    text = f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"
    return text if baseline else f"{text} ({ratio:.2f}x)"


# --- a-d and fused SGD: the training step --------------------------------------------

def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               pool: tuple[torch.Tensor, ...]) -> Callable[[], float]:
    """One step as the project runs it: directional_pass over a pool of exactly one batch."""
    generator = torch.Generator().manual_seed(0)
    return lambda: protocol.directional_pass(model, optimizer, *pool, settings=SETTINGS,
                                             generator=generator)


# Step variants: extra SGD keyword arguments (none: protocol.make_optimizer) and whether
# model and inputs are channels_last. make_optimizer leaves foreach/fused unset, which
# on CPU tensors means SGD's per-tensor Python loop.
TRAIN_VARIANTS = {
    "a": (None, False),
    "b": (dict(foreach=True), False),
    "c": (None, True),
    "d": (dict(foreach=True), True),
    "fused": (dict(fused=True), False),
}


def train_variants(name: str) -> dict[str, Callable[[], float]]:
    """Builds the step variants on copies of one model, so all start from equal weights."""
    base = make_model(name)
    images, labels, teacher = make_data(BATCH)
    variants = {}
    for key, (sgd_options, channels_last) in TRAIN_VARIANTS.items():
        model = copy.deepcopy(base)
        pool = images
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            pool = images.contiguous(memory_format=torch.channels_last)
        optimizer = (protocol.make_optimizer(model, **OPTIMIZER) if sgd_options is None
                     else torch.optim.SGD(model.parameters(), **OPTIMIZER, **sgd_options))
        variants[key] = train_step(model, optimizer, (pool, labels, teacher))
    return variants


def bench_train(name: str, steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    return summarise(interleaved(train_variants(name), steps, warmup))


# --- e: teacher logits ---------------------------------------------------------------

def eval_chunked(model: nn.Module, inputs: torch.Tensor, chunk: int) -> torch.Tensor:
    """Eval-mode logits in large chunks: running statistics make the chunk size free to pick."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(batch) for batch in inputs.split(chunk)])
    finally:
        model.train(was_training)


def bench_teacher(name: str, repeats: int, count: int = 512) -> dict[str, tuple[float, float]]:
    model = make_model(name)
    inputs = make_data(count)[0]
    variants = {
        "train/8": lambda: protocol.teacher_logits(model, inputs, batch_size=BATCH, mode="train"),
        "eval/8": lambda: protocol.teacher_logits(model, inputs, batch_size=BATCH, mode="eval"),
        "eval/256": lambda: eval_chunked(model, inputs, 256),
    }
    return summarise(interleaved(variants, repeats, warmup=1), per=count)


# --- f: evaluation -------------------------------------------------------------------

def bench_evaluate(name: str, repeats: int, count: int = 500) -> dict[str, tuple[float, float]]:
    model = make_model(name)
    images, labels, _ = make_data(count)
    variants = {f"b{size}": (lambda size=size: protocol.evaluate(model, images, labels, size))
                for size in (256, 64, 1024)}
    return summarise(interleaved(variants, repeats, warmup=1), per=count)


# --- g: torch.compile, in a child so a slow compile can be cut off -------------------

def compile_child(name: str, steps: int, warmup: int) -> dict[str, float]:
    """Times the first compiled step (compilation), then compiled vs eager steps interleaved."""
    eager = train_variants(name)["a"]
    model = make_model(name)
    compiled = torch.compile(model)
    step = train_step(compiled, protocol.make_optimizer(compiled, **OPTIMIZER), make_data(BATCH))
    start = time.perf_counter()
    step()  # compiles forward and backward graphs
    compile_s = time.perf_counter() - start
    result = summarise(interleaved({"eager": eager, "compiled": step}, steps, warmup))
    return {"compile_s": compile_s, "eager_ms": result["eager"][0],
            "compiled_ms": result["compiled"][0], "ratio": result["compiled"][1]}


def bench_compile(name: str, args: argparse.Namespace) -> str:
    """Runs compile_child in a fresh interpreter; returns one markdown row."""
    command = [sys.executable, __file__, "--compile-child", name, "--threads", str(args.threads),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    start = time.perf_counter()
    # A fresh inductor cache: a warm one from an earlier run would hide the compile cost.
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=args.compile_timeout)
        except subprocess.TimeoutExpired:
            done = None
    if done is None:
        return f"| {name} | gave up after {args.compile_timeout} s | | | |"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
        return f"| {name} | failed after {time.perf_counter() - start:.0f} s: {reason} | | | |"
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return (f"| {name} | {r['compile_s']:.1f} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} "
            f"| {r['ratio']:.2f}x |")


# --- output --------------------------------------------------------------------------

def table(title: str, header: list[str], rows: list[str]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows), flush=True)


def result_row(name: str, result: dict[str, tuple[float, float]]) -> str:
    cells = [cell(ms, ratio, baseline=i == 0) for i, (ms, ratio) in enumerate(result.values())]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME")
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    parser.add_argument("--steps", type=int, default=30, help="timed train steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed train steps per variant")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per teacher/evaluate variant")
    parser.add_argument("--compile-timeout", type=int, default=180, help="seconds")
    parser.add_argument("--compile-child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.compile_child:
        print(json.dumps(compile_child(args.compile_child, args.steps, args.warmup)))
        return

    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, "
          f"input {'x'.join(map(str, SHAPE))}, {CLASSES} classes; "
          f"cells: median (median paired ratio to the first column)")
    if "train" in args.parts:
        table(f"Train step, ms ({args.steps} interleaved steps after {args.warmup} warm-ups)",
              ["model", "a: baseline", "b: foreach", "c: channels_last", "d: foreach+ch_last",
               "fused SGD"],
              [result_row(name, bench_train(name, args.steps, args.warmup))
               for name in args.models])
    if "teacher" in args.parts:
        table(f"Teacher logits over 512 samples, ms per sample (median of {args.repeats})",
              ["model", "train, chunk 8", "eval, chunk 8", "eval, chunk 256"],
              [result_row(name, bench_teacher(name, args.repeats)) for name in args.models])
    if "evaluate" in args.parts:
        table(f"evaluate() on 500 samples, ms per sample (median of {args.repeats})",
              ["model", "batch 256", "batch 64", "batch 1024"],
              [result_row(name, bench_evaluate(name, args.repeats)) for name in args.models])
    # Compilation is tried for the small-image resnet10 only: the one model it might pay for.
    if "compile" in args.parts and "resnet10" in args.models:
        table("torch.compile, resnet10 train step",
              ["model", "compile s", "eager ms", "compiled ms", "ratio"],
              [bench_compile("resnet10", args)])


if __name__ == "__main__":
    main()
