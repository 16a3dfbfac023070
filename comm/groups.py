"""Which process group a call runs on: every form torch's functional collectives accept, resolved once.

`dist.all_to_all_single` takes only a `ProcessGroup` (or None = the world); torch's functional
collectives (`torch.distributed._functional_collectives`) also take a 1-D `DeviceMesh`, a
`(DeviceMesh, dim)` pair, a group name string and a list of ranks. Every mxa2a entry point accepts
them all, so torchtitan's `group=self.ep_mesh` works unchanged. Resolution is torch's own
(`_resolve_group_name`, then the c10d registry), so a list of ranks creates or finds the group exactly
as torch would (a collective call on every rank of the world, the first time).
"""

from __future__ import annotations

import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed import distributed_c10d as c10d
from torch.distributed.device_mesh import DeviceMesh


def group_name(group) -> str:
    """The c10d name of `group` (ProcessGroup, 1-D DeviceMesh, (DeviceMesh, dim), name, list of ranks;
    None = the default group)."""
    if group is None:
        group = dist.group.WORLD
    # The common forms first, in a way torch.compile traces (torch's resolver builds a GroupName NewType).
    if isinstance(group, str):
        return group
    if isinstance(group, DeviceMesh) and group.ndim == 1:
        group = group.get_group()
    if isinstance(group, dist.ProcessGroup):
        return group.group_name
    try:
        return str(funcol._resolve_group_name(group))
    except (AssertionError, ValueError, TypeError) as e:  # torch asserts on an N-D mesh
        raise ValueError(f"group must be a ProcessGroup, a 1-D DeviceMesh, a (DeviceMesh, dim) pair, a group "
                         f"name or a list of ranks, got {group!r} ({e})") from None


def resolve_group(group) -> dist.ProcessGroup | None:
    """`group` as a ProcessGroup (None and ProcessGroups pass through unchanged)."""
    if group is None or isinstance(group, dist.ProcessGroup):
        return group
    return c10d._resolve_process_group(group_name(group))
