"""A callback for the DDP test: each rank writes what it trained on, and its final weights' sum."""

import json
import os

import lightning as L


class BatchRecorder(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir, self.rows = out_dir, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        row = {"ratio": int(batch["ratio"]), "index": batch["index"].tolist()}
        assigned = trainer.datamodule.train_set.ratios
        if assigned is not None:  # content-assigned ratios: record what each image was assigned
            row["assigned"] = [int(assigned[i]) for i in row["index"]]
        self.rows.append(row)

    def on_train_end(self, trainer, pl_module):
        total = lambda module: float(sum(p.double().sum() for p in module.parameters()))  # noqa: E731
        checksum = total(pl_module.vae)
        disc = total(pl_module.loss.discriminator)
        ema = total(pl_module.ema.module) if pl_module.ema is not None else None
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"batches": self.rows, "checksum": checksum, "disc_checksum": disc, "ema_checksum": ema,
                       "gen_step": int(pl_module.gen_step), "world": trainer.world_size}, f)
