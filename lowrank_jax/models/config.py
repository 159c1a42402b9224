"""The configuration of a Llama-family decoder (Llama, Mistral, Qwen2/3, Phi-3, Gemma 3 text): Hugging Face
architecture fields plus runtime choices.

`LlamaConfig.from_hf` reads a transformers config.json dict (old or new rope layout) and `to_hf_dict` writes one back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
# Families whose attention normalises q and k per head (RMSNorm over head_dim) before the rotary embedding.
QK_NORM_MODEL_TYPES = ("qwen3", "gemma3_text")
HIDDEN_ACTS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION_IMPLS = ("xla", "cudnn")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "attention_impl", "fuse_projections")
_REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# transformers' class defaults for keys a config.json may omit.
_HF_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768, "phi3": 4096,
                     "gemma3_text": 131072}
_GEMMA3_SLIDING_WINDOW_PATTERN = 6  # transformers' default: every 6th layer is global


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture (Hugging Face names) and runtime settings of a Llama / Mistral / Qwen2 / Qwen3 / Phi-3 /
    Gemma 3 (text) decoder.

    Defaults give a Llama-2-7B-shaped model. `num_key_value_heads=None` means multi-head attention and
    `head_dim=None` means `hidden_size // num_attention_heads`; both are resolved on construction.
    `rope_scaling` is None, a llama3 dict with keys `rope_type='llama3'`, `factor`, `low_freq_factor`,
    `high_freq_factor`, `original_max_position_embeddings`, or a linear one `{'rope_type': 'linear', 'factor'}`
    (Gemma 3's global layers). `attention_bias` means q/k/v biases (Qwen2 only).

    Per-family settings: `model_type` also fixes q/k RMSNorm (qwen3, gemma3_text) and Gemma's layout (scaled
    embeddings, (1 + w) RMSNorms, norms before and after attention and MLP). `layer_types` lists each layer's
    'full_attention' or 'sliding_attention' (None: all full; with `sliding_window` set and `layer_types` None,
    all sliding, as Mistral and Phi-3 do); a sliding layer's query at slot i sees keys at slots > i - sliding_window.
    `rope_local_theta` is the rope base of sliding layers (Gemma 3; None: `rope_theta`). `query_pre_attn_scalar`
    scales scores by its -1/2 power (None: head_dim). `final_logit_softcapping` caps logits at c·tanh(x / c)
    (None: off). `hidden_act` is the gate activation of the MLP.

    Runtime fields: `dtype` is the compute dtype and `param_dtype` the stored one ('float32' | 'bfloat16');
    `scan_layers` scans the stacked decoder layers (False: a Python loop over the same stacked state);
    `remat` is one of REMAT_POLICIES; `attention_impl` is 'xla' (any device) or 'cudnn' (GPU, bfloat16); models with
    sliding-window layers run XLA's attention there (the window is a traced per-layer value, cuDNN's a static one).
    `fuse_projections` computes q/k/v and gate/up (with their adapters' x A) each from one matmul
    (`lowrank_jax.adapters.fused_linears`); the same parameters and outputs up to round-off.

    Example:
        >>> cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2)
        >>> cfg.head_dim, cfg.num_query_groups
        (16, 2)
        >>> LlamaConfig.from_hf(cfg.to_hf_dict()) == cfg
        True
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    model_type: str = "llama"
    hidden_act: str = "silu"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    final_logit_softcapping: float | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"
    attention_impl: str = "xla"
    fuse_projections: bool = False

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            heads = _positive_int("num_attention_heads", self.num_attention_heads)
            object.__setattr__(self, "head_dim", _positive_int("hidden_size", self.hidden_size) // heads)
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(int(t) for t in self.eos_token_id))
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", _rope_scaling(self.rope_scaling))
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        elif self.sliding_window is not None:
            object.__setattr__(self, "layer_types", ("sliding_attention",) * self.num_hidden_layers)
        if self.layer_types is not None and "sliding_attention" not in self.layer_types:
            # One canonical form for "every layer full", so equal architectures compare equal.
            object.__setattr__(self, "layer_types", None)
            object.__setattr__(self, "sliding_window", None)
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            _positive_int(name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads}).")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings.")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}.")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}.")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(_unsupported_model_type(self.model_type))
        if self.attention_bias != (self.model_type == "qwen2"):
            raise ValueError(f"attention_bias={self.attention_bias} with model_type={self.model_type!r}: q/k/v "
                             "biases exist exactly for 'qwen2'; set attention_bias=(model_type == 'qwen2').")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; supported: {HIDDEN_ACTS}.")
        self._validate_attention_pattern()
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; use one of {DTYPES}.")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r} is not supported; use one of {REMAT_POLICIES}.")
        if not isinstance(self.fuse_projections, bool):
            raise ValueError(f"fuse_projections must be True or False, got {self.fuse_projections!r}.")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r} is not supported; use one of {ATTENTION_IMPLS}.")
        if self.attention_impl == "cudnn" and self.dtype != "bfloat16":
            raise ValueError("attention_impl='cudnn' needs dtype='bfloat16' (cuDNN flash attention has no float32 "
                             "kernel); use attention_impl='xla' for float32.")

    def _validate_attention_pattern(self):
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - set(LAYER_TYPES):
                raise ValueError(f"layer_types={list(self.layer_types)} must name one of {LAYER_TYPES} for each of "
                                 f"the num_hidden_layers={self.num_hidden_layers} layers.")
            if self.has_sliding_layers:
                _positive_int("sliding_window", self.sliding_window)
        gemma = self.model_type == "gemma3_text"
        if (self.hidden_act == "gelu_pytorch_tanh") != gemma:
            raise ValueError(f"hidden_act={self.hidden_act!r} with model_type={self.model_type!r}: Gemma 3 uses "
                             "'gelu_pytorch_tanh', the other families 'silu'.")
        if not gemma:
            for name in ("rope_local_theta", "query_pre_attn_scalar", "final_logit_softcapping"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}={getattr(self, name)} is a Gemma 3 setting; set it to None for "
                                     f"model_type={self.model_type!r}.")
        for name in ("rope_local_theta", "query_pre_attn_scalar", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}.")

    def __hash__(self):
        # The config sits in NNX graph definitions, which jit caches by hash; rope_scaling is a dict.
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))

    @property
    def num_query_groups(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def has_sliding_layers(self) -> bool:
        """True when some layer uses sliding-window attention."""
        return self.layer_types is not None and "sliding_attention" in self.layer_types

    @property
    def qk_norm(self) -> bool:
        """True for families that RMS-normalise each query and key head (Qwen3, Gemma 3)."""
        return self.model_type in QK_NORM_MODEL_TYPES

    @property
    def gemma_layout(self) -> bool:
        """Gemma 3: embeddings scaled by sqrt(hidden_size), (1 + w) RMSNorms, norms around attention and MLP."""
        return self.model_type == "gemma3_text"

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """`eos_token_id` as a tuple (empty when None)."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (int(self.eos_token_id),)

    def replace(self, **changes: Any) -> LlamaConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], **runtime: Any) -> LlamaConfig:
        """Builds a config from a transformers config.json dict.

        Args:
            hf_config: the dict (e.g. `json.load(open("config.json"))` or `transformers_config.to_dict()`).
                Rope settings may be in `rope_parameters` (transformers 5) or `rope_theta` / `rope_scaling`.
            **runtime: runtime fields to set (RUNTIME_FIELDS: dtype, param_dtype, scan_layers, remat, ...).

        Returns:
            The validated config.

        Raises:
            ValueError: for a variant this implementation does not compute exactly (another model_type,
                a rope type other than default/llama3/linear, biases other than Qwen2's
                q/k/v, an activation other than silu, ...), naming what is supported.
        """
        unknown = set(runtime) - set(RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"from_hf got non-runtime fields {sorted(unknown)}; only {RUNTIME_FIELDS} may be set.")
        model_type = hf_config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(_unsupported_model_type(model_type))
        missing = [k for k in _REQUIRED_HF_KEYS if hf_config.get(k) is None]
        if missing:
            raise ValueError(f"The config.json dict lacks required keys {missing}.")
        _check_supported_variant(hf_config, model_type)
        gemma = model_type == "gemma3_text"
        if gemma:
            rope_theta, rope_scaling, rope_local_theta = _gemma3_rope_settings(hf_config)
        else:
            (rope_theta, rope_scaling), rope_local_theta = _rope_settings(hf_config), None
        sliding_window, layer_types = _attention_pattern(hf_config, model_type)
        return cls(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            intermediate_size=hf_config["intermediate_size"],
            num_hidden_layers=hf_config["num_hidden_layers"],
            num_attention_heads=hf_config["num_attention_heads"],
            num_key_value_heads=hf_config.get("num_key_value_heads"),
            head_dim=hf_config.get("head_dim"),
            rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=hf_config.get("max_position_embeddings", _HF_MAX_POSITIONS[model_type]),
            tie_word_embeddings=hf_config.get("tie_word_embeddings", gemma),
            attention_bias=model_type == "qwen2",
            model_type=model_type,
            hidden_act="gelu_pytorch_tanh" if gemma else "silu",
            sliding_window=sliding_window,
            layer_types=layer_types,
            rope_local_theta=rope_local_theta,
            query_pre_attn_scalar=hf_config.get("query_pre_attn_scalar", 256) if gemma else None,
            final_logit_softcapping=hf_config.get("final_logit_softcapping") if gemma else None,
            bos_token_id=hf_config.get("bos_token_id"),
            eos_token_id=hf_config.get("eos_token_id"),
            pad_token_id=hf_config.get("pad_token_id"),
            initializer_range=hf_config.get("initializer_range", 0.02),
            **runtime,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers config.json dict of this architecture (loads with AutoConfig in transformers 4 and 5).

        Rope settings are written both as `rope_parameters` and as the older `rope_theta` / `rope_scaling`.
        `dtype` records `param_dtype`.
        """
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters = {**self.rope_scaling, "rope_theta": self.rope_theta}
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        hf = {
            "model_type": self.model_type,
            "architectures": [HF_ARCHITECTURES[self.model_type]],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope_parameters,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
        }
        layer_types = list(self.layer_types or ("full_attention",) * self.num_hidden_layers)
        if self.model_type == "llama":
            hf.update(attention_bias=False, mlp_bias=False)
        elif self.model_type in ("mistral", "phi3"):
            hf.update(sliding_window=self.sliding_window)
            if self.model_type == "phi3":
                hf.update(resid_pdrop=0.0, embd_pdrop=0.0,
                          original_max_position_embeddings=self.max_position_embeddings)
        elif self.model_type in ("qwen2", "qwen3"):
            first_sliding = layer_types.index("sliding_attention") if self.has_sliding_layers else len(layer_types)
            hf.update(use_sliding_window=self.has_sliding_layers, sliding_window=self.sliding_window,
                      max_window_layers=first_sliding, layer_types=layer_types)
            if self.model_type == "qwen3":
                hf.update(attention_bias=False)
        else:
            local_theta = self.rope_local_theta or self.rope_theta
            del hf["hidden_act"], hf["rope_scaling"]
            hf.update(hidden_activation=self.hidden_act, attention_bias=False, use_bidirectional_attention=False,
                      sliding_window=self.sliding_window, layer_types=layer_types,
                      query_pre_attn_scalar=self.query_pre_attn_scalar,
                      attn_logit_softcapping=None,
                      final_logit_softcapping=self.final_logit_softcapping, rope_local_base_freq=local_theta,
                      rope_parameters={"full_attention": rope_parameters,
                                       "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}})
        return hf


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _unsupported_model_type(model_type: Any) -> str:
    return (f"model_type={model_type!r} is not supported; supported model types: {SUPPORTED_MODEL_TYPES} "
            "(Llama 2/3/3.1/3.2, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3 text; no mixture-of-experts models).")


def _check_supported_variant(hf: Mapping[str, Any], model_type: str) -> None:
    """Raises for config.json settings whose computation differs from this implementation."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; only 'silu' (SwiGLU MLP).")
    if hf.get("mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported; supported: MLP projections without bias.")
    if hf.get("attention_dropout", 0.0):
        raise ValueError(f"attention_dropout={hf['attention_dropout']} is not supported; set it to 0.0.")
    if model_type == "llama" and hf.get("attention_bias", False):
        raise ValueError("attention_bias=True for model_type 'llama' (biases on q/k/v and o_proj) is not supported; "
                         "supported: no biases (llama, mistral) or Qwen2's q/k/v biases (qwen2).")
    if model_type in ("qwen3", "phi3", "gemma3_text") and hf.get("attention_bias", False):
        raise ValueError(f"attention_bias=True for model_type {model_type!r} is not supported; supported: no "
                         "attention biases (only Qwen2 has q/k/v biases).")
    for name in ("resid_pdrop", "embd_pdrop"):
        if hf.get(name, 0.0):
            raise ValueError(f"{name}={hf[name]} is not supported; set it to 0.0 (no dropout in the base model).")
    if model_type == "gemma3_text":
        if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_activation={hf['hidden_activation']!r} is not supported; only "
                             "'gelu_pytorch_tanh' (Gemma 3's GeGLU).")
        if hf.get("attn_logit_softcapping") is not None:
            # transformers' Gemma3Attention never passes it to the attention function (Gemma 3 replaced score
            # capping by q/k norms), so a value here would make this model differ from the reference.
            raise ValueError(f"attn_logit_softcapping={hf['attn_logit_softcapping']} is not supported for Gemma 3 "
                             "(transformers ignores it); set it to null.")
        if hf.get("use_bidirectional_attention", False):
            raise ValueError("use_bidirectional_attention=True is not supported; supported: causal attention.")


def _attention_pattern(hf: Mapping[str, Any], model_type: str) -> tuple[int | None, list[str] | None]:
    """(sliding_window, layer_types) of a config.json dict, as transformers derives them for each family."""
    layers = hf["num_hidden_layers"]
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if model_type in ("mistral", "phi3"):  # one window for every layer, no per-layer types
        if layer_types is not None:
            raise ValueError(f"layer_types for model_type {model_type!r} is not supported; transformers' "
                             f"{HF_ARCHITECTURES[model_type]} applies sliding_window to every layer.")
        return window, None
    if model_type in ("qwen2", "qwen3"):
        window = window if hf.get("use_sliding_window", False) else None
        if layer_types is None and window is not None:
            first_sliding = hf.get("max_window_layers", 28)
            layer_types = ["sliding_attention" if i >= first_sliding else "full_attention" for i in range(layers)]
        if window is None and "sliding_attention" in (layer_types or ()):
            raise ValueError(f"layer_types {sorted(set(layer_types))} name sliding layers but use_sliding_window is "
                             "false; set use_sliding_window true (with sliding_window) or use 'full_attention'.")
        return window, layer_types
    if model_type == "gemma3_text":
        if layer_types is None:
            pattern = hf.get("sliding_window_pattern", _GEMMA3_SLIDING_WINDOW_PATTERN)
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
        return window, layer_types
    return None, None


def _rope_settings(hf: Mapping[str, Any]) -> tuple[float, dict | None]:
    """(rope_theta, llama3 / linear rope_scaling or None) from either rope layout of a config.json dict."""
    params = hf.get("rope_parameters")
    if params is not None:
        if "rope_theta" not in params:
            raise ValueError(f"rope_parameters {params} has no rope_theta (per-layer-type rope is not supported).")
        theta, scaling = params["rope_theta"], dict(params)
    else:
        theta, scaling = hf.get("rope_theta", 10000.0), dict(hf.get("rope_scaling") or {})
    partial = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor={partial} is not supported; only full rotary embeddings (1.0).")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    return float(theta), _rope_scaling(scaling)


def _gemma3_rope_settings(hf: Mapping[str, Any]) -> tuple[float, dict | None, float]:
    """(global rope_theta, its rope_scaling, local rope theta) of a Gemma 3 config.json dict (either layout)."""
    params = hf.get("rope_parameters")
    if params is not None and "full_attention" in params:
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise ValueError(f"sliding_attention rope type {local['rope_type']!r} is not supported; supported: "
                             "'default'.")
        theta, scaling = _rope_settings({"rope_parameters": params["full_attention"]})
        return theta, scaling, float(local.get("rope_theta", 10000.0))
    theta, scaling = _rope_settings({**hf, "rope_theta": hf.get("rope_theta", 1_000_000.0)})
    return theta, scaling, float(hf.get("rope_local_base_freq", 10000.0))


def _rope_scaling(scaling: Mapping[str, Any]) -> dict:
    """The canonical llama3 or linear rope_scaling dict, or a ValueError naming the supported rope types."""
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "linear":
        if not scaling.get("factor", 0) > 0:
            raise ValueError(f"linear rope scaling needs a factor > 0, got {scaling.get('factor')!r}.")
        return {"rope_type": "linear", "factor": scaling["factor"]}
    if rope_type != "llama3":
        raise ValueError(f"rope type {rope_type!r} is not supported; supported: 'default' (rope_scaling null), "
                         "'llama3' and 'linear'.")
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"llama3 rope scaling lacks {missing}; it needs {LLAMA3_ROPE_KEYS}.")
    if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
                         f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}.")
    return {"rope_type": "llama3", **{k: scaling[k] for k in LLAMA3_ROPE_KEYS}}
