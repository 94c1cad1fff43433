"""Quantization schemes as validated dataclasses in a name registry.

``QuantConfig`` fixes every bit width of the integer BERT (what ``calibrate`` produces and
``compile`` lowers). Widths live here, not in kernel constructors.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..op._common import check_bits
from ..op.packed_weights import WEIGHT_BITS

SOFTMAX_BITS = tuple(range(8, 17))  # i-softmax output widths: uint8 (8) or uint16 (9..16), scale 2^-bits
# integer GELU forms: I-BERT's i-GELU (op/int_gelu.py) or relu minus a fitted polynomial of degree N
# (op/int_gelu_poly.py, "polyN"; issue 15, docs/fidelity.md "A closer i-GELU")
GELU_FORMS = ("ibert", "poly4", "poly5", "poly6", "poly7", "poly8")
# What a scheme dict without a "gelu" key means: I-BERT's i-GELU. Every dict written before the field
# existed (old q/ artifacts) has none, and to_dict leaves "ibert" out, so an i-GELU scheme's dict and
# model hash stay what they always were. This is not the default form (poly4 since issue 15's sixth
# pass): a default scheme's dict says "gelu": "poly4", so an old artifact never reads as poly4.
GELU_WHEN_ABSENT = "ibert"


def _name_gelu_degree(name: str) -> int:
    """N of the ``gelu<N>`` tag after the ``+`` of a scheme name (``ibert-w8a8+sm16-gelu7-qat``: 7), 0 without one."""
    tags = name.split("+", 1)[1].split("-") if "+" in name else []
    return next((int(t[4:]) for t in tags if re.fullmatch(r"gelu[0-9]+", t)), 0)


def _is_width(b, allowed) -> bool:
    """``b`` is an integer (not a bool, float or string) among ``allowed``."""
    return isinstance(b, (int, np.integer)) and not isinstance(b, bool) and int(b) in allowed


@dataclass(frozen=True)
class QuantConfig:
    # the scheme's name, part of the artifact identity: "+gelu4" says the GELU (a name without a gelu
    # tag is i-GELU's, as every name before poly4 became the default); with_* keep it in step
    name: str = "ibert-w8a8+gelu4"
    weight_bits: int = 8  # symmetric weights of the encoder linears: 8, or 4/3/2 (packed, Q-BERT)
    act_bits: int = 8  # activations between layers (inputs of every matmul)
    residual_bits: int = 24  # residual sums feeding LayerNorm (I-BERT uses 22)
    gelu_in_bits: int = 16  # intermediate-dense output requantized to this before i-GELU
    tanh_in_bits: int = 16  # pooler output before i-tanh
    logits_bits: int = 32  # classifier logits (one per-tensor scale)
    calibration: str = "minmax"  # minmax | percentile
    percentile: float = 99.99  # for calibration == "percentile"
    residual_headroom: float = 2.0  # residual range = headroom * calibrated max
    gelu_headroom: float = 1.25
    # Per-channel int8 scales for the LayerNorm and GELU outputs (BERT's outlier channels):
    # folded into the consuming linears' weights and into the residual/pooling requantization.
    per_channel_acts: bool = True
    # Ranges of those per-channel scales (issue 15: a channel's max over the calibration text is
    # far exceeded on other text). Channel range = max(headroom * channel max |x|, floor * the
    # point's max |x|); the floor lifts the channels that are (almost) silent on calibration text.
    ln_channel_headroom: float = 1.0
    gelu_channel_headroom: float = 1.0
    ln_channel_floor: float = 1e-4
    gelu_channel_floor: float = 0.25  # issue 15: 1/4 of the point max (docs/fidelity.md, "Levers")
    # Weight scales of the encoder linears (Q-BERT's group-wise quantization): 0 = one scale per
    # output row (per channel), 1 = one per matrix (per tensor, "DirectQ"), G > 1 = G groups of
    # consecutive output rows (G must divide every matrix's rows). Each row's requantization
    # constant is dyadic either way; groups only decide which rows share a weight scale.
    weight_groups: int = 0
    # Per encoder layer weight bits (from `ibert-tvm sensitivity`), overriding weight_bits;
    # empty: every layer has weight_bits. Embeddings, pooler and classifier head stay 8-bit.
    layer_weight_bits: tuple = ()
    # i-softmax output bits (issue 15: the fidelity tail of long sequences; docs/fidelity.md): 8 =
    # uint8 P (the VNNI u8 x s8 P V), 9..16 = uint16 P (P V proven with the softmax row sum bound,
    # op/int_softmax.py; default schedules for P V). layer_softmax_bits: per encoder layer,
    # overriding softmax_bits; empty: every layer has softmax_bits.
    softmax_bits: int = 8
    layer_softmax_bits: tuple = ()
    # integer GELU (GELU_FORMS): "polyN" = relu - a degree-N polynomial bump (L-inf 2.1e-3 at N = 4,
    # 1.3e-4 at N = 7), "ibert" = I-BERT's erf quadratic (L-inf 0.018, the default before issue 15's
    # sixth pass, docs/fidelity.md). Every form but "ibert" is in to_dict and in the name (GELU_WHEN_ABSENT)
    gelu: str = "poly4"

    def __post_init__(self):
        if isinstance(self.weight_bits, bool) or self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}, got {self.weight_bits!r}")
        object.__setattr__(self, "layer_weight_bits", tuple(self.layer_weight_bits))
        for i, b in enumerate(self.layer_weight_bits):
            if isinstance(b, bool) or b not in WEIGHT_BITS:
                raise ValueError(f"layer_weight_bits[{i}] must be one of {WEIGHT_BITS}, got {b!r}")
        if not _is_width(self.softmax_bits, SOFTMAX_BITS):
            raise ValueError(f"softmax_bits must be an integer in [8, 16] (8: uint8, 9..16: uint16 softmax "
                             f"outputs), got {self.softmax_bits!r}")
        object.__setattr__(self, "layer_softmax_bits", tuple(self.layer_softmax_bits))
        for i, b in enumerate(self.layer_softmax_bits):
            if not _is_width(b, SOFTMAX_BITS):
                raise ValueError(f"layer_softmax_bits[{i}] must be an integer in [8, 16], got {b!r}")
        if not isinstance(self.gelu, str) or self.gelu not in GELU_FORMS:
            raise ValueError(f"gelu must be one of {', '.join(GELU_FORMS)} (ibert: I-BERT's i-GELU; polyN: relu minus "
                             f"a degree-N polynomial), got {self.gelu!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if _name_gelu_degree(self.name) != self.gelu_degree():
            # the name is the artifact identity (tuning logs, caches): it may not claim another GELU
            want = "no gelu tag" if self.gelu == "ibert" else f"the tag +gelu{self.gelu_degree()}"
            raise ValueError(f"name {self.name!r} does not match gelu {self.gelu!r}: a scheme with {self.gelu} has "
                             f"{want} in its name (with_gelu() renames)")
        if isinstance(self.weight_groups, bool) or not isinstance(self.weight_groups, int) or self.weight_groups < 0:
            raise ValueError(f"weight_groups must be an integer >= 0 (0: per output row), got {self.weight_groups!r}")
        if self.act_bits != 8:
            raise ValueError(f"act_bits must be 8 (int8 x int8 matmuls), got {self.act_bits}")
        check_bits("residual_bits", self.residual_bits, 16, 25)
        check_bits("gelu_in_bits", self.gelu_in_bits, 8, 16)
        check_bits("tanh_in_bits", self.tanh_in_bits, 8, 16)
        check_bits("logits_bits", self.logits_bits, 16, 32)
        if self.calibration not in ("minmax", "percentile"):
            raise ValueError(f"calibration must be 'minmax' or 'percentile', got {self.calibration!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        for f in ("ln_channel_floor", "gelu_channel_floor"):
            if not 0.0 < float(getattr(self, f)) <= 1.0:
                raise ValueError(f"{f} must be in (0, 1], got {getattr(self, f)}")
        for f in ("residual_headroom", "gelu_headroom", "ln_channel_headroom", "gelu_channel_headroom"):
            if not float(getattr(self, f)) >= 1.0:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")

    def bits_for_layer(self, i: int, num_layers: int | None = None) -> int:
        """Weight bits of encoder layer ``i``."""
        return self._for_layer("layer_weight_bits", self.weight_bits, i, num_layers)

    def softmax_bits_for_layer(self, i: int, num_layers: int | None = None) -> int:
        """i-softmax output bits of encoder layer ``i``."""
        return self._for_layer("layer_softmax_bits", self.softmax_bits, i, num_layers)

    def _for_layer(self, field: str, default: int, i: int, num_layers: int | None) -> int:
        """Layer ``i``'s entry of the per-layer override ``field``, or ``default`` when it is empty;
        an override whose length is not ``num_layers`` (when given) is refused."""
        per_layer = getattr(self, field)
        if not per_layer:
            return default
        if num_layers is not None and len(per_layer) != num_layers:
            raise ValueError(f"{field} has {len(per_layer)} entries, the model has {num_layers} encoder layers")
        return per_layer[i]

    def _weights_tag(self) -> str:
        return (f"w{'mix' + ''.join(map(str, self.layer_weight_bits)) if self.layer_weight_bits else self.weight_bits}"
                f"{'' if self.weight_groups == 0 else 'pt' if self.weight_groups == 1 else 'g%d' % self.weight_groups}")

    def _softmax_tag(self) -> str:
        """'' for the default 8-bit softmax, else e.g. ``-sm16`` or ``-sm8_8_8_8_8_16``."""
        if self.layer_softmax_bits:
            return "-sm" + "_".join(map(str, self.layer_softmax_bits))
        return "" if self.softmax_bits == 8 else f"-sm{self.softmax_bits}"

    def gelu_degree(self) -> int:
        """0 for I-BERT's i-GELU, else the degree N of ``polyN``."""
        return 0 if self.gelu == "ibert" else int(self.gelu[4:])

    def _gelu_tag(self) -> str:
        """'' for I-BERT's i-GELU, else e.g. ``-gelu7`` (``-gelu4`` for the default)."""
        return "" if self.gelu == "ibert" else f"-gelu{self.gelu_degree()}"

    def _renamed(self, c: "QuantConfig", weights_tag: bool) -> "QuantConfig":
        if c == self:
            return self
        base = self.name.split("+")[0]
        tag = (c._weights_tag() if weights_tag else "") + c._softmax_tag() + c._gelu_tag()
        return QuantConfig.from_dict({**c.to_dict(), "name": base + ("+" + tag.lstrip("-") if tag else "")})

    def with_weights(self, bits: int | None = None, groups: int | None = None, layer_bits=None) -> "QuantConfig":
        """This scheme with other weight bits / groups / per-layer bits, under a name that says so
        (the name is part of the model identity that tuning logs and caches are keyed by)."""
        d = self.to_dict()
        if bits is not None:
            d["weight_bits"] = bits
        if groups is not None:
            d["weight_groups"] = groups
        if layer_bits is not None:
            d["layer_weight_bits"] = tuple(layer_bits)
        return self._renamed(QuantConfig.from_dict(d), weights_tag=True)

    def with_softmax(self, bits: int | None = None, layer_bits=None) -> "QuantConfig":
        """This scheme with other i-softmax output bits (all layers, or per layer), under a name that
        says so (``+sm16``, ``+sm8_8_8_8_8_16``; after the weight tag if the weights are not default)."""
        d = self.to_dict()
        if bits is not None:
            d["softmax_bits"] = bits
        if layer_bits is not None:
            d["layer_softmax_bits"] = tuple(layer_bits)
        c = QuantConfig.from_dict(d)
        return self._renamed(c, weights_tag=self._has_weights_tag())

    def _has_weights_tag(self) -> bool:
        return "+" in self.name and self.name.split("+", 1)[1].startswith("w")

    def with_calibration(self, calibration: str | None = None) -> "QuantConfig":
        """This scheme with another activation range statistic (``minmax``, ``percentile``; None: unchanged)."""
        if calibration is None:
            return self
        return QuantConfig.from_dict({**self.to_dict(), "calibration": calibration})

    def with_gelu(self, gelu: str | None = None) -> "QuantConfig":
        """This scheme with another integer GELU (``GELU_FORMS``), under a name that says so
        (``+gelu7``, ``+sm16-gelu7``, ``+w4g128-gelu7``; i-GELU: no gelu tag, ``ibert-w8a8``)."""
        if gelu is None or gelu == self.gelu:
            return self
        # under a provisional name that already says the new GELU (the name check), then renamed
        tag = f"+gelu{gelu[4:]}" if isinstance(gelu, str) and gelu.startswith("poly") else ""
        c = QuantConfig.from_dict({**self.to_dict(), "gelu": gelu, "name": self.name.split("+")[0] + tag})
        return self._renamed(c, weights_tag=self._has_weights_tag())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_weight_bits"] = list(self.layer_weight_bits)
        d["layer_softmax_bits"] = list(self.layer_softmax_bits)
        # the softmax fields only when they are not the default, gelu only when it is not i-GELU: the
        # dict of a scheme these fields do not change (artifact meta, export's model hash) stays what it
        # was before they existed; from_dict reads a missing key back as these values
        for k, absent in (("softmax_bits", 8), ("layer_softmax_bits", []), ("gelu", GELU_WHEN_ABSENT)):
            if d[k] == absent:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown quantization config keys: {sorted(unknown)}")
        # no "gelu" key: i-GELU (an artifact written before the field, or an i-GELU scheme), never the
        # dataclass default; the softmax fields' defaults are what their missing keys always meant
        return cls(**{"gelu": GELU_WHEN_ABSENT, **d})


# every registered scheme has the default GELU (poly4, "+gelu4" in its name); --gelu ibert gives i-GELU
QUANTIZATION: dict[str, QuantConfig] = {
    "ibert-w8a8": QuantConfig(),
    "ibert-w8a8-pct": QuantConfig(name="ibert-w8a8-pct+gelu4", calibration="percentile"),
    "ibert-w8a8-pertensor": QuantConfig(name="ibert-w8a8-pertensor+gelu4", per_channel_acts=False),
}
