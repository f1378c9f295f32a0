"""Run logs: console lines, TensorBoard events, metrics.jsonl, and curves.png at the end."""

from __future__ import annotations

import json
import math
import os

import tensorflow as tf

CURVES = (("mlm_loss", "MLM loss"), ("mlm_acc", "MLM accuracy"), ("nsp_loss", "NSP loss"),
          ("nsp_acc", "NSP accuracy"))


def normalize(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Weighted sums and denominators -> means: losses, accuracies, perplexity, lr, grad norm."""
    sums = {k: float(v) for k, v in sums.items()}
    out = {}
    mlm = max(sums["mlm_weight"], 1e-9)
    out[f"{prefix}/mlm_loss"] = sums["mlm_loss_sum"] / mlm
    out[f"{prefix}/mlm_acc"] = sums["mlm_correct"] / mlm
    if sums["nsp_weight"] > 0:
        out[f"{prefix}/nsp_loss"] = sums["nsp_loss_sum"] / sums["nsp_weight"]
        out[f"{prefix}/nsp_acc"] = sums["nsp_correct"] / sums["nsp_weight"]
    if prefix == "eval":
        out["eval/perplexity"] = math.exp(min(out["eval/mlm_loss"], 700.0))
    if sums.get("steps", 0) > 0:
        out["train/learning_rate"] = sums["learning_rate"] / sums["steps"]
        out["train/grad_norm"] = sums["grad_norm"] / sums["steps"]
    return out


class MetricsLogger:
    """Writes metrics of process 0 to the console, TensorBoard and `metrics.jsonl`.

    A run that starts at `start_step` (0, or the step of the restored checkpoint) supersedes
    what an earlier run logged after that step: metrics.jsonl keeps only rows up to `start_step`
    and TensorBoard's event files are rewritten from those rows, so a resumed run shows each
    step once in both (and curves.png draws one line per metric).
    """

    def __init__(self, workdir: str, enabled: bool = True, print_fn=print, start_step: int = 0):
        self.enabled = enabled
        self.print_fn = print_fn
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.writer = None
        if enabled:
            kept = [row for row in read_metrics(workdir) if row["step"] <= start_step]
            self.writer = _fresh_event_writer(os.path.join(workdir, "tensorboard"))
            _rewrite_rows(self.path, kept)
            self._write_config(os.path.join(workdir, "config.json"))
            for row in kept:
                self._write_events(row["step"], {k: v for k, v in row.items() if k != "step"})

    def _write_config(self, path: str) -> None:
        """The run's resolved config.json (when written) as a TensorBoard text summary 'config' and
        as the run's hyper-parameters in TensorBoard's HParams dashboard (one trial named after the
        workdir, each field a dotted name such as `optim.learning_rate`)."""
        from tensorboard.plugins.hparams import api as hparams_api

        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f, self.writer.as_default(step=0):
                text = f.read()
                tf.summary.text("config", f"```json\n{text}\n```")  # markdown: a code block
                run = os.path.basename(os.path.normpath(os.path.dirname(path)))
                hparams_api.hparams(hparams(json.loads(text)), trial_id=run)

    def _write_events(self, step: int, metrics: dict[str, float]) -> None:
        """Scalars as `simple_value` Summary protos (TF1 style), which TensorBoard's UI and
        `EventAccumulator.Scalars()` both read; `tf.summary.scalar` writes tensor summaries that
        `.Scalars()` does not list."""
        summary = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=name, simple_value=float(value))
                                              for name, value in metrics.items()])
        with self.writer.as_default(step=step):
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write_events(step, metrics)
        self.writer.flush()
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps({"step": step} | {k: float(v) for k, v in metrics.items()}) + "\n")
        self.print_fn(format_line(step, metrics))


def hparams(config: dict) -> dict[str, bool | int | float | str]:
    """A nested config as flat HParams values: `{"optim": {"learning_rate": 1e-3}}` ->
    `{"optim.learning_rate": 1e-3}` (`flax.traverse_util.flatten_dict`, which keeps lists and None
    as leaves, unlike jax.tree_util). The plugin takes bool, int, float and str values only, so
    lists and None become their JSON text."""
    from flax import traverse_util

    return {name: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for name, value in traverse_util.flatten_dict(config, sep=".").items()}


def _fresh_event_writer(directory: str):
    """A TensorBoard writer for `directory` after removing its earlier event files (they are
    rewritten from metrics.jsonl; TensorFlow 2 writers have no purge_step)."""
    if tf.io.gfile.isdir(directory):
        for name in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
            tf.io.gfile.remove(name)
    return tf.summary.create_file_writer(directory)


def _rewrite_rows(path: str, rows: list[dict]) -> None:
    """Replaces `path` with `rows` as JSON lines (written to a temporary name, then renamed)."""
    if not rows and not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def format_line(step: int, metrics: dict[str, float]) -> str:
    """A concise console line, e.g. `step 200 | train mlm_loss 4.12 mlm_acc 0.31 ... | 410 ex/s`."""
    parts = [f"step {step}"]
    for prefix in ("train", "eval"):
        values = [f"{k.split('/')[1]} {v:.4g}" for k, v in metrics.items()
                  if k.startswith(prefix + "/") and k.split("/")[1] not in ("learning_rate", "grad_norm")]
        if values:
            parts.append(f"{prefix} " + " ".join(values))
    if "train/learning_rate" in metrics:
        parts.append(f"lr {metrics['train/learning_rate']:.3g} grad_norm {metrics['train/grad_norm']:.3g}")
    if "perf/examples_per_s" in metrics:
        perf = f"{metrics['perf/examples_per_s']:.0f} ex/s {metrics['perf/tokens_per_s'] / 1e3:.1f}k tok/s"
        if "perf/mfu" in metrics:
            perf += f" MFU {100 * metrics['perf/mfu']:.1f}%"
        parts.append(perf)
    return " | ".join(parts)


def read_metrics(workdir: str) -> list[dict]:
    """All lines of `metrics.jsonl` (empty when there is none). A last line cut short by a killed
    process is left out; a damaged line before it is an error naming the file and line."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) or line.endswith("\n"):
                raise ValueError(f"{path}, line {number}: not a JSON object") from None
    return rows


def curves_title(workdir: str) -> str:
    """'RUN: L=.. H=.. A=.., data DATA' from the workdir's config.json (the run name alone without one)."""
    title = os.path.basename(os.path.normpath(workdir))
    path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        return title
    with tf.io.gfile.GFile(path) as f:
        config = json.load(f)
    model = config.get("model") or {}
    if {"num_layers", "hidden_size", "num_heads"} <= set(model):
        title += f": L={model['num_layers']} H={model['hidden_size']} A={model['num_heads']}"
    data = config.get("data_dir") or config.get("train_file")
    return title + (f", data {data}" if data else "")


def plot_curves(workdir: str, curves=CURVES) -> str:
    """Draws train and eval `curves` ((metric, title) pairs; default MLM/NSP loss and accuracy)
    against steps, plus the learning rate, into `curves.png`, titled by `curves_title`. Eval points
    are drawn as markers, and marked on the learning-rate panel too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    panels = list(curves) + [("learning_rate", "learning rate")]
    columns = 3
    fig, axes = plt.subplots(-(-len(panels) // columns), columns, figsize=(14, 7), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    eval_steps = sorted({r["step"] for r in rows if any(k.startswith("eval/") for k in r)})
    for ax, (name, title) in zip(axes.flat, panels):
        for prefix, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[f"{prefix}/{name}"]) for r in rows if f"{prefix}/{name}" in r]
            if points:
                ax.plot(*zip(*points), style, label=prefix, markersize=4)
        if name == "learning_rate":
            for step in eval_steps:
                ax.axvline(step, color="tab:orange", alpha=0.4, linestyle=":")
            ax.plot([], [], color="tab:orange", linestyle=":", label="eval")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(curves_title(workdir))
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
