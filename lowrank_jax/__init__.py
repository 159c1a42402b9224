"""lowrank-jax: low-rank fine-tuning of Llama-family models in JAX/Flax NNX."""
