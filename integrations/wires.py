"""The wires of one MoE layer's token exchange, as the adapters take them: one per call site and
direction, each "raw" unless the user names another.

dispatch: tokens to their experts (forward); dispatch_grad: the gradient of the dispatched tokens,
going back (backward of dispatch); combine: expert outputs back to their tokens (forward);
combine_grad: the gradient of the combined outputs, going to the experts (backward of combine).
"raw" is exact; "bf16" rounds float32 (exact for bf16 inputs); "fp8" and "mxfp4" are lossy
(docs/FORMATS.md gives their error bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..comm.functional import wire_key
from ..quant.wire import WireCodec

Wire = str | WireCodec


@dataclass(frozen=True)
class ExchangeWires:
    dispatch: Wire = "raw"
    combine: Wire = "raw"
    dispatch_grad: Wire = "raw"
    combine_grad: Wire = "raw"
    scale_mode: str = "rceil"
    check: bool | str | None = None

    def keys(self) -> "ExchangeWires":
        """The same wires as the strings the custom ops take (resolved once, outside compiled code)."""
        return ExchangeWires(wire_key(self.dispatch), wire_key(self.combine), wire_key(self.dispatch_grad),
                             wire_key(self.combine_grad), self.scale_mode, self.check)
