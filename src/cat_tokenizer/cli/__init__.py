"""Entry points: ``lightning`` (training) and ``cat-tokenizer`` (tools)."""

import warnings

__all__ = ["silence_known_warnings"]


def silence_known_warnings() -> None:
    """Hide Lightning warnings that are false alarms for this project's modules."""
    # The VAE checkpoints the state after both optimizer steps on purpose.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # The EMA copy (and a frozen LPIPS) stay in eval mode by design.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # BucketBatchSampler's predict loader never drops items; Lightning cannot see that.
    warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
