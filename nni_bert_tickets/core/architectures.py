"""The one place that knows each supported encoder's layout: which ``nn.Linear`` plays which role.

A :class:`Layout` names, per stored transformer layer, the matrices the paper prunes and the role each plays
(``query``, ``key``, ``value``, ``attention_output``, ``ffn_in``, ``ffn_out``, plus ``ffn_gate``, ``pos_key``
and ``pos_query`` where an architecture has them), the pooler where the body has a pre-trained one, and the
``nn.Linear`` modules of the body it deliberately leaves dense (embedding projections). A fused matrix is one
matrix with several roles: ModernBERT's ``attn.Wqkv`` is (query, key, value), its gated ``mlp.Wi`` is
(ffn_in, ffn_gate). ALBERT stores one set of layer matrices that every depth reuses: it is pruned once, and
that one mask acts at every depth.

The layout is chosen by ``model.config.model_type``. Selection is exact or refused: every matrix the layout
expects must be found, and every ``nn.Linear`` of the body must be either selected or one the layout names as
left dense; an unknown architecture is refused with a list of its ``nn.Linear`` modules. To prune another
architecture, name the set by hand (``patterns=`` / ``names=`` on :func:`prunable_matrices` and
``bert_config_list``), or :func:`register_architecture` so that tickets, baselines and the runner use it too.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["Layout", "Matrix", "ArchitectureError", "LAYOUTS", "register_architecture", "layout_of", "HeadLayer",
           "structured_layers", "prunable_matrices", "model_type", "is_pooler", "ROLES"]

ROLES = ("query", "key", "value", "pos_key", "pos_query", "attention_output", "ffn_in", "ffn_gate", "ffn_out",
         "pooler")
_POOLER = re.compile(r"(^|\.)pooler(\.dense)?(\.weight)?$")


class ArchitectureError(ValueError):
    """A model whose prunable set cannot be named exactly: unknown type, or a layout that does not match."""


def is_pooler(name: str) -> bool:
    """Whether a module name or ticket key names a pooler dense (BERT's ``pooler.dense``, ALBERT's ``pooler``)."""
    return bool(_POOLER.search(name))


@dataclass(frozen=True)
class Matrix:
    """One prunable matrix: its full module name, the roles its rows play, and where it sits."""
    name: str
    roles: Tuple[str, ...]
    layer: Optional[int]  # index among the stored layers; None for the pooler (or a hand-named matrix outside one)
    slot: str             # name inside its layer ('attention.self.query'), or the name relative to the body

    @property
    def pooler(self) -> bool:
        return self.roles == ("pooler",)


@dataclass(frozen=True)
class Layout:
    """Where one architecture keeps its prunable matrices (names relative to the model body)."""
    model_types: Tuple[str, ...]
    family: str
    layers: Callable[[object], List[str]]                 # config -> the stored layers' paths, in depth order
    matrices: Tuple[Tuple[str, Tuple[str, ...]], ...]    # (path inside a layer, roles)
    pooler: Optional[str] = None                         # path of a pre-trained pooler dense, where the body has one
    dense: Tuple[str, ...] = ()                          # regexes of body Linear modules left dense, by design
    extra: Callable[[object], Tuple[Tuple[str, Tuple[str, ...]], ...]] = lambda config: ()  # per-config matrices
    shared_layers: bool = False                          # one stored layer reused at several depths (ALBERT)
    head_attrs: Optional[Tuple[str, str]] = None          # attention attributes holding (head count, width):
    #                                                      structured tickets are supported where this is set
    notes: str = ""

    def slots(self, config) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
        return tuple(self.matrices) + tuple(self.extra(config))


@dataclass(frozen=True)
class _HandLayout:
    """A prunable set named by hand for a model type (see :func:`register_architecture`)."""
    model_types: Tuple[str, ...]
    patterns: Tuple[str, ...] = ()
    names: Tuple[str, ...] = ()
    family: str = "by hand"
    head_attrs = None
    shared_layers = False


def _stacked(path: str, count: str = "num_hidden_layers") -> Callable[[object], List[str]]:
    return lambda config: [path.format(i=i) for i in range(int(getattr(config, count)))]


def _albert_layers(config) -> List[str]:
    return [f"encoder.albert_layer_groups.{g}.albert_layers.{j}"
            for g in range(int(config.num_hidden_groups)) for j in range(int(config.inner_group_num))]


def _deberta_position_projections(config) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    """DeBERTa's own projections of the relative position embeddings, present unless ``share_att_key``."""
    if not getattr(config, "relative_attention", False) or getattr(config, "share_att_key", False):
        return ()
    kinds = getattr(config, "pos_att_type", None) or []
    return tuple((path, (role,)) for kind, path, role in (("c2p", "attention.self.pos_key_proj", "pos_key"),
                                                           ("p2c", "attention.self.pos_query_proj", "pos_query"))
                 if kind in kinds)


_BERT_MATRICES = (("attention.self.query", ("query",)), ("attention.self.key", ("key",)),
                  ("attention.self.value", ("value",)), ("attention.output.dense", ("attention_output",)),
                  ("intermediate.dense", ("ffn_in",)), ("output.dense", ("ffn_out",)))
_BERT_HEADS = ("num_attention_heads", "all_head_size")

LAYOUTS: Dict[str, object] = {}


def _add(layout) -> None:
    for kind in layout.model_types:
        LAYOUTS[kind] = layout


_add(Layout(("bert",), "BERT", _stacked("encoder.layer.{i}"), _BERT_MATRICES, pooler="pooler.dense",
            head_attrs=_BERT_HEADS, notes="the paper's layout: 6 matrices per layer + the pooler"))
_add(Layout(("pruned_bert",), "structured BERT ticket", _stacked("encoder.layer.{i}"), _BERT_MATRICES,
            pooler="pooler.dense", notes="a saved structured ticket (save_structured): BERT's names, smaller layers"))
_add(Layout(("roberta", "xlm-roberta"), "RoBERTa / XLM-R", _stacked("encoder.layer.{i}"), _BERT_MATRICES,
            pooler="pooler.dense", head_attrs=_BERT_HEADS,
            notes="BERT's names; classification models have no pooler (classifier.dense is the task head)"))
_add(Layout(("electra",), "ELECTRA", _stacked("encoder.layer.{i}"), _BERT_MATRICES, dense=(r"embeddings_project",),
            head_attrs=_BERT_HEADS, notes="no pooler; embeddings_project (embedding size -> hidden) stays dense"))
_add(Layout(("distilbert",), "DistilBERT", _stacked("transformer.layer.{i}"),
            (("attention.q_lin", ("query",)), ("attention.k_lin", ("key",)), ("attention.v_lin", ("value",)),
             ("attention.out_lin", ("attention_output",)), ("ffn.lin1", ("ffn_in",)), ("ffn.lin2", ("ffn_out",))),
            head_attrs=("n_heads", "dim"), notes="q_lin/k_lin/v_lin/out_lin/ffn.lin1/ffn.lin2; no pooler"))
_add(Layout(("deberta-v2",), "DeBERTa-v2 / v3", _stacked("encoder.layer.{i}"),
            (("attention.self.query_proj", ("query",)), ("attention.self.key_proj", ("key",)),
             ("attention.self.value_proj", ("value",)), ("attention.output.dense", ("attention_output",)),
             ("intermediate.dense", ("ffn_in",)), ("output.dense", ("ffn_out",))),
            dense=(r"embeddings\.embed_proj",), extra=_deberta_position_projections, head_attrs=_BERT_HEADS,
            notes="query_proj/key_proj/value_proj; pos_key_proj/pos_query_proj too where share_att_key is off; "
                  "the classification pooler (ContextPooler) is a fresh task head, not pruned"))
_add(Layout(("modernbert",), "ModernBERT", _stacked("layers.{i}"),
            (("attn.Wqkv", ("query", "key", "value")), ("attn.Wo", ("attention_output",)),
             ("mlp.Wi", ("ffn_in", "ffn_gate")), ("mlp.Wo", ("ffn_out",))),
            notes="fused Wqkv (one matrix, three roles) and gated Wi (input and gate rows): 4 matrices per layer; "
                  "no pooler (head.dense belongs to the task head)"))
_add(Layout(("albert",), "ALBERT", _albert_layers,
            (("attention.query", ("query",)), ("attention.key", ("key",)), ("attention.value", ("value",)),
             ("attention.dense", ("attention_output",)), ("ffn", ("ffn_in",)), ("ffn_output", ("ffn_out",))),
            pooler="pooler", dense=(r"encoder\.embedding_hidden_mapping_in",), shared_layers=True,
            notes="one stored layer shared by every depth: pruned once, its mask acts at every depth"))


def register_architecture(model_type: str, *, patterns: Sequence[str] = (), names: Sequence[str] = (),
                          layout: Optional[Layout] = None) -> None:
    """Make a model type prunable everywhere (tickets, pruners, baselines, the runner).

    Either name its matrices by hand (``patterns``: regexes searched in full ``nn.Linear`` module names;
    ``names``: exact module names) or give a full :class:`Layout` (roles, layers, pooler, structured support).
    A hand-named set has no roles; its layer index (for θ0″ ``mode='layers'``) is the first number in a name.
    """
    if layout is not None:
        if patterns or names:
            raise ValueError("register_architecture: give a layout, or patterns/names, not both")
        if model_type not in layout.model_types:
            layout = dataclasses.replace(layout, model_types=(*layout.model_types, model_type))
        LAYOUTS[model_type] = layout
        return
    if isinstance(patterns, str) or isinstance(names, str):
        raise ValueError("patterns and names are lists of strings, not one string")
    if not patterns and not names:
        raise ValueError("register_architecture needs patterns=[...], names=[...] or layout=Layout(...)")
    _compile(patterns)
    LAYOUTS[model_type] = _HandLayout((model_type,), tuple(patterns), tuple(names))


def model_type(model: torch.nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "") or "")


def layout_of(model: torch.nn.Module):
    """The model's :class:`Layout` (or hand-registered set); :class:`ArchitectureError` for an unknown type."""
    kind = model_type(model)
    if kind not in LAYOUTS:
        raise ArchitectureError(_unknown_message(model, kind))
    return LAYOUTS[kind]


def prunable_matrices(model: torch.nn.Module, *, patterns: Optional[Sequence[str]] = None,
                      names: Optional[Sequence[str]] = None) -> Dict[str, Matrix]:
    """Every prunable matrix of ``model`` (pooler included where there is one), by full module name, in model
    order. ``patterns`` / ``names`` name the set by hand instead of the model type's layout."""
    if patterns is not None or names is not None:
        return _by_hand(model, patterns or (), names or ())
    layout = layout_of(model)
    if isinstance(layout, _HandLayout):
        return _by_hand(model, layout.patterns, layout.names)
    return _by_layout(model, layout)


# ---- selection ---------------------------------------------------------------------------------------------
def _body_prefix(model: torch.nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), torch.nn.Module) else ""


def _linears(model: torch.nn.Module) -> Dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _by_layout(model: torch.nn.Module, layout: Layout) -> Dict[str, Matrix]:
    prefix, linear, config = _body_prefix(model), _linears(model), model.config
    wanted: Dict[str, Matrix] = {}
    for index, path in enumerate(layout.layers(config)):
        for slot, roles in layout.slots(config):
            name = f"{prefix}{path}.{slot}"
            wanted[name] = Matrix(name, roles, index, slot)
    missing = [n for n in wanted if n not in linear]
    if missing:
        raise ArchitectureError(
            f"{type(model).__name__} is a {model_type(model)!r} model, but {len(missing)} of the {len(wanted)} "
            f"matrices its {layout.family} layout expects are not nn.Linear modules of it (e.g. {missing[:3]}). "
            f"Its nn.Linear modules: {_summary(linear)}. " + _BY_HAND)
    if layout.pooler and f"{prefix}{layout.pooler}" in linear:
        wanted[f"{prefix}{layout.pooler}"] = Matrix(f"{prefix}{layout.pooler}", ("pooler",), None, layout.pooler)
    dense = [re.compile(rf"^{re.escape(prefix)}{p}$") for p in layout.dense]
    unplaced = [n for n in linear if n.startswith(prefix) and n not in wanted and not any(d.match(n) for d in dense)]
    if unplaced:
        raise ArchitectureError(
            f"{type(model).__name__} ({model_type(model)!r}) has nn.Linear modules in its body that the "
            f"{layout.family} layout does not place: {_summary({n: linear[n] for n in unplaced})}. It may be a variant "
            "this library does not know; pruning without them would be a partial ticket. " + _BY_HAND)
    order = {n: i for i, n in enumerate(linear)}
    return dict(sorted(wanted.items(), key=lambda kv: order[kv[0]]))


def _by_hand(model: torch.nn.Module, patterns: Sequence[str], names: Sequence[str]) -> Dict[str, Matrix]:
    if isinstance(patterns, str) or isinstance(names, str):
        raise ValueError("patterns and names are lists of strings, not one string")
    linear, compiled, named = _linears(model), _compile(patterns), set(names)
    wrong = [n for n in names if n not in linear]
    if wrong:
        raise ArchitectureError(f"names {wrong[:5]} are not nn.Linear modules of {type(model).__name__}; "
                                f"its nn.Linear modules: {_summary(linear)}")
    for pattern, regex in zip(patterns, compiled):
        if not any(regex.search(n) for n in linear):
            raise ArchitectureError(f"pattern {pattern!r} matches no nn.Linear module of {type(model).__name__}; "
                                    f"its nn.Linear modules: {_summary(linear)}")
    chosen = [n for n in linear if n in named or any(r.search(n) for r in compiled)]
    known: Dict[str, Matrix] = {}
    try:  # a hand-named subset of a known layout keeps the layout's roles
        layout = LAYOUTS.get(model_type(model))
        known = _by_layout(model, layout) if isinstance(layout, Layout) else {}
    except ArchitectureError:
        pass
    prefix = _body_prefix(model)
    return {n: known.get(n) or _generic(n, prefix) for n in chosen}


def _generic(name: str, prefix: str) -> Matrix:
    rel = name[len(prefix):] if prefix and name.startswith(prefix) else name
    if is_pooler(rel):
        return Matrix(name, ("pooler",), None, rel)
    parts = rel.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return Matrix(name, ("matrix",), int(part), ".".join(parts[i + 1:]))
    return Matrix(name, ("matrix",), None, rel)


def _compile(patterns: Sequence[str]) -> List[re.Pattern]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except (re.error, TypeError) as err:
            raise ValueError(f"prunable-set pattern {pattern!r} is not a regular expression: {err}") from err
    return out


_BY_HAND = ("Name the prunable set by hand: prunable_modules(model, patterns=[r'layer\\.\\d+\\.attn\\.q$', ...]) "
            "or names=[...] (the same keywords on bert_config_list), or "
            "nni_bert_tickets.core.architectures.register_architecture(model_type, patterns=[...]) so that tickets, "
            "baselines and the runner use it too.")


def _unknown_message(model: torch.nn.Module, kind: str) -> str:
    known = ", ".join(sorted(k for k, v in LAYOUTS.items() if isinstance(v, Layout)))
    return (f"{type(model).__name__} (model_type {kind or None!r}) is not a known architecture, so it has no "
            f"prunable BERT matrices this library can name (known: {known}). Its nn.Linear modules: "
            f"{_summary(_linears(model))}. " + _BY_HAND)


def _summary(linear: Dict[str, object]) -> str:
    """Linear module names with layer numbers folded and one shape each: "'encoder.layer.{i}.attn.q' 16x16 (x12)"."""
    groups: Dict[str, List] = {}
    for name, module in linear.items():
        groups.setdefault(re.sub(r"\.\d+(?=\.|$)", ".{i}", name), []).append(module)
    if not groups:
        return "none"
    return "; ".join(f"{name!r}{_shape(mods[0])}" + (f" (x{len(mods)})" if len(mods) > 1 else "")
                     for name, mods in groups.items())


def _shape(module) -> str:
    weight = getattr(module, "weight", None)
    return f" {weight.shape[0]}x{weight.shape[1]}" if isinstance(weight, torch.Tensor) and weight.dim() == 2 else ""


# ---- structured tickets ------------------------------------------------------------------------------------
@dataclass
class HeadLayer:
    """One layer's modules as structured pruning sees them."""
    attention: torch.nn.Module        # holds the head count and width attributes (``head_attrs``)
    head_attrs: Tuple[str, str]
    heads: List[torch.nn.Linear]      # per-head output rows: query first, then key, value (+ DeBERTa's pos_*)
    attention_output: torch.nn.Linear
    ffn_in: torch.nn.Linear
    ffn_out: torch.nn.Linear


def structured_layers(model: torch.nn.Module) -> List[HeadLayer]:
    """The model's layers for structured tickets; an :class:`ArchitectureError` naming the supported types
    where heads and FFN channels cannot be removed one by one."""
    layout = layout_of(model)
    fused = isinstance(layout, Layout) and any(len(roles) > 1 for _, roles in layout.matrices)
    if not isinstance(layout, Layout) or layout.head_attrs is None or layout.shared_layers or fused:
        supported = sorted(k for k, v in LAYOUTS.items() if isinstance(v, Layout) and v.head_attrs
                           and not v.shared_layers)
        why = (" (one layer shared by every depth: a head cannot be removed at one depth only)"
               if getattr(layout, "shared_layers", False) else
               " (fused projections: heads and channels are interleaved in one matrix)" if fused else "")
        raise ArchitectureError(f"structured tickets (heads and FFN channels) support the model types "
                                f"{', '.join(supported)}; {model_type(model)!r} is not one of them{why}. "
                                "Unstructured tickets work for it")
    modules = dict(model.named_modules())
    by_layer: Dict[int, Dict[str, str]] = {}
    for name, matrix in prunable_matrices(model).items():
        if matrix.layer is not None:
            for role in matrix.roles:
                by_layer.setdefault(matrix.layer, {})[role] = name
    out = []
    for index in sorted(by_layer):
        roles = by_layer[index]
        query = roles["query"]
        out.append(HeadLayer(
            attention=modules[query.rsplit(".", 1)[0]], head_attrs=layout.head_attrs,
            heads=[modules[roles[r]] for r in ("query", "key", "value", "pos_key", "pos_query") if r in roles],
            attention_output=modules[roles["attention_output"]], ffn_in=modules[roles["ffn_in"]],
            ffn_out=modules[roles["ffn_out"]]))
    return out
