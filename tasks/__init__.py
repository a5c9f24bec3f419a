"""Pluggable downstream tasks (generation with a DiT, linear-probe classification), each a LightningModule
on the shared CATDataModule and a frozen NestedVAE. None has landed yet (issues 4 and 5)."""
