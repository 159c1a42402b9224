"""LoRA-GA: the init against a float64 NumPy SVD of the gradient, and on a tiny Hugging Face Llama end to end —
estimate_gradients against PyTorch autograd, the factors against PEFT's LoRA-GA (same singular vectors; PEFT's
current code scales B by S and only B by the stable factor, the paper and the authors' release scale both factors
and drop S), the output unchanged at init, and export_peft loaded by PEFT on the ORIGINAL base giving our logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
import transformers
from flax import nnx
from peft.tuners.lora import LoraGAConfig, preprocess_loraga

from hf_reference import save_random_hf_llama
from lowrank_jax.adapters import AdapterConfig, adapt
from lowrank_jax.adapters.loraga import estimate_gradients
from lowrank_jax.export import export_peft
from lowrank_jax.models.pretrained import load_pretrained

N_IN, N_OUT = 40, 24


class OneLinear(nnx.Module):
    def __init__(self, kernel):
        self.q_proj = nnx.Linear(*kernel.shape, use_bias=False, rngs=nnx.Rngs(0))
        self.q_proj.kernel[...] = kernel


def gradient_with_spectrum(singular_values, seed=0):
    """A (in, out) float32 gradient with the given, well separated singular values."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((N_IN, len(singular_values))))
    v, _ = np.linalg.qr(rng.standard_normal((N_OUT, len(singular_values))))
    return ((u * singular_values) @ v.T).astype(np.float32)


def reference_loraga(kernel, gradient, rank, scale, gamma):
    """The paper's init in PEFT orientation, float64: G = ∇_W L = U S Vᵀ, each pair signed so that the largest entry
    of u_i is positive; A0 = c V[:, :r]ᵀ, B0 = c U[:, r:2r], c = out^¼/√γ; W_res = W − s B0 A0."""
    u, _, vt = np.linalg.svd(np.asarray(gradient, np.float64).T, full_matrices=False)
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    u, vt = u * signs, vt * signs[:, None]
    c = N_OUT**0.25 / np.sqrt(gamma)
    lora_a, lora_b = c * vt[:rank], c * u[:, rank: 2 * rank]
    return lora_a, lora_b, np.asarray(kernel, np.float64).T - scale * lora_b @ lora_a


@pytest.mark.parametrize("options", [{}, {"stable_gamma": 4.0, "scaling": "rslora"}, {"niter": 4}],
                         ids=["default", "gamma_rslora", "randomized"])
def test_init_matches_the_float64_reference(options):
    rank, alpha = 3, 6.0
    kernel = np.random.default_rng(1).standard_normal((N_IN, N_OUT)).astype(np.float32)
    # For the randomized SVD (q = 4r = 12 columns) the gradient has rank 12, so 4 iterations recover it exactly.
    spectrum = np.linspace(6.0, 1.0, 12 if "niter" in options else N_OUT)
    gradient = gradient_with_spectrum(spectrum)
    config = AdapterConfig(method="loraga", rank=rank, alpha=alpha, targets="q_proj", **options)
    with jax.default_matmul_precision("highest"):
        layer = adapt(OneLinear(jnp.asarray(kernel)), config, gradients={"q_proj": jnp.asarray(gradient)}).q_proj
    scale = config.scale_for("q_proj")
    lora_a, lora_b, residual = reference_loraga(kernel, gradient, rank, scale, options.get("stable_gamma", 16.0))
    np.testing.assert_allclose(np.asarray(layer.lora_a[...]).T, lora_a, atol=2e-5)
    np.testing.assert_allclose(np.asarray(layer.lora_b[...]).T, lora_b, atol=2e-5)
    np.testing.assert_allclose(np.asarray(layer.base.kernel[...]).T, residual, atol=2e-5)
    x = np.random.default_rng(2).standard_normal((5, N_IN)).astype(np.float32)
    np.testing.assert_allclose(layer(jnp.asarray(x)), x @ kernel, atol=1e-4)  # output unchanged at init
    assert np.asarray(layer.lora_a_init[...]).shape == (N_IN, rank)  # kept for the rank-2r PEFT export


def test_bad_settings_fail_before_any_work():
    model = OneLinear(jnp.ones((N_IN, N_OUT)))
    gradients = {"q_proj": jnp.ones((N_IN, N_OUT))}
    with pytest.raises(ValueError, match="initialises from loss gradients.*estimate_gradients"):
        adapt(model, {"method": "loraga", "targets": "q_proj"})
    with pytest.raises(ValueError, match="does not use them"):
        adapt(model, {"method": "pissa", "targets": "q_proj"}, gradients=gradients)
    with pytest.raises(ValueError, match="no entry for the targets"):
        adapt(model, {"method": "loraga", "targets": "q_proj"}, gradients={})
    with pytest.raises(ValueError, match=r"loraga needs 2 x rank 13 > min\(in, out\) = min\(40, 24\)"):
        adapt(model, {"method": "loraga", "rank": 13, "targets": "q_proj"}, gradients=gradients)
    with pytest.raises(ValueError, match="has shape .* pass the gradient of the kernel"):
        adapt(model, {"method": "loraga", "targets": "q_proj"}, gradients={"q_proj": jnp.ones((N_OUT, N_IN))})
    with pytest.raises(ValueError, match="stable_gamma applies to method='loraga' only"):
        AdapterConfig(method="pissa", stable_gamma=4.0)
    with pytest.raises(ValueError, match="init_base='loraga' is not supported"):
        AdapterConfig(method="inttune", init_base="loraga")
    with pytest.raises(ValueError, match="non-empty list"):
        estimate_gradients(model, lambda m, b: 0.0, iter([1]), "q_proj")
    with pytest.raises(ValueError, match="match no"):
        estimate_gradients(model, lambda m, b: 0.0, [1], "k_proj")


class TwoLayers(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs) for _ in range(3)])
        self.out = nnx.LinearGeneral(6, (2, 3), rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return self.out(x)


@pytest.mark.parametrize("group_bytes", [1, 2**20], ids=["one_module_per_pass", "all_in_one_pass"])
def test_estimate_gradients_is_the_mean_full_gradient(group_bytes):
    model = TwoLayers(nnx.Rngs(0))
    batches = [jnp.asarray(np.random.default_rng(seed).standard_normal((4, 6)), jnp.float32) for seed in range(3)]

    def loss_fn(model, x):
        return jnp.mean(model(x) ** 2)

    gradients = estimate_gradients(model, loss_fn, batches, r"layers\.\d|out", group_bytes=group_bytes)
    assert list(gradients) == ["layers.0", "layers.1", "layers.2", "out"]
    full = [nnx.grad(loss_fn)(model, x) for x in batches]  # every parameter at once: the reference
    for name in gradients:
        index = name.split(".")
        expected = np.mean([np.asarray(g[index[0]][int(index[1])]["kernel"][...] if len(index) > 1
                                       else g["out"]["kernel"][...]) for g in full], axis=0)
        np.testing.assert_allclose(gradients[name], expected, rtol=1e-5, atol=1e-7)


HF_CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5)
# Two batches of 4 tokens: every gradient has rank ≤ 8 = 4r, so PEFT's randomized SVD (q = 4r) is exact.
BATCHES = [np.random.default_rng(seed).integers(0, HF_CONFIG["vocab_size"], (1, 4)) for seed in (3, 4)]
TARGETS = r"layers\.(self_attn\.q_proj|mlp\.down_proj)"
HF_TARGETS = ["q_proj", "down_proj"]
RANK, ALPHA = 2, 4.0
IDS = np.random.default_rng(0).integers(0, HF_CONFIG["vocab_size"], (2, 16))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A random HF Llama (weights ~ N(0, 0.2²), norm scales 1 + N(0, 0.2²)) saved as safetensors."""
    return save_random_hf_llama(tmp_path_factory.mktemp("base"), HF_CONFIG)


def mean_token_loss(model, ids):
    logits = model(ids)[:, :-1].astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def peft_loraga(base_dir):
    """PEFT's LoRA-GA on the same base and batches: (peft model, {module name: averaged gradient (out, in)})."""
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=HF_TARGETS, init_lora_weights="lora_ga",
                             lora_ga_config=LoraGAConfig(direction="ArB2r", scale="stable", stable_gamma=16))

    def train_step():
        for ids in BATCHES:
            ids = torch.tensor(ids)
            model(input_ids=ids, labels=ids).loss.backward()  # PEFT averages over the backward calls

    preprocess_loraga(model, config, train_step)
    gradients = {name: module._peft_loraga_grad.double().numpy() for name, module in model.named_modules()
                 if hasattr(module, "_peft_loraga_grad")}
    return peft.get_peft_model(model, config), gradients


def aligned(got, want):
    """`got` (n, k) with each column's sign flipped to match `want`'s (singular vectors are signed arbitrarily)."""
    return got * np.sign(np.sum(got * want, axis=0))


def test_tiny_llama_against_pytorch_gradients_and_peft_loraga(base_dir, tmp_path):
    with jax.default_matmul_precision("highest"):
        base = load_pretrained(base_dir, dtype="float32", param_dtype="float32")[0]
        gradients = estimate_gradients(base, mean_token_loss, [jnp.asarray(ids) for ids in BATCHES], TARGETS)
        gradients = dict(gradients)  # computed once here, read by adapt and by the checks below
        model = adapt(base, {"method": "loraga", "rank": RANK, "alpha": ALPHA, "targets": TARGETS}, gradients)
        np.testing.assert_allclose(model(IDS), base(IDS), atol=1e-4)  # the residual keeps the output at init

    peft_model, torch_gradients = peft_loraga(base_dir)
    assert len(torch_gradients) == 2 * len(HF_TARGETS)
    c = 1.0 / np.sqrt(16.0)
    for name, torch_gradient in torch_gradients.items():
        layer_index = int(name.split(".")[2])
        path = "layers." + ".".join(name.split(".")[3:])
        gradient = np.asarray(gradients[path][layer_index], np.float64)  # (in, out)
        np.testing.assert_allclose(gradient.T, torch_gradient, atol=1e-5 * np.abs(torch_gradient).max())

        adapted = model
        for part in path.split("."):
            adapted = getattr(adapted, part)
        lora_a = np.asarray(adapted.lora_a[...][layer_index], np.float64)  # (in, r)
        lora_b = np.asarray(adapted.lora_b[...][layer_index], np.float64)  # (r, out)
        module = peft_model.get_submodule("base_model.model." + name)
        peft_a = module.lora_A["default"].weight.detach().double().numpy()  # (r, in) = V[:, :r]ᵀ
        peft_b = module.lora_B["default"].weight.detach().double().numpy()  # (out, r) = c U[:, r:2r] S[r:2r]
        n_out = torch_gradient.shape[0]
        sigma = np.linalg.svd(torch_gradient, compute_uv=False)[RANK: 2 * RANK]
        stable = n_out**0.25 * c
        np.testing.assert_allclose(lora_a, aligned(stable * peft_a.T, lora_a), atol=1e-3 * stable)
        np.testing.assert_allclose(lora_b.T, aligned(peft_b / sigma, lora_b.T), atol=1e-3 * stable)

    # Trained adapters (stand-in: perturbed factors) exported as rank-2r PEFT adapters on the ORIGINAL base.
    rng = np.random.default_rng(5)
    state = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda v: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype), state))
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(model(IDS))
    export_peft(model, tmp_path / "peft", base=base_dir)
    original = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    with_adapter = peft.PeftModel.from_pretrained(original, tmp_path / "peft").eval()
    with torch.no_grad():
        peft_logits = with_adapter(input_ids=torch.tensor(IDS)).logits.numpy()
    assert np.abs(logits - np.asarray(base(IDS))).max() > 1e-2  # the adapters do change the function
    np.testing.assert_allclose(peft_logits, logits, atol=1e-4)
