"""HookedActivationCache: TransformerLens' ActivationCache, made exact for RMSNorm models with
unfolded norm weights (HookedMONET, HookedDense).

``model.run_with_cache(...)`` returns one. Everything of TransformerLens' ``ActivationCache``
works (indexing by short names, ``accumulated_resid``, ``stack_head_results``, ``logit_attrs``,
``stack_activation``, ``remove_batch_dim``, ...); four methods are redefined because
TransformerLens assumes a model loaded with ``fold_ln=True``:

- ``apply_ln_to_stack`` multiplies by the cached ``hook_scale`` (here 1/rms: the norm multiplies)
  **and by the norm's weight**, so a stack of components maps to that norm's output exactly:
  ``apply_ln_to_stack(stack).sum(0) == ln(resid)``. (TransformerLens divides by its hook_scale,
  which is rms there, and leaves the weight to have been folded into the next matrix.)
- ``decompose_resid`` / ``get_full_resid_decomposition`` need no ``cfg.attn_only`` /
  ``cfg.normalization_type`` fields; the full decomposition is heads + MoE (or MLP) outputs +
  embedding + bias. ``expand_neurons=True`` raises for MONET: it has no neurons.
- ``compute_head_results`` uses ``model.W_O`` [layer, head, d_head, d_model].

With these, ``cache.logit_attrs(cache.decompose_resid(), tokens)`` sums to the logits of
``tokens`` exactly, and ``cache.accumulated_resid(apply_ln=True) @ model.W_U`` is the logit lens::

    logits, cache = model.run_with_cache("def main():")
    stack, labels = cache.decompose_resid(return_labels=True)       # embed, 0_attn_out, 0_mlp_out, ...
    attrs = cache.logit_attrs(stack, tokens=model.to_tokens("def main():")[0, 1:])
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from transformer_lens import ActivationCache

try:
    from transformer_lens.utilities import Slice, get_act_name
except ImportError:  # older TransformerLens
    from transformer_lens.utils import Slice, get_act_name

NO_NEURONS = ("MONET has no neurons to expand: each MoE output is a per-token mixture of E^2 experts "
              "(use expand_neurons=False for per-layer MoE outputs, or monet_interp.editing.expert_attribution)")


def _as_slice(value: Any) -> Slice:
    return value if isinstance(value, Slice) else Slice(value)


def is_moe(model: Any) -> bool:
    """True for a model with routed experts (HookedMONET), False for e.g. the dense baseline."""
    return hasattr(model.blocks[0], "moe")


class HookedActivationCache(ActivationCache):
    """ActivationCache of a HookedCausalLM (see the module docstring for what differs)."""

    def __getitem__(self, key: Any) -> torch.Tensor:
        """TransformerLens indexing (full names, short names, (name, layer, type) tuples); the
        short MoE aliases ``blocks.{l}.hook_g_row`` etc. resolve to ``blocks.{l}.moe.hook_g_row``."""
        try:
            return super().__getitem__(key)
        except KeyError:
            name = key if isinstance(key, str) else get_act_name(*key)
            real = getattr(self.model, "hook_aliases", {}).get(name)
            if real is None or real not in self.cache_dict:
                raise
            return self.cache_dict[real]

    def _is_moe(self) -> bool:
        return is_moe(self.model)

    def _norm(self, layer: int, mlp_input: bool) -> tuple[str, torch.nn.Module]:
        n_layers = self.model.cfg.n_layers
        if layer == n_layers:
            if mlp_input:
                raise ValueError("mlp_input=True has no meaning for the final norm (layer == n_layers)")
            return "ln_final", self.model.ln_final
        block = self.model.blocks[layer]
        return (f"blocks.{layer}.ln2", block.ln2) if mlp_input else (f"blocks.{layer}.ln1", block.ln1)

    def apply_ln_to_stack(
        self,
        residual_stack: Float[torch.Tensor, "num_components *batch_and_pos_dims d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[torch.Tensor, "num_components *batch_and_pos_dims_out d_model"]:
        """Each component times the cached RMS scale and the weight of the norm that reads the
        stream at ``layer`` (ln1, or ln2 with ``mlp_input``; ``layer`` = n_layers / -1 / None: the
        final norm). With ``recompute_ln`` (final norm only) each component is normalised by its
        own RMS instead (the logit lens)."""
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        pos_slice, batch_slice = _as_slice(pos_slice), _as_slice(batch_slice)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        name, norm = self._norm(layer, mlp_input)
        if recompute_ln and layer == n_layers:
            flat = residual_stack.reshape(1, -1, residual_stack.shape[-1])
            return norm(flat).reshape(residual_stack.shape)
        key = f"{name}.hook_scale"
        if key not in self.cache_dict:
            raise KeyError(f"apply_ln needs {key} in the cache (run_with_cache without a names_filter "
                           f"that drops it)")
        scale = pos_slice.apply(self.cache_dict[key], dim=-2)
        if has_batch_dim:
            scale = batch_slice.apply(scale)
        out = residual_stack.to(scale.dtype) * scale * norm.weight.to(scale.dtype)
        return out.to(residual_stack.dtype)

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ):
        """The residual stream entering ``layer`` (default: the final norm) as a stack of the
        embedding and every earlier attention and MoE/MLP output (labels as TransformerLens:
        ``embed``, ``{l}_attn_out``, ``{l}_mlp_out``). With ``mlp_input`` the stream entering the
        MoE of ``layer`` (its attention output included)."""
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}")
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        pos_slice = _as_slice(pos_slice)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["hook_embed"])
            labels.append("embed")
        for l in range(layer):
            if mode != "mlp":
                parts.append(self[f"blocks.{l}.hook_attn_out"])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self[f"blocks.{l}.hook_mlp_out"])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self[f"blocks.{layer}.hook_attn_out"])
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise ValueError(f"nothing to decompose for layer={layer}, mode={mode!r}, incl_embeds={incl_embeds}")
        stack = torch.stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                           has_batch_dim=self.has_batch_dim)
        return (stack, labels) if return_labels else stack

    def compute_head_results(self) -> None:
        """Cache ``blocks.{l}.attn.hook_result`` [batch, pos, head, d_model] = z_h @ W_O[l, h]."""
        if "blocks.0.attn.hook_result" in self.cache_dict:
            return
        W_O = self.model.W_O
        for l in range(self.model.cfg.n_layers):
            z = self[f"blocks.{l}.attn.hook_z"]
            self.cache_dict[f"blocks.{l}.attn.hook_result"] = torch.einsum(
                "...hd,hdm->...hm", z, W_O[l].to(z.dtype))

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
        project_output_onto: torch.Tensor | None = None,
    ):
        """The stream entering ``layer`` as: every attention head's result (``L{l}H{h}``), every
        MoE/MLP output (``{l}_mlp_out``), the embedding and the summed attention output biases
        (``bias``). MONET: ``expand_neurons`` must be False (there are no neurons)."""
        if expand_neurons and self._is_moe():
            raise NotImplementedError(NO_NEURONS)
        if expand_neurons:
            raise NotImplementedError("get_full_resid_decomposition(expand_neurons=True) is not supported here; "
                                      "use expand_neurons=False")
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        pos_slice = _as_slice(pos_slice)
        heads, labels = self.stack_head_results(layer + (1 if mlp_input else 0), pos_slice=pos_slice,
                                                return_labels=True)
        parts = [heads]
        if layer > 0:
            mlps, mlp_labels = self.decompose_resid(layer, pos_slice=pos_slice, incl_embeds=False, mode="mlp",
                                                    return_labels=True)
            parts.append(mlps)
            labels = labels + mlp_labels
        embed = pos_slice.apply(self["hook_embed"], dim=-2)[None]
        bias = self.model.accumulated_bias(layer, mlp_input).to(embed.dtype).expand_as(embed)
        parts += [embed, bias]
        labels = labels + ["embed", "bias"]
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                           has_batch_dim=self.has_batch_dim)
        if project_output_onto is not None:
            stack = stack @ project_output_onto
        return (stack, labels) if return_labels else stack

    def get_neuron_results(self, *args: Any, **kwargs: Any):
        if self._is_moe():
            raise NotImplementedError(NO_NEURONS)
        return super().get_neuron_results(*args, **kwargs)

    def stack_neuron_results(self, *args: Any, **kwargs: Any):
        if self._is_moe():
            raise NotImplementedError(NO_NEURONS)
        return super().stack_neuron_results(*args, **kwargs)
