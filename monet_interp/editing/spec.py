"""Expert edits as plain, validated, serialisable data.

An :class:`ExpertEdit` changes the weight of one MONET expert (i, j) on every token::

    ExpertEdit(i, j, op, value=None, group=None, layer=None, heads=None)

Weights. On a token, head h gives expert (i, j) the weight w_h = g_row[h, i] * g_col[h, j] and the
layer uses the summed weight s = sum_h w_h. With ``heads=None`` an edit acts on s; with
``heads=[h, ...]`` it acts on each listed head's w_h separately (then summed as usual):

    ====== ============================== ==============================================
    op     heads=None (on s)              heads=[...] (on each listed w_h)
    ====== ============================== ==============================================
    prune  s := 0                         w_h := 0
    scale  s := value * s                 w_h := value * w_h
    set    s := value                     w_h := value   (so s gains len(heads) * value)
    add    s := s + value                 w_h := w_h + value
    ====== ============================== ==============================================

``set`` and ``add`` act on every token, also where the router gave the expert no weight: this is
how an unselected expert is switched on (steering). Pruned weight is not renormalised.

Scope (where the edit applies). Every layer of a routing group shares the routing factors, so the
natural unit is the group; an edit must name its scope explicitly, there is no default:

- ``group=g``     every layer of routing group g (``cfg.layers_of_group(g)``);
- ``group="all"`` every layer of the model (expert (i, j) of every group);
- ``layer=l``     layer l only.

Giving neither (or both) is an error. Expert (i, j) of one group and (i, j) of another are
different experts (different weights); ``group="all"`` exists for uniform sweeps.

Other spellings: ``ExpertEdit.from_flat(e, E, ...)`` for the paper's flat ids e = i*E + j (an int
or any iterable of ints), ``ExpertEdit.from_matrix(M, ...)`` for an [E, E] (or per head [H, E, E])
boolean prune mask or float scale multipliers. :class:`EditSet` bundles edits with metadata and
round-trips through JSON so an ablation run is reproducible from a file.

Validation: intrinsic problems (unknown op, missing/unexpected value, negative scale without
``allow_negative=True``, non-finite value, no scope, bad heads) raise :class:`EditError` when the
edit is built; model-dependent ones (i, j, flat id, layer, group or head out of range, two edits
on the same expert, layer and head) when the edits are checked against a config
(:func:`check_edits`, :meth:`EditSet.validate`, or on entering ``model.edit_experts``).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

OPS = ("prune", "scale", "set", "add")
ALL_GROUPS = "all"
JSON_FORMAT = "monet-interp/expert-edits"
JSON_VERSION = 1


class EditError(ValueError):
    """An expert edit is malformed, out of range for the model, or conflicts with another."""


def _index(value: object, what: str) -> int:
    """A non-negative int from an int-like (int, numpy int, 0-dim integer tensor)."""
    if isinstance(value, bool):
        raise EditError(f"{what} must be an integer, got the bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise EditError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None
    if out < 0:
        raise EditError(f"{what} must be >= 0, got {out}")
    return out


def _number(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise EditError(f"{what} must be a number, got the bool {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EditError(f"{what} must be a number, got {type(value).__name__} {value!r}") from None
    if not math.isfinite(out):
        raise EditError(f"{what} must be finite, got {out}")
    return out


class ExpertEdit:
    """One edit of expert (i, j): op in "prune", "scale", "set", "add" (see the module docstring).

    Immutable and hashable; ``heads`` is stored as a sorted tuple, ``value`` as a float.
    """

    __slots__ = ("i", "j", "op", "value", "group", "layer", "heads", "allow_negative")

    i: int
    j: int
    op: str
    value: float | None
    group: int | str | None
    layer: int | None
    heads: tuple[int, ...] | None
    allow_negative: bool

    def __init__(self, i: object, j: object, op: str, value: object = None, group: object = None,
                 layer: object = None, heads: object = None, *, allow_negative: bool = False) -> None:
        set_ = object.__setattr__
        set_(self, "i", _index(i, "expert row i"))
        set_(self, "j", _index(j, "expert column j"))
        if not isinstance(op, str) or op.lower() not in OPS:
            raise EditError(f"unknown op {op!r}; expected one of {OPS}")
        op = op.lower()
        set_(self, "op", op)
        if op == "prune":
            if value is not None:
                raise EditError(f"prune takes no value (got value={value!r}); use op='scale' to shrink "
                                f"a weight or op='set' to clamp it")
            set_(self, "value", None)
        else:
            if value is None:
                raise EditError(f"op {op!r} needs a value")
            number = _number(value, f"value of {op!r}")
            if op == "scale" and number < 0 and not allow_negative:
                raise EditError(f"negative scale {number} flips the expert's sign; pass "
                                f"allow_negative=True if that is intended")
            set_(self, "value", number)
        set_(self, "allow_negative", bool(allow_negative))
        if group is None and layer is None:
            raise EditError(f"ExpertEdit({self.i}, {self.j}, {op!r}) has no scope: pass group=g (every "
                            f"layer of routing group g), group='all' (every layer) or layer=l (one layer)")
        if group is not None and layer is not None:
            raise EditError(f"give group or layer, not both (got group={group!r}, layer={layer!r})")
        if isinstance(group, str):
            if group != ALL_GROUPS:
                raise EditError(f"group must be an integer or 'all', got {group!r}")
            set_(self, "group", ALL_GROUPS)
        else:
            set_(self, "group", None if group is None else _index(group, "group"))
        set_(self, "layer", None if layer is None else _index(layer, "layer"))
        if heads is None:
            set_(self, "heads", None)
        else:
            scalar = (not isinstance(heads, Iterable) or isinstance(heads, (str, bytes))
                      or (hasattr(heads, "dim") and heads.dim() == 0))  # a 0-dim tensor looks iterable
            items = [heads] if scalar else list(heads)
            ids = [_index(h, "head") for h in items]
            if not ids:
                raise EditError("heads must list at least one head (use heads=None for all heads)")
            if len(set(ids)) != len(ids):
                raise EditError(f"heads lists a head twice: {ids}")
            set_(self, "heads", tuple(sorted(ids)))

    # ------------------------------------------------------------------ value semantics
    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ExpertEdit is immutable; use .replace(...)")

    def _key(self) -> tuple:
        return (self.i, self.j, self.op, self.value, self.group, self.layer, self.heads, self.allow_negative)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExpertEdit) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [str(self.i), str(self.j), repr(self.op)]
        if self.value is not None:
            parts.append(f"value={self.value!r}")
        if self.group is not None:
            parts.append(f"group={self.group!r}")
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        if self.heads is not None:
            parts.append(f"heads={list(self.heads)}")
        if self.allow_negative:
            parts.append("allow_negative=True")
        return f"ExpertEdit({', '.join(parts)})"

    def __reduce__(self):
        return (_rebuild, (self.to_dict(),))

    def replace(self, **changes: Any) -> ExpertEdit:
        """A copy with some fields changed (validated again). Scope fields replace each other:
        replace(layer=3) on a group edit drops the group."""
        fields = {"i": self.i, "j": self.j, "op": self.op, "value": self.value, "group": self.group,
                  "layer": self.layer, "heads": self.heads, "allow_negative": self.allow_negative}
        if "layer" in changes and "group" not in changes:
            fields["group"] = None
        if "group" in changes and "layer" not in changes:
            fields["layer"] = None
        if changes.get("op") == "prune" and "value" not in changes:
            fields["value"] = None
        fields.update(changes)
        allow = fields.pop("allow_negative")
        return ExpertEdit(**fields, allow_negative=allow)

    # ------------------------------------------------------------------ scope
    def flat_id(self, n_experts: int) -> int:
        """The paper's flat expert id i * E + j."""
        return self.i * n_experts + self.j

    def layers(self, cfg: Any) -> list[int]:
        """The layers this edit applies to under a MonetConfig (no range checks; see check_edits)."""
        if self.layer is not None:
            return [self.layer]
        if self.group == ALL_GROUPS:
            return list(range(cfg.num_hidden_layers))
        return list(cfg.layers_of_group(self.group))

    # ------------------------------------------------------------------ alternative spellings
    @classmethod
    def from_flat(cls, e: object, n_experts: int, op: str, value: object = None, group: object = None,
                  layer: object = None, heads: object = None, *, allow_negative: bool = False
                  ) -> ExpertEdit | list[ExpertEdit]:
        """Edit(s) from flat ids e = i * E + j: one id gives an ExpertEdit, an iterable a list."""
        n = _index(n_experts, "n_experts")
        if n == 0:
            raise EditError("n_experts must be positive")

        def one(flat: object) -> ExpertEdit:
            idx = _index(flat, "flat expert id")
            if idx >= n * n:
                raise EditError(f"flat expert id {idx} is out of range for E={n} (ids are 0..{n * n - 1})")
            i, j = divmod(idx, n)
            return cls(i, j, op, value, group, layer, heads, allow_negative=allow_negative)

        if isinstance(e, Iterable) and not (hasattr(e, "dim") and e.dim() == 0):
            values = e.tolist() if hasattr(e, "tolist") else list(e)
            return [one(v) for v in values]
        return one(e)

    @classmethod
    def from_matrix(cls, matrix: Any, group: object = None, layer: object = None, heads: object = None,
                    *, allow_negative: bool = False) -> list[ExpertEdit]:
        """Edits from an [E, E] (all heads) or [H, E, E] (per head) matrix indexed [.., i, j].

        Boolean: prune where True. Numeric: a per-expert multiplier; 1 leaves the expert alone,
        0 prunes it, anything else scales it. With an [H, E, E] matrix each slice h becomes
        ``heads=[h]`` edits (``heads`` must then be None).
        """
        import torch

        tensor = torch.as_tensor(matrix).detach().cpu()
        if tensor.dim() not in (2, 3) or tensor.shape[-1] != tensor.shape[-2]:
            raise EditError(f"matrix must be [E, E] or [H, E, E], got shape {tuple(tensor.shape)}")
        if tensor.dim() == 3:
            if heads is not None:
                raise EditError("a per-head [H, E, E] matrix sets the heads itself; pass heads=None")
            out: list[ExpertEdit] = []
            for h in range(tensor.shape[0]):
                out.extend(cls.from_matrix(tensor[h], group, layer, [h], allow_negative=allow_negative))
            return out
        if tensor.dtype == torch.bool:
            return [cls(i, j, "prune", None, group, layer, heads) for i, j in tensor.nonzero().tolist()]
        if tensor.is_complex():
            raise EditError("matrix must be boolean or real")
        values = tensor.double()
        if not bool(torch.isfinite(values).all()):
            raise EditError("matrix has non-finite entries")
        out = []
        for i, j in (values != 1).nonzero().tolist():
            v = float(values[i, j])
            if v == 0:
                out.append(cls(i, j, "prune", None, group, layer, heads))
            else:
                out.append(cls(i, j, "scale", v, group, layer, heads, allow_negative=allow_negative))
        return out

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"i": self.i, "j": self.j, "op": self.op}
        if self.value is not None:
            out["value"] = self.value
        if self.group is not None:
            out["group"] = self.group
        if self.layer is not None:
            out["layer"] = self.layer
        if self.heads is not None:
            out["heads"] = list(self.heads)
        if self.allow_negative:
            out["allow_negative"] = True
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ExpertEdit:
        if not isinstance(data, dict):
            raise EditError(f"an edit must be a JSON object, got {type(data).__name__}")
        known = {"i", "j", "op", "value", "group", "layer", "heads", "allow_negative"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EditError(f"unknown edit field(s) {unknown}; expected some of {sorted(known)}")
        missing = [k for k in ("i", "j", "op") if k not in data]
        if missing:
            raise EditError(f"edit {data} is missing {missing}")
        fields = dict(data)
        allow = fields.pop("allow_negative", False)
        return cls(**fields, allow_negative=bool(allow))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ExpertEdit:
        return cls.from_dict(json.loads(text))


def _rebuild(data: dict[str, Any]) -> ExpertEdit:
    return ExpertEdit.from_dict(data)


# ---------------------------------------------------------------------------- collections
class EditSet:
    """An ordered list of ExpertEdits plus free-form JSON metadata (dataset, criterion, seed...)."""

    def __init__(self, edits: Any = (), metadata: dict[str, Any] | None = None) -> None:
        self.edits: list[ExpertEdit] = normalize_edits(edits)
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __iter__(self) -> Iterator[ExpertEdit]:
        return iter(self.edits)

    def __len__(self) -> int:
        return len(self.edits)

    def __getitem__(self, index: int) -> ExpertEdit:
        return self.edits[index]

    def __add__(self, other: Any) -> EditSet:
        meta = dict(self.metadata)
        if isinstance(other, EditSet):
            meta.update(other.metadata)
        return EditSet([*self.edits, *normalize_edits(other)], meta)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EditSet) and self.edits == other.edits and self.metadata == other.metadata

    def __repr__(self) -> str:
        return f"EditSet({len(self.edits)} edits, metadata={self.metadata!r})"

    def validate(self, cfg: Any) -> None:
        check_edits(self.edits, cfg)

    def to_dict(self) -> dict[str, Any]:
        return {"format": JSON_FORMAT, "version": JSON_VERSION, "metadata": self.metadata,
                "edits": [e.to_dict() for e in self.edits]}

    def to_json(self, path: str | Path | None = None, indent: int | None = None) -> str:
        """The JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> EditSet:
        """From JSON text or a file path: an EditSet object or a bare list of edits."""
        return edits_from_json(source)


def edits_to_json(edits: Any, path: str | Path | None = None, metadata: dict[str, Any] | None = None,
                  indent: int | None = None) -> str:
    """Serialise edits (anything normalize_edits accepts) as an EditSet JSON document."""
    base = edits if isinstance(edits, EditSet) else EditSet(edits)
    return EditSet(base.edits, {**base.metadata, **(metadata or {})}).to_json(path, indent)


def edits_from_json(source: str | Path) -> EditSet:
    """Read edits written by edits_to_json/EditSet.to_json (text or path); a bare list also works."""
    if isinstance(source, Path) or not str(source).lstrip().startswith(("[", "{")):
        text = Path(source).read_text()
    else:
        text = str(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise EditError(f"edits are not valid JSON: {err}") from err
    if isinstance(data, list):
        return EditSet([ExpertEdit.from_dict(d) for d in data])
    if not isinstance(data, dict) or "edits" not in data:
        raise EditError("expected a JSON list of edits or an object with an 'edits' list")
    if data.get("format", JSON_FORMAT) != JSON_FORMAT:
        raise EditError(f"unknown format {data.get('format')!r}; expected {JSON_FORMAT!r}")
    if data.get("version", JSON_VERSION) > JSON_VERSION:
        raise EditError(f"edit file version {data['version']} is newer than this library ({JSON_VERSION})")
    return EditSet([ExpertEdit.from_dict(d) for d in data["edits"]], data.get("metadata") or {})


def normalize_edits(edits: Any) -> list[ExpertEdit]:
    """A flat list of ExpertEdits from an ExpertEdit, an EditSet, a dict, or (nested) iterables."""
    if isinstance(edits, ExpertEdit):
        return [edits]
    if isinstance(edits, EditSet):
        return list(edits.edits)
    if isinstance(edits, dict):
        return [ExpertEdit.from_dict(edits)]
    if hasattr(edits, "shape") and hasattr(edits, "dtype"):
        raise EditError("got an array/tensor, not edits: build edits from an [E, E] mask or multiplier "
                        "matrix with ExpertEdit.from_matrix(M, group=...)")
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Iterable):
        raise EditError(f"expected ExpertEdit(s), an EditSet or a list of them, got {type(edits).__name__}; "
                        f"read JSON with edits_from_json")
    out: list[ExpertEdit] = []
    for item in edits:
        out.extend(normalize_edits(item))
    return out


def check_edits(edits: Any, cfg: Any) -> list[ExpertEdit]:
    """Check edits against a MonetConfig; returns them as a flat list.

    Raises EditError for i/j >= E, layer >= n_layers, group >= n_groups, head >= moe_heads, and
    for conflicts: two edits that reach the same expert in the same layer on a common head (an
    all-heads edit counts as touching every head), whatever their ops.
    """
    flat = normalize_edits(edits)
    n_exp, n_heads = cfg.moe_experts, cfg.moe_heads
    n_layers, n_groups = cfg.num_hidden_layers, cfg.num_routers
    seen: dict[tuple[int, int, int], list[ExpertEdit]] = {}
    for edit in flat:
        if edit.i >= n_exp or edit.j >= n_exp:
            raise EditError(f"{edit}: expert ({edit.i}, {edit.j}) is out of range; i and j must be < E={n_exp} "
                            f"(flat id {edit.i * n_exp + edit.j} vs E^2={n_exp * n_exp})")
        if edit.layer is not None and edit.layer >= n_layers:
            raise EditError(f"{edit}: layer {edit.layer} does not exist (the model has {n_layers} layers)")
        if isinstance(edit.group, int) and edit.group >= n_groups:
            raise EditError(f"{edit}: routing group {edit.group} does not exist (the model has {n_groups} "
                            f"groups of {cfg.moe_groups} layers)")
        if edit.heads is not None and edit.heads[-1] >= n_heads:
            raise EditError(f"{edit}: head {edit.heads[-1]} is out of range (moe_heads={n_heads})")
        for layer in edit.layers(cfg):
            key = (layer, edit.i, edit.j)
            others = seen.setdefault(key, [])
            for other in others:
                if edit.heads is None or other.heads is None or set(edit.heads) & set(other.heads):
                    raise EditError(f"conflicting edits on expert ({edit.i}, {edit.j}) in layer {layer}: "
                                    f"{other} and {edit} act on the same weight; combine them into one edit")
            others.append(edit)
    return flat
