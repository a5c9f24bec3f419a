from cat_tokenizer.losses.discriminator import PatchDiscriminator
from cat_tokenizer.losses.lpips import LPIPS, LPIPSWeightsNotFound
from cat_tokenizer.losses.vae_loss import VAELoss

__all__ = ["VAELoss", "PatchDiscriminator", "LPIPS", "LPIPSWeightsNotFound"]
