"""`export_peft`: writes the adapters of an adapted Llama as a PEFT LoRA adapter for the ORIGINAL base weights.

Structured adapters fold M into B; residual inits export ΔW = s(B M A − B0 M0 A0) as rank 2r ([B | −B0], [A; A0]);
DoRA layers add their magnitudes as PEFT's `lora_magnitude_vector` (`use_dora=True`).
"""

from __future__ import annotations

import collections
import json
import os
import re

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from lowrank_jax.adapters.dora_layer import DoraLinear
from lowrank_jax.adapters.layer import AdaptedLinear
from lowrank_jax.adapters.module_paths import dotted, iter_module_paths
from lowrank_jax.models.param_map import LLAMA_TENSORS


def export_peft(model: nnx.Module, directory: str | os.PathLike, base: str) -> None:
    """Writes `adapter_config.json` and `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads.

    Load them onto the original (un-residualised) base model:
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), directory)`. Every layer slice becomes a
    PEFT `lora_A.weight` (r', in) and `lora_B.weight` (out, r') with PEFT's ΔW = (lora_alpha / r') · B A equal to
    ours: r' = r (lora, slora, nlora, inttune-on-nlora, dora; M folded into B) or 2r (residual inits: pissa, milora,
    olora, nystrom, inttune-on-nystrom). lora_alpha is s·r' (PEFT's "alpha doubled" for rank-2r conversions),
    `use_rslora` is false and modules whose r' or s differ from the most common get `rank_pattern` /
    `alpha_pattern` entries. Factors are written in float32. DoRA layers (`DoraLinear`) also write their magnitude
    m (out,) per layer as `lora_magnitude_vector` and set `use_dora`; PEFT's DoRA computes
    m ⊙ (W + ΔW) / ‖W + ΔW‖ as ours does.

    Args:
        model: a `lowrank_jax.models.Llama` after `adapt` (and training); only its adapted layers are read.
        directory: output folder (created if missing).
        base: path or hub id of the original HF model, recorded as `base_model_name_or_path`.

    Raises:
        ValueError: the model has no adapted layer, an adapted layer whose path has no HF name, or DoRA layers
            beside plain ones (PEFT's `use_dora` holds for the whole adapter).
    """
    if not isinstance(base, str) or not base:
        raise ValueError(f"base must be the path or hub id of the original HF model, got {base!r}.")
    layers = [(dotted(path), module) for path, module in iter_module_paths(model) if isinstance(module, AdaptedLinear)]
    if not layers:
        raise ValueError("the model has no adapted layers; call lowrank_jax.adapt(model, config) first.")
    dora = [path for path, layer in layers if isinstance(layer, DoraLinear)]
    if dora and len(dora) != len(layers):
        raise ValueError(f"DoRA layers {dora} sit beside plain adapted layers; PEFT's use_dora holds for every "
                         "module of an adapter. Export a model adapted with one method.")
    tensors, ranks, alphas, dropout = {}, {}, {}, 0.0
    for path, layer in layers:
        stack_shape = layer.lora_scale.shape
        if len(stack_shape) > 1:
            raise ValueError(f"{path}: stack shape {stack_shape}; export_peft supports one layer axis at most.")
        names = hf_module_names(path, stack_shape[0] if stack_shape else None)
        lora_a, lora_b, scale = _peft_factors(layer, len(names))
        for name, a_slice, b_slice, s in zip(names, lora_a, lora_b, scale):
            tensors[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(a_slice.T, np.float32)
            tensors[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(b_slice.T, np.float32)
            ranks[name] = a_slice.shape[1]
            alphas[name] = float(s) * a_slice.shape[1]
        if isinstance(layer, DoraLinear):
            magnitudes = np.asarray(layer.lora_magnitude[...], np.float32).reshape(len(names), -1)
            for name, magnitude in zip(names, magnitudes):
                tensors[f"base_model.model.{name}.lora_magnitude_vector"] = np.ascontiguousarray(magnitude)
        if layer.dropout is not None:
            dropout = layer.dropout.rate
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(ranks),
        "rank_pattern": {re.escape(name): r for name, r in ranks.items() if r != rank},
        "alpha_pattern": {re.escape(name): a for name, a in alphas.items() if a != alpha},
        "use_rslora": False,
        "use_dora": bool(dora),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})


def hf_module_names(path: str, num_layers: int | None) -> list[str]:
    """HF module names of the linear at NNX module path `path`, from models/param_map.py.

    Args:
        path: dotted NNX module path, e.g. 'layers.self_attn.q_proj'.
        num_layers: L for a stacked linear (one name per layer), None for an unstacked one.

    >>> hf_module_names("layers.mlp.up_proj", 2)
    ['model.layers.0.mlp.up_proj', 'model.layers.1.mlp.up_proj']
    """
    kernel_path = (*path.split("."), "kernel")
    for rule in LLAMA_TENSORS:
        if rule.nnx_path == kernel_path and rule.stacked == (num_layers is not None):
            return [name.removesuffix(".weight") for name in rule.hf_names(num_layers or 1)]
    known = [".".join(rule.nnx_path[:-1]) for rule in LLAMA_TENSORS if rule.nnx_path[-1] == "kernel"]
    raise ValueError(f"adapted layer {path!r} (stacked: {num_layers is not None}) has no Hugging Face name; "
                     f"export_peft knows the Llama linears {known}.")


def _peft_factors(layer: AdaptedLinear, num_slices: int):
    """Per-slice (in, r') and (r', out) float64 factors and scales with s · A' B' = ΔK relative to the original."""
    def host(variable):
        return np.asarray(variable[...], np.float64).reshape(num_slices, *variable.shape[-2:])

    lora_a, lora_b = host(layer.lora_a), host(layer.lora_b)
    if layer.lora_m is not None:
        lora_b = host(layer.lora_m) @ lora_b
    if hasattr(layer, "lora_a_init"):
        lora_a = np.concatenate([lora_a, host(layer.lora_a_init)], axis=-1)
        lora_b = np.concatenate([lora_b, -host(layer.lora_b_init)], axis=-2)
    scale = np.asarray(layer.lora_scale[...], np.float64).reshape(num_slices)
    return lora_a, lora_b, scale
