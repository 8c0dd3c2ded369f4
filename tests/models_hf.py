"""Tiny Hugging Face transformers models, built from configs in code (random weights, no hub).

Each family has a factory (``gpt2``, ``bert``, ``llama``, ``vit``, ``resnet``, ``convnext``) and an
example function (``gpt2_batch``, ...) of the shape ``edgeplan profile FILE.py:FUNC``
takes: ``(kwargs, target)`` or, with ``labels`` in the kwargs, the kwargs alone.
2 layers, hidden size 32, sequence 16, batch 2. Qwen2, DistilBERT and Swin (at the end) are families
the capture was not written against.
"""

import torch

from planner import solvers
from planner.errors import InfeasibleError

BATCH, SEQ, HIDDEN, VOCAB, CLASSES, IMAGE = 2, 16, 32, 64, 3, 32


def _tokens(seed, high=VOCAB):
    return torch.randint(0, high, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _config(name, **fields):
    import transformers

    config = getattr(transformers, name)(**fields)
    config.attn_implementation = "eager"
    return config


def gpt2():
    import transformers

    torch.manual_seed(0)
    config = _config("GPT2Config", vocab_size=VOCAB, n_positions=SEQ, n_embd=HIDDEN, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def gpt2_batch():
    return {"input_ids": _tokens(1)}, _tokens(2)


def gpt2_labels():
    ids = _tokens(1)
    return {"input_ids": ids, "labels": ids}


def bert():
    import transformers

    torch.manual_seed(0)
    config = _config("BertConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * HIDDEN, max_position_embeddings=SEQ, num_labels=CLASSES)
    return transformers.BertForSequenceClassification(config)


def bert_batch():
    mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    mask[1, SEQ // 2:] = 0  # the second sequence is padded
    target = torch.tensor([0, 2])
    return {"input_ids": _tokens(3), "attention_mask": mask}, target


def bert_labels():
    kwargs, target = bert_batch()
    return {**kwargs, "labels": target}


def llama():
    import transformers

    torch.manual_seed(0)
    config = _config("LlamaConfig", vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=2 * SEQ)
    return transformers.LlamaForCausalLM(config)


def llama_batch():
    return {"input_ids": _tokens(4)}, _tokens(5)


def llama_labels():
    ids = _tokens(4)
    return {"input_ids": ids, "labels": ids}


def vit():
    import transformers

    torch.manual_seed(0)
    config = _config("ViTConfig", image_size=IMAGE, patch_size=8, num_channels=3, hidden_size=HIDDEN,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * HIDDEN,
                     num_labels=CLASSES)
    return transformers.ViTForImageClassification(config)


def _images(seed):
    return torch.randn(BATCH, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def vit_batch():
    return {"pixel_values": _images(6)}, torch.tensor([1, 2])


def vit_labels():
    return {"pixel_values": _images(6), "labels": torch.tensor([1, 2])}


def resnet():
    import transformers

    torch.manual_seed(0)
    config = _config("ResNetConfig", num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                     layer_type="basic", num_labels=CLASSES)
    return transformers.ResNetForImageClassification(config)


def resnet_batch():
    return {"pixel_values": _images(7)}, torch.tensor([0, 1])


def resnet_labels():
    return {"pixel_values": _images(7), "labels": torch.tensor([0, 1])}


def convnext():
    """A ConvNeXt with stochastic depth: ``torch.rand`` in its forward (drop path)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[2, 1], num_stages=2,
                                         num_labels=CLASSES, image_size=IMAGE, drop_path_rate=0.5)
    return transformers.ConvNextForImageClassification(config)


def convnext_labels():
    return {"pixel_values": _images(8), "labels": torch.tensor([2, 0])}


# Families beyond the five of issue 18, for the check that any family goes through as it comes.

def qwen2():
    import transformers

    torch.manual_seed(0)
    config = _config("Qwen2Config", vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=2 * SEQ)
    return transformers.Qwen2ForCausalLM(config)


def qwen2_batch():
    return {"input_ids": _tokens(8)}, _tokens(9)


def distilbert():
    import transformers

    torch.manual_seed(0)
    config = _config("DistilBertConfig", vocab_size=VOCAB, dim=HIDDEN, hidden_dim=2 * HIDDEN, n_layers=2, n_heads=2,
                     max_position_embeddings=2 * SEQ)
    return transformers.DistilBertForMaskedLM(config)


def distilbert_batch():
    return {"input_ids": _tokens(10)}, _tokens(11)


def swin():
    import transformers

    torch.manual_seed(0)
    config = _config("SwinConfig", image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                     window_size=4, num_labels=CLASSES)
    return transformers.SwinForImageClassification(config)


def swin_batch():
    return {"pixel_values": _images(12)}, torch.tensor([1, 2])


def halfway_budget(model):
    """``(store-all peak, budget)``: activation bytes halfway between the least that works and store-all's.

    At that budget a schedule recomputes; the tests and benchmarks of these models plan there.
    """
    full = solvers.solve(model, None, "store-all").result.peak_bytes
    try:
        solvers.solve(model, 1, "auto")
        least = 1
    except InfeasibleError as exc:
        least = exc.least_bytes
    return full, (least + full) // 2
