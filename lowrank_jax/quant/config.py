"""`QuantizeConfig`: which `nnx.Linear` layers get a quantized frozen kernel, in which format; validated on creation."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from lowrank_jax.config_fields import from_fields

FORMATS = ("int8", "nf4")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Quantization settings; a format name ('int8' / 'nf4') or a dict of these fields is accepted wherever a config is.

    Attributes:
        format: 'int8' (absmax per output channel) or 'nf4' (QLoRA's 4-bit NormalFloat, block-wise absmax).
        block_size: nf4: inputs per absmax block (QLoRA: 64); must divide every target's `in` and be even.
        double_quant: nf4: store the block scales as int8 codes around their mean, one float32 scale per
            `scale_block_size` outputs (QLoRA's double quantization).
        scale_block_size: nf4 with double_quant: outputs per scale block (QLoRA: 256); a layer whose `out` it does
            not divide uses blocks of gcd(out, scale_block_size) outputs.
        targets: regex that must fullmatch the module path of each quantized `nnx.Linear` — inside an adapted layer
            the frozen base's path ends in '.base'. The default leaves `lm_head` (and embeddings) unquantized, as
            bitsandbytes does.

    Example:
        >>> QuantizeConfig("nf4").targets_match("layers.self_attn.q_proj.base")
        True
    """

    format: str = "nf4"
    block_size: int = 64
    double_quant: bool = True
    scale_block_size: int = 256
    targets: str = r".*(q|k|v|o|gate|up|down)_proj(\.base)?"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"quantize format must be one of {FORMATS}, got {self.format!r} (model.quantize='none' "
                             "leaves the base unquantized).")
        for name in ("block_size", "scale_block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
                raise ValueError(f"{name} must be an even integer ≥ 2, got {value!r}.")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double_quant must be True or False, got {self.double_quant!r}.")
        try:
            re.compile(self.targets)
        except (re.error, TypeError) as err:
            raise ValueError(f"targets {self.targets!r} is not a valid regex: {err}.") from None

    def targets_match(self, path: str) -> bool:
        """Whether module path `path` (e.g. 'layers.mlp.up_proj') fullmatches `targets`."""
        return re.fullmatch(self.targets, path) is not None

    def check_kernel(self, path: str, n_in: int) -> str | None:
        """Why a kernel (…, n_in, out) at `path` cannot be stored in this format, or None if it can (any out fits)."""
        if self.format != "nf4":
            return None
        if n_in % self.block_size:
            return f"{path}: in = {n_in} is not a multiple of block_size {self.block_size}"
        return None


def as_quantize_config(config: QuantizeConfig | str | Mapping[str, Any]) -> QuantizeConfig:
    """`config` itself, a `QuantizeConfig(format=config)` for a format name, or one built from a dict of fields."""
    if isinstance(config, QuantizeConfig):
        return config
    if isinstance(config, str):
        return QuantizeConfig(format=config)
    return from_fields(QuantizeConfig, config)
