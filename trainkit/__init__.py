"""trainkit: a PyTorch training CLI configured with Hydra.

The modules form layers; each imports only from its own layer or lower ones, and the imports
have no cycle (tests/test_layers.py checks both):

- base: errors, files, config (the schemas and their validation), metrics, run folders,
  process settings, torchrun.
- core: what the math of training is: data, models, initializers, losses, schedules, the
  optimizer step, precision, checkpoints, transfer learning, and the loop itself
  (loop.fit -> train_epoch -> evaluate, with the Callback protocol).
- observation: what watches a run and reports on it: callbacks (TensorBoard, metrics.csv,
  checkpoints, early stopping), diagnostics, the console, plots, the verdict, and
  summary.json (one type, one writer).
- run: one run top to bottom (experiment), resuming one, and sweeps of them.
- tools: the commands around runs (evaluate, lr-find, init-report, learning-curve, studies)
  and the command line itself.
"""

LAYERS = {
    "base": ("errors", "files", "config", "metrics", "run_dirs", "runtime", "distributed"),
    "core": ("augment", "data", "image_folder", "models", "init", "losses", "schedule",
             "optim_step", "layout", "precision", "checkpoint", "transfer", "loop"),
    "observation": ("summary", "callbacks", "diagnostics", "console", "hparams", "plots",
                    "verdict"),
    "run": ("experiment", "resume", "sweep"),
    "tools": ("evaluation", "lr_finder", "init_report", "learning_curve", "studies", "commands",
              "completion", "cli", "__main__"),
}
