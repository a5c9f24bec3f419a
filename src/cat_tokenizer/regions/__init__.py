"""Region-adaptive CAT: different ratios for different blocks of one image (``latent``), and region maps
under a token budget or a quality target (``maps``)."""

from cat_tokenizer.regions.latent import RegionLatent, block_tokens, decode_regions, encode_regions

__all__ = ["RegionLatent", "block_tokens", "encode_regions", "decode_regions"]
