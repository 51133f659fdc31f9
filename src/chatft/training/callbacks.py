"""Trainer instrumentation: token counts per batch, one MLflow metrics line per log, and a progress estimate."""

from __future__ import annotations

import time


class BatchStats:
    """Wraps the trainer's collator to count, per batch, computed positions, real tokens and loss tokens."""

    def __init__(self, collate):
        self.collate = collate
        self.positions = self.real = self.loss = 0

    def __call__(self, examples):
        batch = self.collate(examples)
        positions = batch["input_ids"].numel()
        self.positions += positions
        # A padding-free batch (packing) is one flat row without padding, and has no attention mask.
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else positions
        self.loss += int((batch["labels"] != -100).sum())
        return batch

    def take(self) -> tuple[int, int, int]:
        counts = (self.positions, self.real, self.loss)
        self.positions = self.real = self.loss = 0
        return counts


def step_logger(stats: BatchStats):
    """A callback that sends each Trainer log line to the active MLflow run, with throughput since the last one."""
    import mlflow
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        def __init__(self):
            self.clock = time.perf_counter()
            self.last_num_tokens = 0
            # Totals over training steps only (evaluation and checkpoint time excluded).
            self.seconds = 0.0
            self.tokens = self.positions = self.real = self.loss = 0

        def restart_clock(self, *_, **__):
            self.clock = time.perf_counter()

        on_train_begin = on_save = restart_clock

        def on_evaluate(self, args, state, control, **kwargs):
            stats.take()  # evaluation batches go through the same collator
            self.restart_clock()

        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if "loss" in metrics and "num_tokens" in metrics:  # a training step
                now = time.perf_counter()
                seconds, self.clock = now - self.clock, now
                tokens = int(metrics["num_tokens"]) - self.last_num_tokens
                self.last_num_tokens = int(metrics["num_tokens"])
                positions, real, loss = stats.take()
                self.seconds += seconds
                self.tokens += tokens
                self.positions, self.real, self.loss = self.positions + positions, self.real + real, self.loss + loss
                metrics["tokens_per_second"] = tokens / max(seconds, 1e-9)
                if positions:
                    metrics["real_token_fraction"] = real / positions
                    metrics["loss_token_fraction"] = loss / max(real, 1)
            if state.is_world_process_zero:
                mlflow.log_metrics(metrics, step=state.global_step)

    return StepLogger()


def progress(warmup_steps: int = 2):
    """A callback printing, on the main process, the training time to expect once ``warmup_steps`` optimizer
    steps have been measured on this machine, then one line per step with the time left.

    The pace is the median step after the first (which carries one-time costs: thread pools, first allocations).
    """
    import statistics

    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step, self.times, self.clock = state.global_step, [], time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.times.append(now - self.clock)
            self.clock = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or "loss" not in (logs or {}) or not self.times:
                return
            done, left = state.global_step - self.first_step, state.max_steps - state.global_step
            pace = statistics.median(self.times[1:] or self.times)
            print(
                f"finetune: step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"{self.times[-1]:.1f} s  about {left * pace:.0f} s left",
                flush=True,
            )
            if done == min(warmup_steps, state.max_steps - self.first_step):
                print(
                    f"finetune: estimate from {done} measured step(s) on this machine: {pace:.1f} s per optimizer "
                    f"step, about {left * pace:.0f} s for the {left} left ({sum(self.times) + left * pace:.0f} s "
                    "of training in all)",
                    flush=True,
                )

    return Progress()
