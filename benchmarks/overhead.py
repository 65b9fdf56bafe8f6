"""What the pipeline spends around training: Prefect start-up, cache checks,
hashing, stages re-run although their inputs did not change. Everything is
timed from outside, as a user's shell would, on a generated image folder.

    python benchmarks/overhead.py            # 20,000 images, a 30-epoch tiny run (about 10 min on 2 CPUs)
    python benchmarks/overhead.py --quick    # 300 images, 1 epoch, one shared server (CI: checks that it runs)
    python benchmarks/overhead.py --start-up # start-up beside the floor: --help, a refusal, a cached re-run (2-3 min)

Measured, in order, all with one PREFECT_HOME (one result store), each
command in a fresh process with Prefect's temporary server:
  floor        a trivial flow whose one task is a cache hit: what any run of
               any flow costs here (Python and Prefect imports, the server)
  first run    `flows/full_run.py` on the image folder, --subset images, 64x64,
               --epochs E, from random init (its peak host memory is reported)
  cached       the same command again: every task a cache hit
  new lr       the same command with only --lr changed, timed until training
               starts (the first epoch's progress line): start-up, download
               and preprocess, which must not read or hash the images again
  trials       --trials runs of one epoch with seeds 1..N in one process (what
               a sweep's trials pay each inside a worker), overhead per trial =
               the call's wall time minus its training and evaluation stages
--start-up measures, in one run: the floor; `--help` of every command and a
config refusal (--epochs 0), both wall time from outside; a tiny CPU run
(the tests' generated CIFAR-10 archive, 10 images at 64x64, --epochs E)
and the same command again, all cached, with ratios against the floor; and
the first run's start-up breakdown from its report.md.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class{i}" for i in range(10)]

FLOOR_SCRIPT = textwrap.dedent("""
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    @task(cache_policy=INPUTS, persist_result=True)
    def one(x):
        return x

    @flow
    def trivial():
        return one(1)

    trivial()
""")

TRIALS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from flows.full_run import full_run
    args, seeds = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = args.pop("out")
    for seed in seeds:
        started = time.perf_counter()
        result = full_run(**args, seed=seed, out=f"{out}-{seed}")
        wall = time.perf_counter() - started
        print("TRIAL", json.dumps({"seed": seed, "wall": wall, "run_dir": result["run_dir"]}), flush=True)
""")


def make_image_folder(root: Path, count: int, seed: int = 0) -> None:
    """`count` PNG images of 32x32, 5/6 in train/ and 1/6 in test/, 10 classes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        split = "test" if (i // len(CLASSES)) % 6 == 0 else "train"
        folder = root / split / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


class Runner:
    def __init__(self, work: Path):
        self.work = work
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(work / "prefect-home"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "ALEXNET_PIPELINE_RUNS_ROOT": str(work / "runs")}

    def wall(self, argv: list[str], until: str | None = None, status: int = 0) -> tuple[float, float | None, str]:
        """(seconds to exit, seconds until a line containing `until` appeared, output);
        the command must exit with `status`."""
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        seen_at, lines = None, []
        for line in proc.stdout:  # tqdm's bars end in \r: one "line" may hold many updates
            lines.append(line)
            if until and seen_at is None and until in line:
                seen_at = time.perf_counter() - started
        rc = proc.wait()
        output = "".join(lines)
        if rc != status:
            raise SystemExit(f"{' '.join(argv)} exited with {rc}, not {status}:\n{output[-3000:]}")
        return time.perf_counter() - started, seen_at, output


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """The report's "Time per stage" rows (seconds), from report.md."""
    seconds, inside = {}, False
    for line in (Path(run_dir) / "report.md").read_text().splitlines():
        if line.startswith("#"):
            inside = "time per stage" in line.lower()
            continue
        if not inside:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            try:
                seconds[cells[0].lower()] = float(cells[1].split()[0])
            except (ValueError, IndexError):
                pass
    return seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000, help="images in the generated folder")
    p.add_argument("--subset", type=int, default=100, help="train/test images the runs use")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--quick", action="store_true",
                   help="300 images, 1 epoch, 2 trials, one Prefect server for all commands (CI: mechanics only)")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder, removed)")
    p.add_argument("--start-up", action="store_true",
                   help="only start-up: the floor, --help, a refusal and a tiny run's cached re-run (--epochs, default 3)")
    args = p.parse_args(argv)
    if args.start_up and "--epochs" not in (argv if argv is not None else sys.argv[1:]):
        args.epochs = 3  # each epoch's checkpoints are 0.7 GB
    if args.quick:
        args.images, args.epochs, args.trials = 300, 1, 2

    work = Path(args.keep or tempfile.mkdtemp(prefix="overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return measure(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, args) -> dict:
    runner = Runner(work)
    if args.start_up:
        return measure_start_up(work, args, runner)
    if not args.quick:
        return _measure(work, args, runner)
    # --quick checks the mechanics (CI), its numbers mean nothing: one server
    # for every command instead of a temporary one each, which cost ~5 s of
    # CPU apiece on 2 cores. The full measurement keeps what a user pays.
    os.environ["PREFECT_HOME"] = runner.env["PREFECT_HOME"]
    sys.path.insert(0, str(REPO))
    from flows.interrupt import stop_process
    from flows.prefect_server import start_temporary_server

    server = start_temporary_server()
    runner.env["PREFECT_API_URL"] = server.url
    try:
        return _measure(work, args, runner)
    finally:
        stop_process(server.process)


def _measure(work: Path, args, runner: Runner) -> dict:
    images = work / "images"
    started = time.perf_counter()
    make_image_folder(images, args.images)
    generate_s = time.perf_counter() - started

    python = sys.executable
    floor_script = work / "floor.py"
    floor_script.write_text(FLOOR_SCRIPT)
    runner.wall([python, str(floor_script)])  # fills the cache
    floor_s, _, _ = runner.wall([python, str(floor_script)])

    run_args = ["--dataset", "imagefolder", "--data-dir", str(images), "--weights", "none", "--subset",
                str(args.subset), "--batch-size", "50", "--image-size", "64", "--device", "cpu", "--seed", "0"]
    full_run = [python, str(REPO / "flows" / "full_run.py")]
    out = work / "runs" / "first"
    first_s, _, _ = runner.wall([*full_run, *run_args, "--epochs", str(args.epochs), "--out", str(out)])
    # ru_maxrss of children: the largest of the processes waited for so far,
    # i.e. the full run (the floor's processes are far smaller).
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    cached_s, _, cached_out = runner.wall([*full_run, *run_args, "--epochs", str(args.epochs), "--out", str(out)])
    if "Cached" not in cached_out:
        raise SystemExit("the re-run showed no cache hit:\n" + cached_out[-3000:])
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ~0.7 GB per epoch

    lr_out = work / "runs" / "new-lr"
    lr_total_s, lr_to_training_s, _ = runner.wall(
        [*full_run, *run_args, "--epochs", "1", "--lr", "0.002", "--out", str(lr_out)], until="epoch 1/1")
    lr_stages = stage_seconds(lr_out)
    shutil.rmtree(lr_out, ignore_errors=True)

    trial_base = {"dataset": "imagefolder", "data_dir": str(images), "weights": "none", "subset": args.subset,
                  "batch_size": 50, "image_size": 64, "device": "cpu", "epochs": 1, "out": str(work / "runs" / "trial")}
    trials_script = work / "trials.py"
    trials_script.write_text(TRIALS_SCRIPT)
    _, _, trials_out = runner.wall([python, str(trials_script), json.dumps(trial_base),
                                    json.dumps(list(range(1, args.trials + 1)))])
    overheads = []
    for line in trials_out.splitlines():
        if line.startswith("TRIAL "):
            trial = json.loads(line[len("TRIAL "):])
            stages = stage_seconds(Path(trial["run_dir"]))
            # Training evaluates each checkpoint as it is committed: one stage.
            overheads.append(trial["wall"] - stages["train and evaluate"])
            shutil.rmtree(trial["run_dir"], ignore_errors=True)
    if len(overheads) != args.trials:
        raise SystemExit("not every trial reported:\n" + trials_out[-3000:])
    # The first trial pays the temporary server's start; the rest are what
    # each further trial adds.
    per_trial = float(np.mean(overheads[1:] if len(overheads) > 1 else overheads))

    result = {
        "images": args.images, "subset": args.subset, "epochs": args.epochs,
        "generate_images_s": round(generate_s, 1),
        "floor_s": round(floor_s, 2),
        "first_run_s": round(first_s, 1),
        "cached_rerun_s": round(cached_s, 2),
        "cached_over_floor": round(cached_s / floor_s, 2),
        "new_lr_until_training_s": None if lr_to_training_s is None else round(lr_to_training_s, 2),
        "new_lr_preprocess_stage_s": lr_stages.get("preprocess"),
        "new_lr_download_stage_s": lr_stages.get("download"),
        "new_lr_total_s": round(lr_total_s, 1),
        "trial_overheads_s": [round(o, 2) for o in overheads],
        "overhead_per_further_trial_s": round(per_trial, 2),
        "peak_host_memory_gb": round(peak_gb, 2),
    }
    rows = [
        ("trivial flow, one cached task (the floor)", f"{floor_s:.2f} s"),
        (f"first run, {args.epochs} epochs, {args.subset} images at 64x64", f"{first_s:.1f} s"),
        ("the same command again (all cached)", f"{cached_s:.2f} s ({cached_s / floor_s:.2f}x the floor)"),
        ("only --lr changed: until training starts", f"{lr_to_training_s:.2f} s" if lr_to_training_s else "n/a"),
        ("only --lr changed: preprocess stage", f"{lr_stages.get('preprocess', float('nan')):.2f} s"),
        (f"{args.trials} one-epoch trials in one process: overhead per further trial", f"{per_trial:.2f} s"),
        ("peak host memory of the first run", f"{peak_gb:.2f} GB"),
    ]
    print(f"\n{args.images:,} generated images ({generate_s:.0f} s to make), torch run on the CPU, one run each")
    for what, value in rows:
        print(f"{what:70} {value}")
    print(json.dumps(result))
    return result


COMMANDS = ("full_run", "evaluate", "sweep", "predict", "export")


def report_start_up(run_dir: Path) -> str:
    """The report's start-up breakdown line, without its heading words."""
    for line in (run_dir / "report.md").read_text().splitlines():
        if line.startswith("Start-up, seconds after the process started: "):
            return line.split(": ", 1)[1].rstrip(".")
    return "n/a"


def measure_start_up(work: Path, args, runner: Runner) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.fixtures import make_cifar_archive

    data = work / "data"
    data.mkdir(exist_ok=True)
    make_cifar_archive(data)
    python = sys.executable
    floor_script = work / "floor.py"
    floor_script.write_text(FLOOR_SCRIPT)
    runner.wall([python, str(floor_script)])  # fills the cache
    helps = {command: runner.wall([python, str(REPO / "flows" / f"{command}.py"), "--help"])[0] for command in COMMANDS}
    full_run = [python, str(REPO / "flows" / "full_run.py")]
    refusal_s, _, refusal_out = runner.wall([*full_run, "--epochs", "0"], status=2)
    assert "error: train.epochs" in refusal_out, refusal_out
    # tests/test_stopping.py's ARGS: 2 steps of 5 images per epoch.
    run_args = ["--dataset", "cifar10", "--no-verify", "--weights", "none", "--batch-size", "5", "--subset", "10",
                "--image-size", "64", "--device", "cpu", "--seed", "3", "--data-dir", str(data),
                "--epochs", str(args.epochs), "--out", str(work / "runs" / "tiny")]
    first_s, _, _ = runner.wall([*full_run, *run_args])
    breakdown = report_start_up(work / "runs" / "tiny")
    # The floor and the re-run one after the other: the same moment, the same load.
    floor_s, _, _ = runner.wall([python, str(floor_script)])
    cached_s, _, cached_out = runner.wall([*full_run, *run_args])
    if "Cached" not in cached_out:
        raise SystemExit("the re-run showed no cache hit:\n" + cached_out[-3000:])
    load = os.getloadavg()
    result = {
        "floor_s": round(floor_s, 2),
        "help_s": {command: round(seconds, 2) for command, seconds in helps.items()},
        "config_error_s": round(refusal_s, 2),
        "first_run_s": round(first_s, 1), "epochs": args.epochs,
        "cached_rerun_s": round(cached_s, 2),
        "cached_over_floor": round(cached_s / floor_s, 2),
        "first_run_start_up": breakdown,
        "load_average_1_5_15": [round(x, 2) for x in load],
    }
    rows = [("trivial flow, one cached task (the floor)", f"{floor_s:.2f} s"),
            *((f"python flows/{command}.py --help", f"{seconds:.2f} s ({seconds / floor_s:.2f}x the floor)")
              for command, seconds in helps.items()),
            ("a config refusal (full_run.py --epochs 0)", f"{refusal_s:.2f} s ({refusal_s / floor_s:.2f}x the floor)"),
            (f"first run, {args.epochs} epochs, 10 CIFAR-10 images at 64x64", f"{first_s:.1f} s"),
            ("the same command again (all cached)", f"{cached_s:.2f} s ({cached_s / floor_s:.2f}x the floor)")]
    print(f"\nstart-up, torch on the CPU, one run each; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs at the end")
    for what, value in rows:
        print(f"{what:70} {value}")
    print(f"first run's start-up (report.md): {breakdown}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
