"""Attention blocks, one family per file. Each registers itself with ``@register_block``.

The contract (timm's ``create_attn`` convention): ``Block(channels, **kw)``, NCHW in, same shape
out, any H x W. Keyword names are shared: ``rd_ratio``, ``rd_channels``, ``act_layer``,
``norm_layer``, ``gate_layer``. Unknown keywords raise ``TypeError``.
"""
from . import cbam, eca, gc, non_local, se, self_attn  # noqa: F401  (importing registers each block)
from . import halo, lambda_layer, selective_kernel, split_attn  # noqa: F401
from . import ceca, ese, fca, gather_excite, gct, simam, srm  # noqa: F401  (channel gates, issue #12)
from . import attn_augmented, criss_cross, double_attn, dual_attn, external_attn, pyramid_split  # noqa: F401
from . import bam, coord, lka, scse, sge, shuffle, triplet  # noqa: F401  (gates2: channel-and-spatial gates)
from . import bat  # noqa: F401
