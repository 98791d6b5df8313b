"""Bookkeeping shared by the denoiser training scripts (``train_ddpm``, ``finetune_bridge``).

``DenoiserRun`` owns what is not the loss: the output and run folders, logging, the
``Accelerator`` (data-parallel when launched as several processes), EMA, the step/time
counters and their wall-clock budget, the learning-rate share done, checkpoints with an EMA
snapshot, resuming, and writing the released weights folder at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from common.atomic_write import staged_folder
from common.data_parallel import launched_without_gpus
from common.paths import ROOT
from common.weights_manifest import MANIFEST, write_manifest
from diffusion import PixelUnshuffleUNet, training_scheduler

SNAPSHOT_DIR = "ema_latest"
CHECKPOINT_DIR = "checkpoints"


class TrainingProgress:
    """Step count, training seconds, the data RNG state and the sessions so far (each one's
    command and first step: a run resumed over several sessions records every command it
    ran under), checkpointed with the model."""

    def __init__(self, generator: torch.Generator) -> None:
        self.step = 0
        self.seconds = 0.0
        self.generator = generator
        self.sessions: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seconds": self.seconds,
            "rng": self.generator.get_state(),
            "sessions": list(self.sessions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        self.generator.set_state(state["rng"])
        self.sessions = list(state.get("sessions", []))  # absent in older checkpoints

    def start_session(self, command: str) -> None:
        """Record that ``command`` trains on from the current step."""
        self.sessions.append(
            {"command": command, "start_step": self.step, "start_seconds": round(self.seconds, 1)}
        )


def check_output_free(output: Path, run_dir: Path | None = None) -> None:
    """Refuse to overwrite a released weights folder (or any non-empty folder), an output
    that is a file, and a ``run_dir`` equal to the output or inside it (the run's own files
    would fill the folder the weights go to)."""
    if (output / MANIFEST).exists():
        raise SystemExit(f"{output} already holds released weights ({MANIFEST}); choose a new name")
    if output.exists() and not output.is_dir():
        raise SystemExit(f"{output} is a file; choose a new --output")
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"{output} exists and is not empty; choose a new --output")
    if run_dir is not None and run_dir.resolve().is_relative_to(output.resolve()):
        raise SystemExit(f"--run-dir {run_dir} lies in --output {output}; keep them apart")


def save_weights(
    model: PixelUnshuffleUNet, folder: Path, name: str, version: str, info: dict
) -> None:
    """Write model + scheduler config + manifest into a temp folder, then rename to ``folder``
    (replacing an older snapshot there)."""
    with staged_folder(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        training_scheduler().save_pretrained(tmp)
        write_manifest(tmp, name, version, **info)


def ema_copy(ema: EMAModel, config: dict[str, Any]) -> PixelUnshuffleUNet:
    """A fresh fp32 model holding the EMA weights, in eval mode."""
    model = PixelUnshuffleUNet.from_config(config)
    ema.copy_to(model.parameters())
    return model.eval()


def checkpoints_oldest_first(run_dir: Path) -> list[Path]:
    return sorted((run_dir / CHECKPOINT_DIR).glob("step_*"), key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path) -> Path:
    candidates = checkpoints_oldest_first(run_dir)
    if not candidates:
        raise SystemExit(f"no checkpoint to resume under {run_dir / CHECKPOINT_DIR}")
    return candidates[-1]


def setup_logging(logger: logging.Logger, run_dir: Path) -> None:
    """Log to ``run_dir/train_log.txt`` and stderr (replacing handlers of an earlier call)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(run_dir / "train_log.txt"), logging.StreamHandler()):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Collect SIGINT/SIGTERM into a list (so the loop can stop cleanly); restore handlers."""
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


TrainFn = Callable[[argparse.Namespace, str, list[int]], int]


def run_script(
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    train: TrainFn,
    argv: Sequence[str] | None,
    script: str,
) -> int:
    """A training script's ``main``: parse, record the command, train with stop signals
    collected; the exit code. A ``ValueError`` or ``OSError`` (bad data, a crop larger than
    the images, a broken weights folder, a file where a folder goes) ends the run with its
    message, as ``<script>: error: <message>``."""
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    with stop_requests() as stop_signal:
        try:
            return train(args, command, stop_signal)
        except (ValueError, OSError) as err:
            raise SystemExit(f"{script}: error: {err}") from err


class DenoiserRun:
    """One training run of the denoiser, driven by the script's loop.

    ``args`` needs ``output``, ``run_dir``, ``threads``, ``mixed_precision``, ``max_steps``,
    ``max_minutes``, ``resume``; ``stop_signal`` is the list ``stop_requests`` fills.
    Typical use::

        run = DenoiserRun(args, command, stop_signal, logger)
        model, optimizer, ema = run.prepare(model, optimizer, ema_decay, generator)
        while not run.should_stop():
            ...  # lr from run.fraction_done(); the loss
            run.optimizer_step(loss, model, optimizer)
        return run.finish(info_fn, validation)
    """

    def __init__(
        self,
        args: argparse.Namespace,
        command: str,
        stop_signal: list[int],
        logger: logging.Logger,
    ) -> None:
        self.started = time.monotonic()
        self.args, self.stop_signal, self.logger = args, stop_signal, logger
        self.command = command
        if args.threads:
            torch.set_num_threads(args.threads)
        self.output = args.output if args.output.is_absolute() else Path.cwd() / args.output
        self.run_dir = args.run_dir or ROOT / "runs" / self.output.name
        check_output_free(self.output, self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(logger, self.run_dir)
        # Several launched processes (accelerate launch / torchrun) train data-parallel: each
        # draws its own data; only the main one logs info and writes weights.
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            project_dir=str(self.run_dir),
            cpu=launched_without_gpus(),
        )
        if not self.accelerator.is_main_process:
            logger.setLevel(logging.WARNING)
        logger.info("command: %s", command)
        self.budget = args.max_minutes * 60 if args.max_minutes is not None else math.inf
        self.max_steps = args.max_steps if args.max_steps is not None else sys.maxsize
        self.progress: TrainingProgress | None = None
        self.ema: EMAModel | None = None
        self.model_config: dict[str, Any] = {}
        self._saved_at = -1
        self._bar: tqdm | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def step(self) -> int:
        return self.progress.step

    def prepare(
        self,
        model: PixelUnshuffleUNet,
        optimizer: torch.optim.Optimizer,
        ema: EMAModel,
        generator: torch.Generator,
    ) -> tuple[PixelUnshuffleUNet, torch.optim.Optimizer]:
        """Hand model/optimiser to accelerate, register EMA and progress for checkpoints and
        resume from ``args.resume`` (a checkpoint folder or ``latest``)."""
        self.model_config = {k: v for k, v in model.config.items() if not k.startswith("_")}
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.ema, self.progress = ema, TrainingProgress(generator)
        ema.to(self.accelerator.device)  # built from the parameters before prepare moved them
        self.accelerator.register_for_checkpointing(ema, self.progress)
        if self.args.resume:
            resume = self.args.resume
            checkpoint = latest_checkpoint(self.run_dir) if resume == "latest" else Path(resume)
            if not checkpoint.is_dir():
                raise ValueError(f"--resume {resume}: no checkpoint folder {checkpoint}")
            try:
                self.accelerator.load_state(str(checkpoint))
            except RuntimeError as err:  # the model's state dict does not fit
                if "loading state_dict" not in str(err):
                    raise
                raise ValueError(  # the network's config is its shape
                    f"--resume {resume}: {checkpoint} holds a network of another shape than "
                    f"this run's {self.model_config}; give the shape flags (or --init) the run "
                    "started with"
                ) from None
            ema.to(self.accelerator.device)  # load_state restores it where it was saved
            self.logger.info("resumed from %s at step %d", checkpoint, self.progress.step)
        self.progress.start_session(self.command)
        self._seconds_before = self.progress.seconds
        self._session_start = time.monotonic()
        return model, optimizer

    def ema_model(self) -> PixelUnshuffleUNet:
        """A fresh eval-mode copy holding the EMA weights."""
        return ema_copy(self.ema, self.model_config)

    def progress_bar(self, desc: str) -> tqdm:
        """The run's bar (main process only), started at the current step."""
        self._bar = tqdm(
            total=None if self.max_steps == sys.maxsize else self.max_steps,
            initial=self.progress.step,
            desc=desc,
            mininterval=1 if sys.stderr.isatty() else 60,
            disable=not self.accelerator.is_main_process,
        )
        return self._bar

    def should_stop(self) -> bool:
        """True once the steps or the wall-clock budget are used up or a signal came; every
        process of a data-parallel run stops at the same step."""
        if self.progress.step >= self.max_steps:
            return True
        if time.monotonic() - self.started >= self.budget or self.stop_signal:
            self.accelerator.set_trigger()
        if self.accelerator.check_trigger():
            if not self.stop_signal:
                self.logger.info("wall-clock budget of %.1f min reached", self.args.max_minutes)
            return True
        return False

    def elapsed_minutes(self) -> float:
        return (time.monotonic() - self.started) / 60

    def fraction_done(self) -> float:
        """Share of the whole run done, by steps or time (a resumed run continues over the old
        plus the new budget), for the learning-rate schedule."""
        elapsed = time.monotonic() - self.started
        time_done = (self._seconds_before + elapsed) / (self._seconds_before + self.budget)
        by_time = time_done if self.budget < math.inf else 0.0
        return max(self.progress.step / self.max_steps, by_time)

    def optimizer_step(
        self, loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        """Backpropagate ``loss``, clip the gradient norm to 1, step and clear the optimiser,
        update the EMA and count the step."""
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.ema.step(model.parameters())
        self.step_done()

    def step_done(self) -> None:
        """Count one optimiser step (and its training time)."""
        self.progress.step += 1
        self.progress.seconds = self._seconds_before + time.monotonic() - self._session_start
        if self._bar is not None:
            self._bar.update(1)

    def checkpoint(self, info: dict[str, Any], version: str) -> None:
        """``accelerator.save_state`` (two newest kept) and an EMA snapshot folder loadable by
        ``diffusion.load_denoiser``; once per step."""
        if self._saved_at == self.progress.step:
            return
        self._saved_at = self.progress.step
        self.accelerator.save_state(
            str(self.run_dir / CHECKPOINT_DIR / f"step_{self.progress.step}")
        )
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        for old in checkpoints_oldest_first(self.run_dir)[:-2]:
            shutil.rmtree(old)
        name = f"{self.output.name}-snapshot"
        save_weights(self.ema_model(), self.run_dir / SNAPSHOT_DIR, name, version, info)
        self.logger.info("checkpoint and EMA snapshot at step %d", self.progress.step)

    def finish(
        self, info: Callable[[], dict[str, Any]], version: str, validation: dict[str, float]
    ) -> int:
        """Checkpoint, end the process group and (main process, no signal, output still free)
        write the EMA weights to ``--output``; the exit code."""
        if self._bar is not None:
            self._bar.close()
        self.checkpoint(info(), version)
        self.accelerator.end_training()  # ends the process group of a data-parallel run
        if not self.accelerator.is_main_process:
            return 0
        snapshot = self.run_dir / SNAPSHOT_DIR
        if self.stop_signal:
            self.logger.warning(
                "stopped by signal %d; EMA snapshot in %s, resume with --resume latest",
                self.stop_signal[0],
                snapshot,
            )
            return 1
        try:
            check_output_free(self.output)
        except SystemExit as err:
            self.logger.error("%s; the EMA weights are in %s", err, snapshot)
            return 1
        save_weights(self.ema_model(), self.output, self.output.name, version, info())
        self.logger.info(
            "wrote %s (%d steps, %.1f min)",
            self.output,
            self.progress.step,
            self.progress.seconds / 60,
        )
        print(json.dumps({"output": str(self.output), "steps": self.progress.step, **validation}))
        return 0
