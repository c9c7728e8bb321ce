"""A BERT whose layers have their own number of attention heads and FFN width (a structured lottery ticket).

Shipped inside every structured ticket saved by nni_bert_tickets, so it loads with transformers alone:

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

Only module shapes differ from BERT: attention reshapes with ``-1`` heads, so the forward pass is BERT's own.
"""
from torch import nn
from transformers import BertConfig, BertForSequenceClassification


class PrunedBertConfig(BertConfig):
    model_type = "pruned_bert"

    def __init__(self, heads_per_layer=None, intermediate_sizes=None, **kwargs):
        super().__init__(**kwargs)
        self.heads_per_layer = heads_per_layer or [self.num_attention_heads] * self.num_hidden_layers
        self.intermediate_sizes = intermediate_sizes or [self.intermediate_size] * self.num_hidden_layers


def shrink_bert_layers(bert, config):
    """Give each encoder layer the head count and FFN width the config names (weights are loaded after)."""
    head_size = config.hidden_size // config.num_attention_heads
    for layer, heads, width in zip(bert.encoder.layer, config.heads_per_layer, config.intermediate_sizes):
        attention = layer.attention.self
        inner = heads * head_size
        for name in ("query", "key", "value"):
            setattr(attention, name, nn.Linear(config.hidden_size, inner))
        attention.num_attention_heads, attention.all_head_size = heads, inner
        layer.attention.output.dense = nn.Linear(inner, config.hidden_size)
        layer.intermediate.dense = nn.Linear(config.hidden_size, width)
        layer.output.dense = nn.Linear(width, config.hidden_size)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config):
        super().__init__(config)
        shrink_bert_layers(self.bert, config)
        self.post_init()
