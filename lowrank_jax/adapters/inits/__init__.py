"""Adapter initialisations, one registered function per method; importing this package registers them all."""

# Imported for their @register_init side effect.
from lowrank_jax.adapters.inits import dora, inttune, nlora, nystrom, olora, svd, zero_b  # noqa: F401
from lowrank_jax.adapters.inits.registry import METHODS, AdapterMethod, InitFactors, get_method, register_init

__all__ = ["METHODS", "AdapterMethod", "InitFactors", "get_method", "register_init"]
