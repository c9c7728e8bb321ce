"""Tiny models of every supported architecture, built from transformers' own config classes (no downloads),
and what a complete prunable set of each must be, written out here independently of the library's layouts."""
from collections import Counter

import torch
import transformers as T

SIX = Counter(query=1, key=1, value=1, attention_output=1, ffn_in=1, ffn_out=1)

# kind -> (per stored layer: roles, matrices; pooler in the classification model; body Linear left dense)
EXPECTED = {
    "bert": dict(roles=SIX, matrices=6, pooler=True, dense=set()),
    "roberta": dict(roles=SIX, matrices=6, pooler=False, dense=set()),
    "xlm-roberta": dict(roles=SIX, matrices=6, pooler=False, dense=set()),
    "electra": dict(roles=SIX, matrices=6, pooler=False, dense={"embeddings_project"}),
    "distilbert": dict(roles=SIX, matrices=6, pooler=False, dense=set()),
    "deberta-v3": dict(roles=SIX, matrices=6, pooler=False, dense=set()),
    "deberta-v2-pos": dict(roles=SIX + Counter(pos_key=1, pos_query=1), matrices=8, pooler=False,
                           dense={"embeddings.embed_proj"}),
    "modernbert": dict(roles=SIX + Counter(ffn_gate=1), matrices=4, pooler=False, dense=set()),
    "albert": dict(roles=SIX, matrices=6, pooler=True, dense={"encoder.embedding_hidden_mapping_in"}),
    "albert-groups": dict(roles=SIX, matrices=6, pooler=True, dense={"encoder.embedding_hidden_mapping_in"}),
}
KINDS = list(EXPECTED)
LAYERED = [k for k in KINDS if k != "albert"]  # albert: one layer shared by all depths


def tiny_config(kind: str, vocab: int = 64, hidden: int = 16, layers: int = 2, heads: int = 2, ffn: int = 32,
                init: float = 0.02, num_labels: int = 2):
    common = dict(vocab_size=vocab, num_labels=num_labels, initializer_range=init)
    bert_like = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=80, **common)
    if kind == "bert":
        return T.BertConfig(**bert_like)
    if kind == "roberta":
        return T.RobertaConfig(**bert_like)
    if kind == "xlm-roberta":
        return T.XLMRobertaConfig(**bert_like)
    if kind == "electra":
        return T.ElectraConfig(embedding_size=hidden // 2, **bert_like)
    if kind == "distilbert":
        return T.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                                  max_position_embeddings=80, **common)
    if kind == "deberta-v3":  # the deberta-v3-base settings, scaled down
        return T.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                                 max_relative_positions=16, norm_rel_ebd="layer_norm", share_att_key=True,
                                 type_vocab_size=0, **bert_like)
    if kind == "deberta-v2-pos":  # position projections of their own and a factorised embedding
        return T.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16,
                                 share_att_key=False, embedding_size=hidden // 2, **bert_like)
    if kind == "modernbert":
        return T.ModernBertConfig(hidden_size=hidden, num_hidden_layers=layers + 1, num_attention_heads=heads,
                                  intermediate_size=ffn, max_position_embeddings=80, global_attn_every_n_layers=2,
                                  local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                  sep_token_id=2, **common)
    if kind == "albert":  # three depths, one stored layer
        return T.AlbertConfig(embedding_size=hidden // 2, **{**bert_like, "num_hidden_layers": layers + 1})
    if kind == "albert-groups":  # four depths, two stored layers (groups), each used at two depths
        return T.AlbertConfig(embedding_size=hidden // 2, num_hidden_groups=2,
                              **{**bert_like, "num_hidden_layers": 2 * layers})
    raise KeyError(kind)


def stored_layers(kind: str, config) -> int:
    if kind.startswith("albert"):
        return config.num_hidden_groups * config.inner_group_num
    return config.num_hidden_layers


def tiny_model(kind: str, head: str = "cls", seed: int = 0, **config_kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_config(kind, **config_kwargs)
    cls = T.AutoModelForSequenceClassification if head == "cls" else T.AutoModelForMaskedLM
    return cls.from_config(config).eval()


def batch(vocab: int = 64, n: int = 4, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g)
