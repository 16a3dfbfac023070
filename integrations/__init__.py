"""mxa2a.integrations: adapters that make a training framework's MoE token dispatcher exchange its
tokens through `mxa2a.comm.functional`, one call each: `torchtitan.use_mxa2a(model, ...)` and
`megatron.use_mxa2a(...)`. Each compresses only the call sites the user names (every wire defaults to
"raw", bit-identical to the framework's own exchange). The framework is imported only when its adapter
module is; nothing inside mxa2a imports this package.
"""
