"""Quantization schemes as validated dataclasses in a name registry.

``QuantConfig`` fixes every bit width of the integer BERT (what ``calibrate`` produces and
``compile`` lowers). Widths live here, not in kernel constructors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..op._common import check_bits


@dataclass(frozen=True)
class QuantConfig:
    name: str = "ibert-w8a8"
    weight_bits: int = 8  # per-output-channel symmetric weights
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

    def __post_init__(self):
        if self.weight_bits != 8:
            raise ValueError(f"weight_bits must be 8 for this scheme, got {self.weight_bits}")
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
        for f in ("residual_headroom", "gelu_headroom"):
            if not float(getattr(self, f)) >= 1.0:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown quantization config keys: {sorted(unknown)}")
        return cls(**d)


QUANTIZATION: dict[str, QuantConfig] = {
    "ibert-w8a8": QuantConfig(),
    "ibert-w8a8-pct": QuantConfig(name="ibert-w8a8-pct", calibration="percentile"),
    "ibert-w8a8-pertensor": QuantConfig(name="ibert-w8a8-pertensor", per_channel_acts=False),
}
