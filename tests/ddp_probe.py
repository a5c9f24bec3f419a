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
        checksum = float(sum(p.double().sum() for p in pl_module.vae.parameters()))
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"batches": self.rows, "checksum": checksum, "world": trainer.world_size}, f)
