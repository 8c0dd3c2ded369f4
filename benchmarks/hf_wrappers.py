"""Hand wrappers of transformers models for ``edgeplan profile --stages ops`` (benchmarks/bench_blocks.py).

Each factory builds a model from a small config (random weights; the graph and
the sizes are what matter) and wraps it in a module whose ``forward`` takes
plain tensors and returns the logits, which torch.fx traces op by op.  BERT
gets its attention mask as a second input, so that the mask is an op every
attention layer reads.
"""

from torch import nn


class _Logits(nn.Module):
    def __init__(self, model, *, with_mask=False):
        super().__init__()
        self.model = model
        self.with_mask = with_mask

    def forward(self, input_ids, attention_mask=None):
        if self.with_mask:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.model(input_ids=input_ids).logits


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=2000, n_positions=128)
    return _Logits(GPT2LMHeadModel(config))


def bert():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, intermediate_size=512,
                        vocab_size=2000)
    return _Logits(BertForMaskedLM(config), with_mask=True)


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=344, vocab_size=2000)
    return _Logits(LlamaForCausalLM(config))


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, intermediate_size=512,
                       image_size=64, patch_size=8, num_labels=100)
    return _Pixels(ViTForImageClassification(config))


class _Pixels(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3],
                          layer_type="bottleneck", num_labels=100)
    return _Pixels(ResNetForImageClassification(config))
