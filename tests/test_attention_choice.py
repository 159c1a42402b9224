"""'auto' attention: cuDNN exactly on NVIDIA GPUs of compute capability >= 8.0 with bfloat16 compute; 'cudnn' anywhere
else is refused with the fix named, and train.py's model loading applies the choice."""

from types import SimpleNamespace

import pytest

from configs import lora_llama
from lowrank_jax.models.attention_choice import choose_attention_impl, cuda_compute_capability
from lowrank_jax.training.model_source import load_model

H100 = SimpleNamespace(platform="gpu", compute_capability="9.0")
A100 = SimpleNamespace(platform="gpu", compute_capability="8.0")
V100 = SimpleNamespace(platform="gpu", compute_capability="7.0")
MI300 = SimpleNamespace(platform="gpu", compute_capability="gfx942")
CPU = SimpleNamespace(platform="cpu")
TPU = SimpleNamespace(platform="tpu")


@pytest.mark.parametrize("device,capability", [(H100, (9, 0)), (A100, (8, 0)), (V100, (7, 0)), (MI300, None),
                                               (CPU, None), (TPU, None)])
def test_compute_capability_is_read_only_from_nvidia_gpus(device, capability):
    assert cuda_compute_capability(device) == capability


@pytest.mark.parametrize("device,dtype,chosen", [
    (H100, "bfloat16", "cudnn"), (A100, "bfloat16", "cudnn"),
    (H100, "float32", "xla"), (V100, "bfloat16", "xla"), (MI300, "bfloat16", "xla"),
    (CPU, "bfloat16", "xla"), (TPU, "bfloat16", "xla"),
])
def test_auto_takes_cudnn_exactly_where_its_kernel_runs(device, dtype, chosen):
    assert choose_attention_impl("auto", dtype, device) == chosen


@pytest.mark.parametrize("device", [H100, V100, CPU, TPU])
def test_xla_is_kept_everywhere(device):
    assert choose_attention_impl("xla", "float32", device) == "xla"


@pytest.mark.parametrize("device,dtype,message", [
    (CPU, "bfloat16", "a cpu device"), (TPU, "bfloat16", "a tpu device"), (MI300, "bfloat16", "a gpu device"),
    (V100, "bfloat16", r"capability \(7, 0\)"), (H100, "float32", "no float32 kernel"),
])
def test_cudnn_where_it_cannot_run_is_refused_with_the_fix(device, dtype, message):
    with pytest.raises(ValueError, match=message) as error:
        choose_attention_impl("cudnn", dtype, device)
    assert "'auto'" in str(error.value)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="'flash' is unknown"):
        choose_attention_impl("flash", "bfloat16", H100)


def test_load_model_resolves_auto_for_this_machine_and_refuses_cudnn_on_cpu():
    config = lora_llama.get_config("tiny").model
    assert config.attention_impl == "auto"
    _, model_config, _ = load_model(config, "random")
    assert model_config.attention_impl == "xla"  # the tests run on CPUs
    config.attention_impl, config.dtype = "cudnn", "bfloat16"
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        load_model(config, "random")
