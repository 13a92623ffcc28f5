"""Node encoders: node features (N, F) and edges (2, E) -> node embeddings (N, output_dim).

* :class:`GNNEncoder` — a stack of graph convolutions from torch-geometric: ``gat`` (Velickovic
  et al., ICLR 2018; multi-head, heads concatenated), ``gcn`` (Kipf & Welling, ICLR 2017) or
  ``gin`` (Xu et al., ICLR 2019; a 2-layer MLP per layer). Each layer is
  ``h <- act( conv( dropout(h), edge_index ) )``; the last layer's activation is optional
  (an encoder keeps it, a decoder drops it), as in GraphMAE's GAT.
* :class:`NodeMLP` — no message passing at all (SCGC, Graph-MLP): the graph only enters the
  loss. ``forward(x, edge_index=None)`` accepts and ignores the edges so both kinds are
  interchangeable.

torch-geometric is imported lazily: the rest of contrastkit works without it, and a missing
install is reported as a ConfigError naming the extra to install.
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

GNN_KINDS = ("gat", "gcn", "gin")


def _pyg_conv(kind: str, in_dim: int, out_dim: int, heads: int, attn_drop: float) -> nn.Module:
    try:
        from torch_geometric.nn import GATConv, GCNConv, GINConv
    except ImportError as err:
        raise ConfigError(
            f"GNN encoder '{kind}' needs torch-geometric: pip install 'contrastkit[graphs]' "
            f"(or pip install torch-geometric) ({err})."
        ) from None
    if kind == "gat":
        # out_dim is per head; heads are concatenated, so the layer outputs heads * out_dim.
        return GATConv(in_dim, out_dim, heads=heads, concat=True, dropout=attn_drop, negative_slope=0.2)
    if kind == "gcn":
        return GCNConv(in_dim, out_dim)
    mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.PReLU(), nn.Linear(out_dim, out_dim))
    return GINConv(mlp, train_eps=False)


def _activation(name: str) -> nn.Module:
    choices = {"prelu": nn.PReLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "identity": nn.Identity}
    if name not in choices:
        raise ConfigError(f"Unknown activation '{name}'. Valid activations: {', '.join(choices)}.")
    return choices[name]()


class GNNEncoder(nn.Module):
    """``num_layers`` graph convolutions of kind ``gat``, ``gcn`` or ``gin``.

    Widths: hidden layers output ``hidden_dim`` (for GAT: ``heads`` heads of ``hidden_dim //
    heads``, concatenated); the last layer outputs ``out_dim`` (GAT: ``out_heads`` heads of
    ``out_dim // out_heads``). ``output_dim == out_dim``.

    Args:
        feat_drop: dropout on each layer's input features.
        attn_drop: dropout on GAT attention coefficients (ignored by GCN/GIN).
        last_activation: apply the activation after the last layer too.
    """

    def __init__(
        self,
        kind: str,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        heads: int = 4,
        out_heads: int = 1,
        feat_drop: float = 0.0,
        attn_drop: float = 0.0,
        activation: str = "prelu",
        last_activation: bool = True,
    ):
        super().__init__()
        if kind not in GNN_KINDS:
            raise ConfigError(f"Unknown GNN encoder '{kind}'. Valid encoders: {', '.join(GNN_KINDS)}.")
        if num_layers < 1:
            raise ConfigError(f"A GNN encoder needs num_layers >= 1, got {num_layers}.")
        if kind != "gat":
            heads = out_heads = 1
        for width, h, what in ((hidden_dim, heads, "hidden_dim/heads"), (out_dim, out_heads, "out_dim/out_heads")):
            if width % h:
                raise ConfigError(f"GAT widths must divide by the heads: {what} = {width}/{h}.")
        self.kind = kind
        self.output_dim = out_dim
        self.dropout = nn.Dropout(feat_drop)
        self.convs = nn.ModuleList()
        self.activations = nn.ModuleList()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        for layer, d_in in enumerate(dims):
            last = layer == num_layers - 1
            width, h = (out_dim, out_heads) if last else (hidden_dim, heads)
            self.convs.append(_pyg_conv(kind, d_in, width // h, h, attn_drop))
            self.activations.append(_activation(activation) if (not last or last_activation) else nn.Identity())

    @property
    def blocks(self) -> nn.ModuleList:
        """Each layer's convolution and activation, in order: the layers of layer-wise rate decay
        when fine-tuning (:mod:`contrastkit.evaluation.fine_tune`)."""
        return nn.ModuleList(nn.Sequential(conv, act) for conv, act in zip(self.convs, self.activations))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = x
        for conv, act in zip(self.convs, self.activations):
            h = act(conv(self.dropout(h), edge_index))
        return h


class NodeMLP(nn.Module):
    """A per-node MLP ``Linear -> act -> ... -> Linear`` (no activation after the last layer).

    ``dims = (in_dim, h_1, ..., out_dim)``; SCGC uses (F, 500, 500, 2000, 10), SDCN's encoder.
    """

    def __init__(self, dims: tuple[int, ...] | list[int], activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if len(dims) < 2:
            raise ConfigError(f"NodeMLP needs at least (in_dim, out_dim), got dims={dims}.")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(pairwise(dims)):
            if i > 0:
                layers += [_activation(activation), nn.Dropout(dropout)]
            layers.append(nn.Linear(d_in, d_out))
        self.net = nn.Sequential(*layers)
        self.output_dim = dims[-1]

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:
        return self.net(x)
