"""HookedCausalLM: what every hooked model of this project shares (HookedMONET, HookedDense).

Token helpers in the TransformerLens style, input checks, position and padding handling, the
next-token loss, caching with per-hook position slicing, generation with a KV cache, and
checkpoints in the Hugging Face folder format. A subclass supplies the blocks (``_run_blocks``),
its config class and the HF <-> hooked key renames of its layers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from jaxtyping import Float, Int
from transformer_lens import HookedRootModule

from monet_interp import loading
from monet_interp.activation_cache import HookedActivationCache
from monet_interp.components import Embed, KeyValueCache, RMSNorm, Unembed
from monet_interp.components.hooks import hook_point
from monet_interp.progress import progress_bar
from monet_interp.tokenizer import MonetTokenizer

TextOrTokens = str | list[str] | torch.Tensor


class HookedCausalLM(HookedRootModule):
    """Base class; subclasses build ``embed``, ``hook_embed``, ``blocks``, ``ln_final``, ``unembed``
    (with :meth:`build`)."""

    config_class: Any = None  # has from_json_file / to_json_file
    layer_renames: loading.LayerRenames = loading.MONET_LAYER_RENAMES
    default_checkpoint = ""

    # ------------------------------------------------------------------ basics
    def build(self, cfg: Any, tokenizer: MonetTokenizer | None, block: Callable[[Any, int], nn.Module],
              device: str | torch.device | None) -> None:
        """The shared layout: ``embed``, ``hook_embed``, ``blocks`` (``block(cfg, layer)`` each),
        ``ln_final`` and ``unembed`` (tied to the embedding when the config says so); then
        initialised weights, eval mode, hook setup, and ``device`` (default cpu)."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size)
        self.hook_embed = hook_point()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([block(cfg, layer) for layer in range(cfg.num_hidden_layers)])
        self.ln_final = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.unembed = Unembed(cfg.vocab_size, cfg.hidden_size, tied_to=self.embed if cfg.tie_word_embeddings else None)
        self.init_weights()
        self.eval()
        self.setup()
        self.to(device or "cpu")

    def setup(self) -> None:
        """TransformerLens' setup, plus short aliases ``blocks.{l}.hook_X`` for the MoE hooks
        ``blocks.{l}.moe.hook_X`` (the names ``transformer_lens.utils.get_act_name("g_row", l)``
        builds, e.g. in ``transformer_lens.patching``). Aliases are accepted by ``add_hook``,
        ``hooks``, ``run_with_hooks`` and the cache's ``[]``; hook_dict and caches keep real names."""
        super().setup()
        self.hook_aliases: dict[str, str] = {}
        for name in list(self.hook_dict):
            parts = name.split(".")
            if len(parts) == 4 and parts[0] == "blocks" and parts[2] == "moe":
                alias = f"blocks.{parts[1]}.{parts[3]}"
                if alias not in self.mod_dict:
                    self.hook_aliases[alias] = name
                    self.mod_dict[alias] = self.hook_dict[name]

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:
        return self.unembed.b_U

    @property
    def W_O(self) -> Float[torch.Tensor, "layer head d_head d_model"]:
        """Attention output matrices, TransformerLens layout (z[head, d_head] @ W_O[l, head] = result)."""
        return torch.stack([b.attn.o_proj.weight.T.reshape(b.attn.n_heads, b.attn.d_head, -1) for b in self.blocks])

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = False
                         ) -> Float[torch.Tensor, " d_model"]:
        """Sum of the attention output biases written before ``layer`` (and its own with
        ``mlp_input``): zero unless ``attention_bias``. The MLP/MoE layers have no fixed bias."""
        out = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for block in self.blocks[: layer + (1 if mlp_input else 0)]:
            if block.attn.o_proj.bias is not None:
                out = out + block.attn.o_proj.bias
        return out

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """Unembedding direction(s) W_U[:, token] ([d_model], or [*tokens.shape, d_model]); the
        final norm's weight is not folded in (HookedActivationCache.apply_ln_to_stack applies it)."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        tokens = torch.as_tensor(tokens, device=self.device)
        if tokens.numel() == 1:
            return self.W_U[:, tokens.item()]
        return self.W_U.T[tokens]

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def to(self, *args, **kwargs):  # keep cfg.device in sync (SAELens reads it)
        out = super().to(*args, **kwargs)
        self.cfg.device = str(self.device)
        return out

    def init_weights(self, seed: int | None = None) -> None:
        """Llama-style init: normal(0, initializer_range) for matrices, zeros for biases."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.initializer_range
        for name, param in self.named_parameters():
            if param.device.type == "meta":
                continue
            with torch.no_grad():
                if name.endswith(".weight") and "ln" in name.split(".")[-2]:
                    param.fill_(1.0)
                elif param.dim() >= 2 and not name.endswith((".b", ".b1", ".b2")):
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
                else:
                    param.zero_()

    def set_router_batch_stats(self, enabled: bool) -> None:
        """Route with batch statistics (training MONET); a no-op for models without routers."""

    # ------------------------------------------------------------------ tokens
    def _require_tokenizer(self) -> MonetTokenizer:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids, or load one with "
                             "model.tokenizer = MonetTokenizer.from_file(path)")
        return self.tokenizer

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = True, truncate: bool = True,
                  move_to_device: bool = True, padding_side: Literal["left", "right"] = "right") -> Int[torch.Tensor, "batch pos"]:
        """Token ids [batch, pos], padded with the pad id on ``padding_side``. ``prepend_bos=None``
        means the default (True), as in TransformerLens."""
        tokens, _ = self._tokenize(text, True if prepend_bos is None else prepend_bos, truncate, padding_side)
        return tokens.to(self.device) if move_to_device else tokens

    def _tokenize(self, text: str | list[str], prepend_bos: bool, truncate: bool,
                  padding_side: Literal["left", "right"]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids [batch, pos] on the CPU, mask [batch, pos]: True on real tokens, False on padding)."""
        tok = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        rows = []
        for item in texts:
            ids = tok.encode(item)
            if prepend_bos and tok.bos_token_id is not None:
                ids = [tok.bos_token_id, *ids]
            if truncate:
                ids = ids[: self.cfg.max_position_embeddings]
            rows.append(ids)
        width = max(1, max(len(r) for r in rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        def place(row: list, fill) -> list:
            return row + [fill] * (width - len(row)) if padding_side == "right" else [fill] * (width - len(row)) + row

        tokens = torch.tensor([place(r, pad) for r in rows], dtype=torch.long)
        mask = torch.tensor([place([True] * len(r), False) for r in rows], dtype=torch.bool)
        return tokens, mask

    def to_string(self, tokens: torch.Tensor | list[int] | int) -> str | list[str]:
        """Text of token ids: one string for [pos] (or a single id), a list for [batch, pos]."""
        tok = self._require_tokenizer()
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
            return [tok.decode(row.tolist()) for row in tokens]
        if isinstance(tokens, int) or (isinstance(tokens, torch.Tensor) and tokens.dim() == 0):
            return tok.decode([int(tokens)])
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return tok.decode(ids)

    def to_str_tokens(self, text: str | torch.Tensor | list[int], prepend_bos: bool | None = True) -> list[str]:
        tok = self._require_tokenizer()
        if isinstance(text, str):
            ids = self.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()
        elif isinstance(text, torch.Tensor):
            ids = text.flatten().tolist() if text.dim() <= 1 or text.shape[0] == 1 else text[0].tolist()
        else:
            ids = list(text)
        return tok.token_strings(ids)

    def to_single_token(self, text: str) -> int:
        ids = self._require_tokenizer().encode(text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one")
        return ids[0]

    def _as_tokens(self, inputs: TextOrTokens, prepend_bos: bool | None) -> torch.Tensor:
        if isinstance(inputs, (str, list)):
            return self.to_tokens(inputs, prepend_bos=True if prepend_bos is None else prepend_bos)
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"expected text or a token tensor, got {type(inputs).__name__}")
        if inputs.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got {inputs.dtype}")
        tokens = inputs.long()
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ValueError(f"token ids must be [batch, pos], got shape {tuple(inputs.shape)}")
        return tokens.to(self.device)

    def _check_tokens(self, tokens: torch.Tensor, past: int) -> None:
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is out of range for vocab_size={self.cfg.vocab_size}")
        if past + tokens.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"input of {past + tokens.shape[1]} positions exceeds max_position_embeddings="
                             f"{self.cfg.max_position_embeddings}")


    # ------------------------------------------------------------------ forward
    def forward(
        self,
        inputs: TextOrTokens,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        stop_at_layer: int | None = None,
        attention_mask: torch.Tensor | None = None,
        past_kv_cache: KeyValueCache | None = None,
        return_routing: bool = False,
    ):
        """Run the model.

        return_type: "logits" [batch, pos, d_vocab], "loss" (mean next-token cross-entropy, or
        [batch, pos-1] with loss_per_token), "both" (logits, loss), or None. stop_at_layer=l returns
        the residual stream entering block l. attention_mask [batch, pos] marks real tokens (1) and
        padding (0); positions count real tokens only. With return_routing=True the result is
        (result, [RoutingFactors of every router layer]) (an empty list for models without routers).
        """
        tokens = self._as_tokens(inputs, prepend_bos)
        past = past_kv_cache.length if past_kv_cache is not None else 0
        self._check_tokens(tokens, past)
        key_mask = None
        if past_kv_cache is not None and attention_mask is not None:
            previous = past_kv_cache.attention_mask
            if previous is None:
                previous = torch.ones(tokens.shape[0], past, dtype=torch.bool, device=tokens.device)
            past_kv_cache.attention_mask = torch.cat([previous, attention_mask.bool()], dim=1)
            attention_mask = past_kv_cache.attention_mask
        elif past_kv_cache is not None and past_kv_cache.attention_mask is not None:
            ones = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
            past_kv_cache.attention_mask = torch.cat([past_kv_cache.attention_mask, ones], dim=1)
            attention_mask = past_kv_cache.attention_mask
        if attention_mask is not None:
            key_mask = attention_mask.bool().to(tokens.device)
            positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -tokens.shape[1]:]
        else:
            positions = torch.arange(past, past + tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)

        resid = self.hook_embed(self.embed(tokens))
        resid, routers = self._run_blocks(resid, positions, key_mask, past_kv_cache, stop_at_layer)
        if stop_at_layer is not None:
            return (resid, routers) if return_routing else resid
        logits = self.unembed(self.ln_final(resid))
        if return_type == "logits":
            result = logits
        elif return_type in ("loss", "both"):
            mask = attention_mask if attention_mask is not None and past_kv_cache is None else None
            loss = self.loss_fn(logits, tokens, mask, per_token=loss_per_token)
            result = loss if return_type == "loss" else (logits, loss)
        elif return_type is None:
            result = None
        else:
            raise ValueError(f"unknown return_type {return_type!r}; use 'logits', 'loss', 'both' or None")
        return (result, routers) if return_routing else result

    def _run_blocks(self, resid: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None,
                    cache: KeyValueCache | None, stop_at_layer: int | None) -> tuple[torch.Tensor, list]:
        """Run ``blocks[:stop_at_layer]``; returns (residual stream, per-router routing outputs)."""
        raise NotImplementedError

    @staticmethod
    def loss_fn(logits: Float[torch.Tensor, "batch pos d_vocab"], tokens: Int[torch.Tensor, "batch pos"],
                attention_mask: torch.Tensor | None = None, per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy (nats). Padding (mask 0) positions are excluded from the mean."""
        if tokens.shape[1] < 2:
            raise ValueError("a loss needs at least two positions")
        shifted = logits[:, :-1]
        nll = F.cross_entropy(shifted.float().flatten(0, 1), tokens[:, 1:].flatten(),
                              reduction="none").view(shifted.shape[:2])
        if per_token:
            return nll
        if attention_mask is None:
            return nll.mean()
        valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
        return (nll * valid).sum() / valid.sum().clamp_min(1)

    # ------------------------------------------------------------------ caching
    def get_caching_hooks(self, names_filter=None, incl_bwd=False, device=None, remove_batch_dim=False, cache=None,
                          pos_slice=None):
        """TransformerLens' caching hooks, but ``pos_slice`` slices each hook's own position axis
        (routing tensors are [batch, pos, head, expert]: TransformerLens would slice heads)."""
        cache, fwd, bwd = super().get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache, None)
        if pos_slice is None:
            return cache, fwd, bwd
        try:
            from transformer_lens.utilities import Slice
        except ImportError:  # older TransformerLens
            from transformer_lens.utils import Slice

        position_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        if position_slice.mode == "empty":
            return cache, fwd, bwd
        points = self.hook_dict

        def sliced(name: str, hook_fn, suffix: str):
            axis = getattr(points[name], "pos_dim", 1) - (1 if remove_batch_dim else 0)

            def run(tensor, hook):
                hook_fn(tensor, hook)
                key = hook.name + suffix
                if cache[key].dim() > axis:
                    cache[key] = position_slice.apply(cache[key], dim=axis)

            return run

        fwd = [(name, sliced(name, fn, "")) for name, fn in fwd]
        bwd = [(name, sliced(name, fn, "_grad")) for name, fn in bwd]
        return cache, fwd, bwd

    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       **kwargs):
        """(output, ActivationCache). Accepts names_filter, device, pos_slice, incl_bwd and every
        forward argument (stop_at_layer, return_type, ...)."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            return out, HookedActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        inputs: TextOrTokens,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool = True,
        seed: int | None = None,
        stop_at_eos: bool = True,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        return_type: Literal["input", "str", "tokens"] = "input",
        verbose: bool = False,
    ) -> str | list[str] | torch.Tensor:
        """Sample a continuation. Hooks and expert edits active around the call apply at every step.

        Text prompts of different lengths are left-padded. Greedy when do_sample=False or
        temperature == 0. return_type "input" gives text for text input and tokens for tokens.
        """
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        as_text = isinstance(inputs, (str, list))
        if as_text:
            tokens, mask = self._tokenize(inputs, True if prepend_bos is None else prepend_bos, True, "left")
            tokens, mask = tokens.to(self.device), mask.to(self.device)
            attention_mask = None if bool(mask.all()) else mask
        else:
            tokens, attention_mask = self._as_tokens(inputs, prepend_bos), None
        self._check_tokens(tokens, max_new_tokens)
        prompt_len = tokens.shape[1]
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        cache = KeyValueCache(self.cfg.num_hidden_layers) if use_past_kv_cache else None
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=self.device)
        eos = self.cfg.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None and self.tokenizer.pad_token_id is not None else (eos or 0)
        step_input, step_mask = tokens, attention_mask
        for _ in progress_bar(range(max_new_tokens), disable=not verbose, desc="generate"):
            if cache is not None:
                logits = self(step_input, attention_mask=step_mask, past_kv_cache=cache)
            else:
                logits = self(tokens, attention_mask=attention_mask)
            next_logits = logits[:, -1, :].float()
            next_token = sample_next_token(next_logits, temperature if do_sample else 0.0, top_k, top_p, generator)
            if stop_at_eos and eos is not None:
                next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
                finished |= next_token == eos
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones_like(next_token[:, None], dtype=torch.bool)], 1)
            step_input, step_mask = next_token[:, None], None
            if stop_at_eos and bool(finished.all()):
                break
        if return_type == "tokens" or (return_type == "input" and not as_text):
            return tokens
        texts = [self._require_tokenizer().decode(ids) for ids in self._generated_rows(
            tokens, prompt_len, mask if as_text else None, skip_bos=as_text and prepend_bos is not False,
            eos=eos if stop_at_eos else None)]
        return texts[0] if isinstance(inputs, str) else texts

    @staticmethod
    def _generated_rows(tokens: torch.Tensor, prompt_len: int, prompt_mask: torch.Tensor | None, skip_bos: bool,
                        eos: int | None) -> list[list[int]]:
        """Per row: prompt (without left padding and the prepended bos) + continuation, cut before eos."""
        rows = []
        for row, ids in enumerate(tokens.tolist()):
            start = int((~prompt_mask[row]).sum()) if prompt_mask is not None else 0
            start += 1 if skip_bos else 0
            generated = ids[prompt_len:]
            if eos is not None and eos in generated:
                generated = generated[: generated.index(eos)]
            rows.append(ids[start:prompt_len] + generated)
        return rows


    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None):
        """Load an embedded checkpoint name, a local HF-format folder, or a hub id.

        The checkpoint's ``model_type`` must be this class's (``monet_interp.load_model`` picks the
        class by it).

        Floating-point weights are converted to ``dtype`` (default float32, also for the released
        bf16 checkpoints; pass dtype=torch.bfloat16 to keep them in bf16)."""
        source = str(name_or_path or cls.default_checkpoint)
        folder = loading.resolve_checkpoint(source)
        config = loading.read_config(folder)
        loading.check_model_type(config, cls.config_class.MODEL_TYPE, f"{cls.__name__}.from_pretrained", source)
        return cls.load_folder(folder, config, device=device, dtype=dtype)

    @classmethod
    def load_folder(cls, folder: Path, config: Any, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None):
        """``from_pretrained`` of a resolved checkpoint folder whose config.json was read as ``config``."""
        cfg = cls.config_class.from_dict(config)
        with torch.device("meta"):
            model = cls(cfg, MonetTokenizer.from_folder(folder), device="meta")
        model.load_hf_state_dict(loading.read_state_dict(folder), str(folder), assign=True)
        for module in model.modules():  # non-persistent buffers were created on meta
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer.device.type == "meta":
                    module.register_buffer(name, torch.zeros(buffer.shape, dtype=buffer.dtype), persistent=False)
        model.to(device or "cpu")
        model.to(dtype or torch.float32)
        model.checkpoint_path = str(folder)
        return model.eval()

    def load_hf_state_dict(self, hf_state: dict[str, torch.Tensor], source: str = "state dict",
                           assign: bool = False) -> None:
        """Load HF-named tensors (strict; every missing, unexpected or mis-shaped key named at once)."""
        state, unknown = loading.hf_to_hooked_state_dict(hf_state, self.layer_renames)
        loading.check_state_dict(self.state_dict(), state, unknown, source, self.layer_renames)
        self.load_state_dict(state, assign=assign, strict=True)

    def save_pretrained(self, folder: str | Path, save_tokenizer: bool = True) -> None:
        """Write config.json + model.safetensors with HF key names (+ the tokenizer)."""
        folder = Path(folder)
        loading.write_checkpoint(folder, self.cfg, dict(self.state_dict()), self.layer_renames)
        if save_tokenizer and self.tokenizer is not None:
            self.tokenizer.save(folder)


def sample_next_token(logits: Float[torch.Tensor, "batch d_vocab"], temperature: float, top_k: int | None,
                      top_p: float | None, generator: torch.Generator | None) -> Int[torch.Tensor, " batch"]:
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
