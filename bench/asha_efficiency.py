"""ASHA efficiency: GPU time to reach the best configurations, for random search, stop-only ASHA and pause ASHA.

The three searches get the same configurations (a manifest's seeded random
search over learning rate, width and dropout, `--configs` of them, in the same
order) and run them on a simulated cluster of `--parallel` GPUs: every tick
each live run trains one epoch (one GPU-epoch) and reports its validation
accuracy, a known function of the epoch (a saturating curve whose height and
speed depend on the hyperparameters, plus small seeded noise, so curves cross
as real ones do). The searchers are the real ones from
`runyard.server.domain.searchers`, fed exactly the inputs the control plane
would feed them:

* random: the same sequence with no early stopping (every run trains all
  `--epochs`);
* stop: today's ASHA (`early_stopping: asha`), which stops a run that misses
  a rung's cut and otherwise lets it train on;
* pause: ASHA with promotions (`asha: {mode: pause}`): every run pauses at
  its rung with a checkpoint, and a free GPU resumes the best promotable
  paused run (the top 1/eta of the highest rung that has one) else starts a
  new configuration. A resumed run continues from its checkpoint, so its GPU
  time counts only the epochs it trains after the resume. The pause is
  reported back at once (RunPaused), as a real agent does within its grace.

For a target accuracy, the figure is the GPU time spent (all runs, stopped
and paused ones included) when a run first finished all `--epochs` at or
above it. The targets: the best final accuracy among all the configurations
("best", what plain random search ends up with), the top 1% and top 5% of
them, and the best accuracy each ASHA variant itself ended with
("stop_answer", "pause_answer": how much longer the others need to match it).
The ratios are GPU times over each other per seed ("random/stop",
"random/pause", "stop/pause"; None where the divisor never trained a run to
that target), summarised over the seeds. "total" compares the GPU time of the
whole searches. Prints JSON.

    .venv/bin/python bench/asha_efficiency.py [--seeds 10] [--configs 500] [--epochs 81] [--min-epochs 1]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.domain.manifest import expand_trials, parse_manifest
from runyard.server.domain.manifest_model import Scalar
from runyard.server.domain.searchers import (
    AshaConfig,
    AshaPauseSearcher,
    AshaSearcher,
    CreateTrial,
    MetricReported,
    Paused,
    PauseRun,
    ResumeRun,
    RunEnded,
    RunOutcome,
    Searcher,
    SearcherInput,
    SequenceSearcher,
    Started,
    StopRun,
    feed,
)


def manifest_text(seed: int, configs: int, parallel: int) -> str:
    return (
        "name: synthetic-digits\nresults: file:///tmp/results\n"
        "command: python train.py --lr ${lr} --width ${width} --dropout ${dropout}\n"
        "hyperparameters:\n"
        "  lr: {type: log, min: 1.0e-5, max: 1.0}\n"
        "  width: {type: categorical, values: [16, 32, 64, 128, 256, 512]}\n"
        "  dropout: {type: double, min: 0.0, max: 0.6}\n"
        f"search: {{method: random, seed: {seed}, max_runs: {configs}, max_parallel: {parallel},\n"
        "         metric: val_accuracy, goal: maximize, early_stopping: asha}\n"
    )


@dataclass(frozen=True)
class Objective:
    """Validation accuracy of a configuration after some epochs: a known, deterministic function."""

    noise: float
    seed: int

    def final(self, trial: dict[str, Scalar]) -> float:
        lr, width, dropout = float(trial["lr"]), float(trial["width"]), float(trial["dropout"])
        return 0.97 - 0.045 * (math.log10(lr) + 2.5) ** 2 - 2.0 / width - 0.15 * (dropout - 0.2) ** 2

    def speed(self, trial: dict[str, Scalar]) -> float:
        """Epochs to get ~63% of the way: big learning rates learn fast, dropout slows learning."""
        lr, dropout = float(trial["lr"]), float(trial["dropout"])
        return 1.5 + 2.5 / (1.0 + math.exp(2.0 * (math.log10(lr) + 3.0))) + 2.0 * dropout

    def accuracy(self, index: int, trial: dict[str, Scalar], epoch: int) -> float:
        jitter = random.Random(f"{self.seed}:{index}:{epoch}").gauss(0.0, self.noise)
        return self.final(trial) * (1.0 - math.exp(-epoch / self.speed(trial))) + jitter


@dataclass(frozen=True)
class Finish:
    """A run that trained all its epochs: when (GPU-epochs spent by then, all runs) and how well."""

    gpu_epochs: int
    accuracy: float


def simulate(
    searcher: Searcher, trials: list[dict[str, Scalar]], objective: Objective, epochs: int
) -> tuple[list[Finish], int]:
    """Run a search on the simulated cluster: every full run's finish in order, and the search's total GPU time.

    GPU time counts every epoch trained by every run, stopped and paused runs included; a resumed run
    goes on from the epochs of its checkpoint (they are not trained, nor counted, again).
    """
    live: dict[str, int] = {}  # run id -> epochs trained
    checkpoint: dict[str, int] = {}  # paused run id -> epochs of its checkpoint
    index_of: dict[str, int] = {}
    gpu = 0
    finishes: list[Finish] = []

    def give(item: SearcherInput) -> None:
        for d in feed(searcher, item):
            if isinstance(d, CreateTrial):
                live[d.run_id] = 0
                index_of[d.run_id] = d.index
            elif isinstance(d, StopRun):
                live.pop(d.run_id, None)
                checkpoint.pop(d.run_id, None)
                give(RunEnded(d.run_id, RunOutcome.STOPPED_EARLY))
            elif isinstance(d, PauseRun):
                checkpoint[d.run_id] = live.pop(d.run_id)
                give(Paused(d.run_id))
            elif isinstance(d, ResumeRun):
                live[d.run_id] = checkpoint.pop(d.run_id)

    give(Started())
    while live:
        for run_id in list(live):
            if run_id not in live:
                continue
            live[run_id] += 1
            gpu += 1
            epoch, index = live[run_id], index_of[run_id]
            value = objective.accuracy(index, trials[index], epoch)
            give(MetricReported(run_id, epoch, value))
            if run_id in live and epoch >= epochs:
                del live[run_id]
                finishes.append(Finish(gpu, value))
                give(RunEnded(run_id, RunOutcome.COMPLETED))
    return finishes, gpu


def first_reaching(finishes: list[Finish], target: float) -> int | None:
    """GPU-epochs spent when a full run first scored at least `target`; None if none did."""
    return next((f.gpu_epochs for f in finishes if f.accuracy >= target), None)


def ratio(numerator: int | None, divisor: int | None) -> float | None:
    return round(numerator / divisor, 2) if numerator and divisor else None


SEARCHES = ("random", "stop", "pause")
RATIOS = (("random", "stop"), ("random", "pause"), ("stop", "pause"))
TARGETS = ("best", "top_1_percent", "top_5_percent", "stop_answer", "pause_answer", "total")


def one_seed(seed: int, args: argparse.Namespace) -> dict[str, object]:
    manifest = parse_manifest(manifest_text(seed, args.configs, args.parallel))
    trials = [dict(t) for t in expand_trials(manifest)]
    objective = Objective(noise=args.noise, seed=seed)

    def name(index: int) -> str:
        return f"run-{index}"

    plain, plain_total = simulate(SequenceSearcher(trials, args.parallel, name), trials, objective, args.epochs)
    stop_config = AshaConfig(min_resource=args.min_epochs, reduction_factor=args.eta, max_resource=args.epochs)
    stop_searcher = AshaSearcher(trials, "maximize", stop_config, args.parallel, name)
    stop, stop_total = simulate(stop_searcher, trials, objective, args.epochs)
    pause_config = AshaConfig(args.min_epochs, args.eta, args.epochs, mode="pause")
    pause_searcher = AshaPauseSearcher(trials, "maximize", pause_config, args.parallel, name)
    pause, pause_total = simulate(pause_searcher, trials, objective, args.epochs)

    finals = sorted((f.accuracy for f in plain), reverse=True)
    targets = {
        "best": finals[0],
        "top_1_percent": finals[max(1, len(finals) // 100) - 1],
        "top_5_percent": finals[max(1, len(finals) // 20) - 1],
        "stop_answer": max((f.accuracy for f in stop), default=math.nan),
        "pause_answer": max((f.accuracy for f in pause), default=math.nan),
    }
    finished = {"random": plain, "stop": stop, "pause": pause}
    gpu: dict[str, dict[str, int | None]] = {
        search: {label: first_reaching(finished[search], t) for label, t in targets.items()} for search in SEARCHES
    }
    gpu["random"]["total"], gpu["stop"]["total"], gpu["pause"]["total"] = plain_total, stop_total, pause_total
    snapshot = pause_searcher.snapshot()
    return {
        "seed": seed,
        "targets": {label: round(v, 4) for label, v in targets.items()},
        "gpu_epochs": gpu,
        "ratios": {f"{a}/{b}": {label: ratio(gpu[a][label], gpu[b][label]) for label in TARGETS} for a, b in RATIOS},
        "runs_trained_to_the_end": {search: len(finished[search]) for search in SEARCHES},
        "stop_runs_stopped_early": len(stop_searcher.snapshot().stopped),
        "pause_promotions": sum(len(p) for p in snapshot.promoted),
        "pause_runs_never_promoted": len(snapshot.stopped),
    }


def summarize(runs: list[dict[str, object]], pair: str, label: str) -> dict[str, object]:
    factors = [r["ratios"][pair][label] for r in runs]  # type: ignore[index]
    met = [float(f) for f in factors if f is not None]
    return {
        "median": round(statistics.median(met), 2) if met else None,
        "geomean": round(statistics.geometric_mean(met), 2) if met else None,
        "seeds": f"{len(met)}/{len(runs)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--configs", type=int, default=500, help="configurations sampled (max_runs)")
    parser.add_argument("--epochs", type=int, default=81, help="epochs of a full run (ASHA's max_resource)")
    parser.add_argument("--min-epochs", type=int, default=1, help="the first rung")
    parser.add_argument("--eta", type=int, default=3, help="reduction factor")
    parser.add_argument("--parallel", type=int, default=8, help="GPUs (max_parallel)")
    parser.add_argument("--noise", type=float, default=0.005, help="std dev of the accuracy jitter")
    args = parser.parse_args()
    runs = [one_seed(seed, args) for seed in range(args.seeds)]
    print(
        json.dumps(
            {
                "benchmark": "asha_efficiency",
                "setup": {
                    "configs": args.configs,
                    "epochs": args.epochs,
                    "rungs": AshaConfig(args.min_epochs, args.eta, args.epochs).levels(),
                    "eta": args.eta,
                    "parallel_gpus": args.parallel,
                    "noise": args.noise,
                    "gpu_time_unit": "GPU-epochs (one GPU training one epoch)",
                },
                "searches": {
                    "random": "no early stopping",
                    "stop": "ASHA, stop-only (early_stopping: asha)",
                    "pause": "ASHA with promotions (asha: {mode: pause}), resumed from checkpoints",
                },
                "ratios": "GPU time of the first over the second to first finish a run at the target (>1: the "
                "second is cheaper); median and geometric mean over the seeds where both reached it",
                "summary": {
                    f"{a}/{b}": {label: summarize(runs, f"{a}/{b}", label) for label in TARGETS} for a, b in RATIOS
                },
                "median_gpu_epochs": {
                    search: {label: _median([r["gpu_epochs"][search][label] for r in runs]) for label in TARGETS}  # type: ignore[index]
                    for search in SEARCHES
                },
                "seeds": runs,
            },
            indent=2,
        )
    )


def _median(values: list[int | None]) -> float | None:
    met = [v for v in values if v is not None]
    return statistics.median(met) if met else None


if __name__ == "__main__":
    main()
