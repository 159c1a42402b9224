"""The package as users install it: built from pyproject.toml into a fresh folder, imported from outside the
repository, light to import, and `lorapro()` composing into an optax chain on a user's own NNX model."""

import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_CODE = """
import json, sys
import jax, jax.numpy as jnp, optax
from flax import nnx
import lowrank_jax

heavy = sorted(m for m in ("torch", "transformers", "datasets", "ml_collections", "tqdm") if m in sys.modules)

class MLP(nnx.Module):  # the user's own model, nothing of lowrank_jax's
    def __init__(self, rngs):
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.down = nnx.Linear(32, 4, rngs=rngs)
    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))

x = jax.random.normal(jax.random.key(0), (64, 16))
y = jnp.sin(x[:, :4] * 2.0)
model = lowrank_jax.adapt(MLP(nnx.Rngs(0)), lowrank_jax.AdapterConfig(method="lora", rank=4, alpha=8.0,
                                                                      targets="up|down"))
# Only the factors train; lorapro() reads each adapter's scale s = alpha / r from the frozen AdapterScale state.
scales = nnx.state(model, lowrank_jax.adapters.AdapterScale)
tx = optax.chain(lowrank_jax.lorapro(scale=scales), optax.adamw(1e-2))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)

@nnx.jit
def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    optimizer.update(model, grads)
    return loss

losses = [float(step(model, optimizer)) for _ in range(30)]
print(json.dumps(dict(version=lowrank_jax.__version__, location=lowrank_jax.__file__, heavy=heavy, losses=losses)))
"""


def test_installed_package_imports_light_and_trains_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # what an sdist holds, so the build leaves nothing in the checkout
    shutil.copytree(os.path.join(REPO, "lowrank_jax"), source / "lowrank_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    assert not (site / "tests").exists() and not (site / "configs").exists()  # only the library is installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", USER_CODE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["location"].startswith(str(site)), result["location"]
    assert result["heavy"] == []
    assert result["version"].count(".") == 2
    assert result["losses"][-1] < 0.5 * result["losses"][0], result["losses"]
