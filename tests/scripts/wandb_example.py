"""A training script written for Weights & Biases, unchanged but for its import."""

import math
import random

import numpy as np

import runstream as wandb

config = {"learning_rate": 0.01, "epochs": 5, "batch_size": 32, "architecture": "cnn"}
run = wandb.init(project="wandb-compat", config=config, tags=["example"], notes="runs unchanged")
wandb.define_metric("epoch")
wandb.define_metric("val/*", step_metric="epoch", summary="max")
wandb.define_metric("train/loss", summary="min")

for epoch in range(wandb.config.epochs):
    for batch in range(20):
        loss = math.exp(-0.1 * (epoch * 20 + batch)) + random.random() * 0.01
        wandb.log({"train/loss": loss, "train/lr": wandb.config["learning_rate"]})
    images = np.random.rand(4, 8, 8, 3)
    wandb.log(
        {
            "epoch": epoch,
            "val/acc": 0.5 + epoch * 0.1,
            "examples": [wandb.Image(img, caption=f"sample {i}") for i, img in enumerate(images)],
            "weights": wandb.Histogram(np.random.randn(1000)),
        }
    )

table = wandb.Table(columns=["id", "prediction", "truth"], data=[[1, "cat", "cat"], [2, "dog", "cat"]])
wandb.log({"predictions": table})
wandb.run.summary["best_val_acc"] = 0.9
wandb.alert(
    title="Training done", text=f"best val/acc {wandb.run.summary['val/acc']['max']:.2f}", level=wandb.AlertLevel.INFO
)
print("summary", wandb.run.summary["val/acc"], wandb.run.summary["train/loss"])
wandb.finish()
