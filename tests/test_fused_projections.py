"""`fuse_projections`: q/k/v and gate/up (with their adapters' x A) from one matmul each, against the unfused model
holding the same parameters (float32): logits, adapter gradients, fused train steps on an 8-device mesh, the matmuls
that disappear, and the layers that keep their own calls (DoRA, dropout, quantized bases, tensor-parallel kernels).
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowrank_jax.adapters import AdaptedLinear, DoraLinear, adapt
from lowrank_jax.adapters.fused_linears import fused_linears
from lowrank_jax.adapters.inits import InitFactors
from lowrank_jax.losses import token_loss
from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.quant import QuantizeConfig
from lowrank_jax.quant.layer import QuantizedLinear
from lowrank_jax.sharding import make_mesh
from lowrank_jax.training.placement import init_optimizer, jit_train_step, split_onto_mesh

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)  # grouped-query attention
ALL, QKV = ".*(q|k|v|o|gate|up|down)_proj", ".*(q|k|v)_proj"
IDS = jnp.asarray(np.random.default_rng(1).integers(0, TINY["vocab_size"], (2, 12)), jnp.int32)


def same_parameters(model_type: str, method: str, targets: str, **settings) -> tuple[nnx.Module, nnx.Module]:
    """(unfused, fused) adapted models (structures from `nnx.eval_shape`, nothing compiled) holding one random state:
    normal(0, 0.2) everywhere, so every path (lora_b, the Qwen2 biases, both zero at init) reaches the logits."""
    config = LlamaConfig(**{**TINY, **settings}, model_type=model_type, attention_bias=model_type == "qwen2")
    adapter = {"method": method, "rank": 4, "targets": targets}
    unfused, state = nnx.split(nnx.eval_shape(lambda: adapt(Llama(config), adapter)))
    fused = nnx.graphdef(nnx.eval_shape(lambda: adapt(Llama(config.replace(fuse_projections=True)), adapter)))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), nnx.as_pure(state))
    return nnx.merge(unfused, state), nnx.merge(fused, state)


def forward_dots(model: nnx.Module) -> int:
    """dot_general ops of the model's forward program (before XLA's optimisations)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s: nnx.merge(graphdef, s)(IDS)).lower(nnx.as_pure(state)).as_text().count(
        "stablehlo.dot_general")


def loss_and_logits(graphdef, trainable, rest):
    logits = nnx.merge(graphdef, trainable, rest)(IDS)
    return jnp.mean(jax.nn.log_softmax(logits)[..., :7] * jnp.arange(7.0)), logits


def test_fused_model_gives_the_unfused_logits_and_adapter_gradients():
    """Qwen2 (q/k/v biases), NLoRA (A M B) on q/k/v only (gate/up fuse their bases alone), an unrolled layer, full
    remat; scanned layers and another remat policy run in the train step test below."""
    unfused, fused = same_parameters("qwen2", "nlora", QKV, scan_layers=False, remat="full", num_hidden_layers=1)
    # q/k/v become one matmul, gate/up one, and q/k/v's x A join theirs.
    assert forward_dots(unfused) - forward_dots(fused) == 2 + 1 + 3
    graphdef, trainable, rest = (nnx.as_pure(part) if i else part
                                 for i, part in enumerate(nnx.split(unfused, nnx.LoRAParam, ...)))
    fused_graphdef = nnx.graphdef(fused)
    value_and_grad = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)
    ((loss, logits), grads), ((fused_loss, fused_logits), fused_grads) = jax.jit(  # one program, one compile
        lambda *state: (value_and_grad(graphdef, *state), value_and_grad(fused_graphdef, *state)))(trainable, rest)
    np.testing.assert_allclose(fused_logits, logits, rtol=0, atol=1e-5 * float(jnp.abs(logits).max()))
    np.testing.assert_allclose(fused_loss, loss, rtol=1e-6)
    for (path, grad), (_, fused_grad) in zip(*(jax.tree_util.tree_leaves_with_path(g) for g in (grads, fused_grads))):
        scale = float(jnp.abs(grad).max())
        assert scale > 0, path
        np.testing.assert_allclose(fused_grad, grad, rtol=0, atol=1e-5 * scale, err_msg=str(path))


def test_fused_train_steps_on_an_fsdp_mesh_follow_the_unfused_gradients():
    """Two SGD steps of the training loop's jitted step, fused, traced under a 2 x 4 (data x fsdp) mesh as the loop
    traces it (the kernels are split along their input axis only, so the projections still fuse), against the
    unfused model's loss and gradient on one device at the same points: each update is -lr x that gradient."""
    unfused, fused = same_parameters("llama", "lora", ALL, remat="dots_with_no_batch_dims_saveable")
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    with jax.set_mesh(mesh):
        assert forward_dots(unfused) - forward_dots(fused) == 3 + 5
    batch = {"input_ids": IDS, "loss_mask": jnp.ones_like(IDS), "segment_ids": jnp.ones_like(IDS),
             "positions": jnp.broadcast_to(jnp.arange(IDS.shape[1]), IDS.shape)}
    graphdef, trainable, rest = (nnx.as_pure(part) if i else part
                                 for i, part in enumerate(nnx.split(unfused, nnx.LoRAParam, ...)))

    @jax.jit
    def mean_loss_and_grad(trainable):
        return jax.value_and_grad(lambda t: operator.truediv(*token_loss(nnx.merge(graphdef, t, rest), batch)))(
            trainable)

    learning_rate = 50.0  # updates well above the float32 rounding of the parameters they change
    state = split_onto_mesh(fused, mesh)
    optimizer = optax.sgd(learning_rate)
    opt_state = init_optimizer(optimizer, state.trainable, mesh)
    fused_trainable, rngs = state.trainable, state.rngs
    with jax.set_mesh(mesh):
        step = jit_train_step(state, optimizer, opt_state)
        for _ in range(2):
            loss, grads = mean_loss_and_grad(trainable)
            before = jax.tree.map(np.asarray, fused_trainable)
            fused_trainable, opt_state, rngs, metrics = step(fused_trainable, opt_state, rngs, state.frozen,
                                                             jax.tree.map(lambda x: x[None], batch))
            np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
            jax.tree.map(lambda new, old, g: np.testing.assert_allclose(
                new - old, -learning_rate * g, rtol=0, atol=1e-4 * learning_rate * np.abs(g).max()),
                jax.tree.map(np.asarray, fused_trainable), before, grads)
            trainable = jax.tree.map(np.asarray, fused_trainable)


def test_tensor_parallel_kernels_run_unfused():
    """Kernels whose output axis the mesh splits would be resharded by the concatenation: the model falls back."""
    unfused, fused = same_parameters("llama", "lora", ALL)
    with jax.set_mesh(make_mesh(data=2, fsdp=2, tensor=2)):
        assert forward_dots(fused) == forward_dots(unfused)


def group(kind: str) -> tuple[nnx.GraphDef, nnx.State]:
    """q/k/v-like layers reading 64 features (plain, LoRA on some of them, DoRA, LoRA with dropout, or a quantized
    one), built abstractly and given random values (integers for int8 codes), so nothing runs eagerly."""

    def build():
        def linear(out, bias=True):
            return nnx.Linear(64, out, use_bias=bias, dtype=jnp.float32, rngs=nnx.Rngs(0))

        def factors(out, middle=False):
            return InitFactors(jnp.ones((64, 2)), jnp.ones((2, 2)) if middle else None, jnp.ones((2, out)), None)

        layers = [linear(8), linear(4, bias=False), linear(4)]
        if kind == "partial":  # adapters on k (LoRA) and v (A M B), none on q
            layers[1] = AdaptedLinear(layers[1], factors(4), scale=0.5)
            layers[2] = AdaptedLinear(layers[2], factors(4, middle=True), scale=2.0)
        elif kind == "dora":
            layers = [DoraLinear(layer, factors(layer.out_features), scale=0.5) for layer in layers]
        elif kind == "dropout":
            layers[0] = AdaptedLinear(layers[0], factors(8), scale=0.5, dropout=0.5, dropout_key=jax.random.key(4))
        elif kind == "quantized":
            layers[2] = QuantizedLinear(layers[2], QuantizeConfig("int8"))
        return layers

    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(3)

    def value(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(4)
        if jnp.issubdtype(x.dtype, jnp.integer):
            return jnp.asarray(rng.integers(-100, 100, x.shape), x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape), x.dtype)

    return graphdef, jax.tree.map(value, nnx.as_pure(state))


@pytest.mark.parametrize("kind, fuses", [("plain", True), ("partial", True), ("dora", False), ("dropout", False),
                                         ("quantized", False)])
def test_a_group_fuses_exactly_when_its_layers_allow(kind, fuses):
    graphdef, state = group(kind)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 5, 64)), jnp.float32)

    def fused(state, x):
        return fused_linears(x, nnx.merge(graphdef, state))

    def separate(state, x):
        return [layer(x) for layer in nnx.merge(graphdef, state)]

    matmuls, one_by_one = (jax.jit(f).lower(state, x).as_text().count("stablehlo.dot_general")
                           for f in (fused, separate))
    adapters = sum(isinstance(layer, AdaptedLinear) for layer in nnx.merge(graphdef, state))
    assert matmuls == (one_by_one - 2 - adapters if fuses else one_by_one)
    if kind != "dropout":  # dropout draws new masks per call
        for y, expected in zip(*jax.jit(lambda *a: (fused(*a), separate(*a)))(state, x)):
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
