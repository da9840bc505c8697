"""Map a model family's modules onto the canonical hook point names.

Canonical names (TransformerLens style), with shapes:

    embed                    token embeddings          [batch, pos, d_model]
    blocks.{i}.resid_pre     residual into block i     [batch, pos, d_model]
    blocks.{i}.attn.pattern  attention probabilities   [batch, head, q_pos, k_pos]
    blocks.{i}.attn.heads    per-head outputs          [batch, pos, head, d_head]
    blocks.{i}.attn.out      attention output          [batch, pos, d_model]
    blocks.{i}.mlp.out       MLP output                [batch, pos, d_model]
    blocks.{i}.resid_post    residual out of block i   [batch, pos, d_model]
    final                    final norm output         [batch, pos, d_model]
    logits                                             [batch, pos, vocab]

For post-norm encoders (BERT) ``attn.out`` and ``mlp.out`` are the projections
before the residual add and LayerNorm, and ``final`` is the last block's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from torch import nn

from lmlens.errors import InvalidParamsError, UnsupportedArchitectureError


class Tap(Enum):
    """Where on a module a hook point reads its tensor."""

    OUTPUT = "output"  # the module's output (first element if it returns a tuple)
    OUTPUT_1 = "output_1"  # the second element of the output tuple (attention weights)
    INPUT = "input"  # the module's first input (hidden_states)
    HEADS = "heads"  # the first input of the attention output projection, split by head


@dataclass(frozen=True)
class Architecture:
    """Module paths for one family. Paths inside a block are relative to the block.

    ``prefixes`` lists where the base model may sit inside a task model (``model.``
    in LlamaForCausalLM, ``bert.`` in BertForMaskedLM, nothing in BertModel).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    embed: str
    attn: str  # module whose output is (attn_out, attn_weights)
    attn_out: str  # module whose output is the attention output
    attn_out_tap: Tap
    mlp_out: str
    final: str | None  # None: the last block's output is the final state
    prefixes: tuple[str, ...] = ("",)
    lm_head: str | None = "lm_head"
    causal: bool = True
    # module (relative to the block) whose first input is the heads side by side,
    # [batch, pos, n_heads * d_head]: the attention output projection
    heads_in: str | None = None


@dataclass(frozen=True)
class HookTarget:
    module: nn.Module
    tap: Tap
    layer: int | None = None


_BLOCK_POINT = re.compile(
    r"^blocks\.(\d+)\.(resid_pre|resid_post|attn\.pattern|attn\.heads|attn\.out|mlp\.out)$"
)
# Where other families keep the projection that mixes the heads, relative to the attention module.
_MIXERS = ("o_proj", "c_proj", "out_proj", "dense")


def point_names(n_layers: int) -> list[str]:
    """Every canonical hook point of a model with ``n_layers`` blocks, in forward order."""
    names = ["embed"]
    for i in range(n_layers):
        names += [
            f"blocks.{i}.resid_pre",
            f"blocks.{i}.attn.pattern",
            f"blocks.{i}.attn.heads",
            f"blocks.{i}.attn.out",
            f"blocks.{i}.mlp.out",
            f"blocks.{i}.resid_post",
        ]
    return [*names, "final", "logits"]


class ModuleMap:
    """Resolves canonical hook point names to (module, tap) on one model instance."""

    def __init__(self, model: nn.Module, arch: Architecture) -> None:
        self.model = model
        self.arch = arch
        self.prefix = self._find_prefix()
        blocks = self._get(self.prefix + arch.blocks)
        if not isinstance(blocks, nn.ModuleList):
            raise UnsupportedArchitectureError(f"{arch.blocks} is not a list of blocks")
        self.blocks: nn.ModuleList = blocks

    def _find_prefix(self) -> str:
        for prefix in self.arch.prefixes:
            if self._has(prefix + self.arch.blocks):
                return prefix
        raise UnsupportedArchitectureError(
            f"model does not have the {self.arch.name} layout (no {self.arch.blocks})"
        )

    def _has(self, path: str) -> bool:
        try:
            self.model.get_submodule(path)
        except AttributeError:
            return False
        return True

    def _get(self, path: str) -> nn.Module:
        try:
            return self.model.get_submodule(path)
        except AttributeError as exc:
            raise UnsupportedArchitectureError(f"{self.arch.name}: no module {path}") from exc

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def resolve(self, point: str) -> HookTarget:
        if point == "embed":
            return HookTarget(self._get(self.prefix + self.arch.embed), Tap.OUTPUT)
        if point == "final":
            if self.arch.final is None:
                return HookTarget(self.blocks[-1], Tap.OUTPUT)
            return HookTarget(self._get(self.prefix + self.arch.final), Tap.OUTPUT)
        if point == "logits":
            if self.arch.lm_head is None or not self._has(self.arch.lm_head):
                raise InvalidParamsError(
                    "this model has no language-model head, so it has no logits", field="methods"
                )
            return HookTarget(self._get(self.arch.lm_head), Tap.OUTPUT)
        match = _BLOCK_POINT.match(point)
        if not match:
            raise InvalidParamsError(
                f"unknown hook point {point!r}; points look like embed, blocks.0.resid_post, "
                f"blocks.0.attn.heads, final, logits (this model has blocks 0..{self.n_layers - 1})",
                field="point",
            )
        layer, kind = int(match.group(1)), match.group(2)
        if layer >= self.n_layers:
            raise InvalidParamsError(
                f"hook point {point!r}: the model has {self.n_layers} layers (0..{self.n_layers - 1})",
                field="layers",
            )
        block = self.blocks[layer]
        if kind == "resid_pre":
            return HookTarget(block, Tap.INPUT, layer)
        if kind == "resid_post":
            return HookTarget(block, Tap.OUTPUT, layer)
        if kind == "attn.pattern":
            return HookTarget(block.get_submodule(self.arch.attn), Tap.OUTPUT_1, layer)
        if kind == "attn.heads":
            return HookTarget(self.head_mixer(layer), Tap.HEADS, layer)
        if kind == "attn.out":
            return HookTarget(block.get_submodule(self.arch.attn_out), self.arch.attn_out_tap, layer)
        return HookTarget(block.get_submodule(self.arch.mlp_out), Tap.OUTPUT, layer)

    def head_mixer(self, layer: int) -> nn.Module:
        """The module of block ``layer`` whose first input is ``[batch, pos, n_heads * d_head]``."""
        block = self.blocks[layer]
        if self.arch.heads_in is not None:
            return block.get_submodule(self.arch.heads_in)
        attn = block.get_submodule(self.arch.attn)
        for name in _MIXERS:
            if hasattr(attn, name):
                return getattr(attn, name)  # type: ignore[no-any-return]
        out = block.get_submodule(self.arch.attn_out)
        if isinstance(out, nn.Linear):
            return out
        raise UnsupportedArchitectureError(
            f"{self.arch.name}: no attention output projection found in block {layer}; "
            "set Architecture.heads_in"
        )


def find_architecture(model_type: str, architectures: list[Architecture]) -> Architecture:
    for arch in architectures:
        if model_type in arch.model_types:
            return arch
    known = sorted(t for a in architectures for t in a.model_types)
    raise UnsupportedArchitectureError(
        f"no architecture is registered for model_type {model_type!r}; known: {', '.join(known)}"
    )
