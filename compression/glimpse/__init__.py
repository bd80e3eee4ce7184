"""GlimpsePrune — dynamic visual-token pruning with a learned glimpse token and a Visual Importance Predictor
(spec `../shared/specs/glimpseprune.md`): the model-independent parts as pure functions and one small module.

- `keep.py`    the keep rule (threshold, per-sample cap, min-keep) and the box-derived GT token mask;
- `rope2d.py`  the VIP's 2-D rotary embedding on the merged grid;
- `vip.py`     the VIP (`AttnFuserV1`) and its config;
- `loss.py`    Dice + BCE mask loss.
"""
from vlmedge.compression.glimpse.keep import gt_token_mask, keep_indices, keep_indices_multi, keep_mask
from vlmedge.compression.glimpse.loss import dice_loss, mask_loss
from vlmedge.compression.glimpse.rope2d import apply_rope, rope_2d, rotate_half
from vlmedge.compression.glimpse.vip import VIP, VIPConfig, remap_released_state_dict

__all__ = ["keep_mask", "keep_indices", "keep_indices_multi", "gt_token_mask", "rope_2d", "apply_rope",
           "rotate_half", "VIP", "VIPConfig", "remap_released_state_dict", "dice_loss", "mask_loss"]
