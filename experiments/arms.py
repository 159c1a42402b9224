"""The arms of the GSM8K comparison: one line each (config file, overrides, centre of the lr sweep, GPU share).

Settings follow the papers: LoRA-Pro's (r = 8, alpha = 16) and NLoRA's (r = alpha = 128). `base` is the unchanged
model through the same path (one step at lr BASE_LR). An arm's sweep is centred on `lr` (snapped to the lattice
SHARED_LR * factor^k, so every arm's grid holds the shared lr's neighbours and the shared-lr run is one of its
points). `slots` is how many of the scheduler's --jobs shares of GPU memory a run takes (full fine-tuning keeps
AdamW moments of every weight). Later arms are one more line, e.g.
`Arm("dora-r8", "lora_llama", {"adapter.method": "dora", "adapter.rank": 8, "adapter.alpha": 16.0}, 4e-3, "lorapro")`.
"""

from __future__ import annotations

from typing import NamedTuple


class Arm(NamedTuple):
    """One method in one paper's setting.

    Attributes:
      name: the results' name (file names, tables).
      config: module in configs/ whose `gsm8k` preset the run starts from.
      overrides: dotted config keys -> values applied on top.
      lr: centre of the lr sweep (the expected best; an edge best extends the sweep).
      setting: 'lorapro' (r = 8, alpha = 16) or 'nlora' (r = alpha = 128); the summary's tables follow it.
      slots: shares of GPU memory a run takes.
    """

    name: str
    config: str
    overrides: dict
    lr: float
    setting: str
    slots: int = 1


R8 = {"adapter.rank": 8, "adapter.alpha": 16.0}
R128 = {"adapter.rank": 128, "adapter.alpha": 128.0}
SHARED_LR = 5e-4  # the configs' small-model lr: the papers' convention of one lr for every method
BASE_LR = 1e-30   # `base`: one step at this lr evaluates the unchanged model through the same path

# Listed by value (the plan's order within a tier): the LoRA-Pro claim's core (LoRA, LoRA-Pro, full), NLoRA against
# LoRA at rank 128, then the other arms of each setting.
ARMS = {arm.name: arm for arm in (
    Arm("lora-r8", "lora_llama", R8, 4e-3, "lorapro"),
    Arm("lorapro-r8", "lorapro_llama", {**R8, "optimizer.name": "lorapro"}, 4e-3, "lorapro"),
    Arm("full", "full_llama", {}, 1.25e-4, "lorapro", slots=2),
    Arm("lora-r128", "lora_llama", R128, 1e-3, "nlora"),
    Arm("nlora-r128", "nlora_llama", R128, 5e-4, "nlora"),
    # Algorithm 2 runs Adam in the kernel space: per lr it moves the kernel about as far as full fine-tuning's AdamW
    # (experiments/lorapro_first_steps.py), so its sweep is centred on full fine-tuning's lrs, not LoRA's.
    Arm("lorapro_adamw-r8", "lorapro_llama", {**R8, "optimizer.name": "lorapro_adamw"}, 1.25e-4, "lorapro"),
    Arm("slora-r128", "slora_llama", R128, 1e-3, "nlora"),
    Arm("pissa-r128", "pissa_llama", R128, 5e-4, "nlora"),
    Arm("lorapro-r8-rslora", "lorapro_llama", {**R8, "optimizer.name": "lorapro", "adapter.scaling": "rslora"},
        2e-3, "lorapro"),
    Arm("nystrom-r128", "nystrom_llama", R128, 2.5e-4, "nlora"),
    Arm("inttune-r128", "inttune_llama", R128, 2e-3, "nlora"),
    # The methods other stacks offer, on LoRA-Pro's setting.
    Arm("dora-r8", "dora_llama", R8, 4e-3, "others"),
    Arm("loraplus-r8", "lora_llama", {**R8, "optimizer.loraplus_ratio": 16.0}, 1e-3, "others"),
    Arm("loraga-r8", "loraga_llama", R8, 1e-3, "others"),
    Arm("qlora-r8", "qlora_llama", R8, 4e-3, "others"),
)}
BASE = Arm("base", "lora_llama", R8, BASE_LR, "base")
