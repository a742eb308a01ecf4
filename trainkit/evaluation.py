"""`trainkit evaluate ckpt=<run dir or .pt> [split=test|val] [weights=last|best] [overrides]`:
score a checkpoint.

Of a run folder, the weights its own test score used by default: checkpoints/last.pt, the final
weights (early stopping with restore_best has put the best epoch's back by then, and last.pt is
saved after it), so evaluate gives the run's reported test accuracy again; weights=best scores
checkpoints/best.pt, the epoch with the best trainer.monitor.

The model, data split, normalization and loss come from the checkpoint's own config, so a run
rebuilds itself. Only where and how to run comes from the command line: data.root,
data.download, trainer.device and trainer.eval_batch_size. The test set is scored with the
run's test-time views (augment.tta_*), val with the image alone, as the run scored them.
Prints loss, accuracy and the confusion matrix; writes evaluation.json into
outputs/evaluate/<date>/<time>/.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from trainkit import checkpoint, console, data, runtime
from trainkit.augment import IMAGE_ONLY, TestTimeViews
from trainkit.errors import UserError, first_line
from trainkit.experiment import build_model
from trainkit.loop import evaluate
from trainkit.losses import build_loss
from trainkit.transfer import checkpoint_path


def evaluate_checkpoint(
    cfg: DictConfig, out_dir: Path, ckpt: list[str] | None = None,
    split: list[str] | None = None, weights: list[str] | None = None,
) -> dict:
    if not ckpt or not ckpt[0]:
        raise UserError("evaluate needs ckpt=<run dir or checkpoint .pt>, e.g. "
                        "ckpt=outputs/<date>/<time>")
    which = (split or ["test"])[0]
    if which not in ("test", "val"):
        raise UserError(f"split={which}: choose test or val")
    path = weights_file(ckpt[0], weights)
    # Checked: its config names no code but trainkit's own and the classes this command names
    trusted = checkpoint.targets_in(OmegaConf.to_container(cfg, resolve=True))
    saved = checkpoint.load(path, trusted=trusted)
    run_cfg = checkpoint.config_of(saved, path)
    for key in ("data.root", "data.download", "trainer.device", "trainer.eval_batch_size"):
        value = OmegaConf.select(cfg, key)
        if key != "data.root" or value is not None:  # no data.root given: the run's own
            OmegaConf.update(run_cfg, key, value)

    device = runtime.setup(run_cfg.trainer)
    dataset = data.load(run_cfg.data, device)
    model = build_model(run_cfg.model, dataset.input_shape, dataset.num_classes)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:
        raise UserError(f"{path} does not fit its own config's model ({first_line(e)})") from None
    model = model.to(device)
    normalize = data.Normalizer(dataset.mean, dataset.std, device)
    target = dataset.test if which == "test" else dataset.val
    batch = run_cfg.trainer.eval_batch_size
    # As the run scored them: the test set with its test-time views, val with the image alone
    tta = TestTimeViews.from_config(run_cfg.augment) if which == "test" else IMAGE_ONLY
    metrics = evaluate(model, target, normalize, build_loss(run_cfg.loss), batch, tta,
                       dataset.num_classes)
    matrix = metrics.pop("confusion_matrix")
    result = {
        "checkpoint": str(path),
        "weights": WEIGHTS.get(path.name, path.name),
        "epoch": saved.get("epoch"),
        "split": which,
        "samples": len(target),
        **metrics,
        "confusion_matrix": {"classes": dataset.class_names, "counts": matrix.tolist()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    console.console.print(
        f"{path} ({result['weights']}, epoch {saved.get('epoch')}) on {which} "
        f"({len(target):,} samples): "
        f"loss {metrics['loss']:.4f}, accuracy {metrics['acc']:.4f}",
        highlight=False,
        soft_wrap=True,
    )
    console.console.print(matrix_table(result["confusion_matrix"]))
    return result


WEIGHTS = {
    "last.pt": "final weights, as the run's own test score",
    "best.pt": "best epoch's weights, by trainer.monitor",
}


def weights_file(ckpt: str, weights: list[str] | None) -> Path:
    """The checkpoint to score: a .pt file as given, or the run folder's last.pt (the weights
    its test score used) or best.pt (`weights=best`)."""
    which = (weights or ["last"])[0]
    if which not in ("last", "best"):
        raise UserError(f"weights={which}: choose last (the run's final weights) or best")
    folder = Path(ckpt).expanduser()
    if not folder.is_dir():
        if weights:
            raise UserError(f"weights={which} picks a file in a run folder, but ckpt={ckpt} "
                            "names a checkpoint file already")
        return checkpoint_path(ckpt)
    path = folder / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        raise UserError(f"ckpt={ckpt}: no checkpoints/{which}.pt there: is it a run folder?")
    return path


def matrix_table(matrix: dict) -> Table:
    table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    table.add_column("")
    for i in range(len(matrix["classes"])):
        table.add_column(str(i), justify="right")
    for i, (name, row) in enumerate(zip(matrix["classes"], matrix["counts"], strict=True)):
        table.add_row(
            f"{i} {name}", *(f"[bold]{v}[/]" if i == j else str(v) for j, v in enumerate(row))
        )
    return table
