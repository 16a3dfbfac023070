"""The all-to-all cases of issue 23 on 2 gloo ranks, each with a hard timeout: rows that never arrive
decode to NaN (never to numbers), the raw wire takes non-contiguous input and in-place exchanges, and
split sizes may be numpy integers, as with torch.distributed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comm_testing import assert_same_bits, qdq, reference_exchange
from dist_testing import run_distributed

H = 128


def _unreceived_rows_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all_single

    g = torch.Generator().manual_seed(seed + rank)
    for wire in ("mxfp4", "fp8", "bf16", "raw"):
        x = torch.randn(4, H, generator=g)
        out = torch.empty(4, H)
        all_to_all_single(out, x, wire=wire)  # verifies the signature: later calls are not checked
        # Rank 0 sends 1 row to rank 1, which expects 2 (a program bug the default policy lets through).
        ins = [2, 1] if rank == 0 else [2, 2]
        x = torch.randn(sum(ins), H, generator=g)
        out = torch.full((4, H), 7.0)
        all_to_all_single(out, x, [2, 2], ins, wire=wire)
        if rank == 1:
            missing = out[1]  # rows 0-1 come from rank 0, which sent one: row 1 never arrives
            if wire == "raw":  # the caller's own memory, as with torch.distributed: left as it was
                assert bool((missing == 7.0).all()), (wire, missing)
            else:
                assert bool(missing.isnan().all()), (wire, "a row that never arrived decoded to", missing)
            assert bool(torch.isfinite(out[[0, 2, 3]]).all()), wire


def test_rows_that_never_arrive_decode_to_nan(seed):
    run_distributed(_unreceived_rows_body, 2, seed, timeout_s=60, pg_timeout_s=20)


def _raw_drop_in_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all_single

    g = torch.Generator().manual_seed(seed * 31 + rank)
    # Only rank 0 passes a non-contiguous input (every other column of a wider tensor).
    wide = torch.randn(4, 2 * H, generator=g)
    x = wide[:, ::2] if rank == 0 else wide[:, :H].contiguous()
    out = torch.empty(4, H)
    all_to_all_single(out, x, wire="raw")
    assert_same_bits(out, reference_exchange(x.contiguous(), 4, None, None), f"non-contiguous, rank {rank}")
    # In place: output is input (rank 0 sends 2 rows to itself and 4 to rank 1, which sends 4 back).
    splits = [2, 4] if rank == 0 else [4, 2]  # both the input and the output splits
    for wire in ("raw", "bf16", "mxfp4"):
        x = torch.randn(6, H, generator=g)
        want = reference_exchange(qdq(x, wire, torch.float32), 6, splits, splits)
        all_to_all_single(x, x, splits, splits, wire=wire)
        assert_same_bits(x, want, f"in place, wire {wire}, rank {rank}")
    # numpy integer split sizes, a list of them or an array.
    for ins in (np.array([1, 3]), [np.int64(1), np.int32(3)]):
        x = torch.randn(4, H, generator=g)
        outs = np.array([1, 1]) if rank == 0 else [np.int64(3), np.int64(3)]
        out = torch.empty(int(sum(outs)), H)
        all_to_all_single(out, x, outs, ins, wire="mxfp4")
        want = reference_exchange(qdq(x, "mxfp4", torch.float32), out.shape[0], [int(v) for v in outs],
                                  [int(v) for v in ins])
        assert_same_bits(out, want, f"numpy splits {type(ins).__name__}, rank {rank}")


def test_raw_wire_takes_what_torch_takes_and_in_place_exchanges(seed):
    run_distributed(_raw_drop_in_body, 2, seed, timeout_s=60, pg_timeout_s=20)


@pytest.mark.parametrize("splits", [[True, False], np.array([1.0, 1.0]), [1.5, 0.5]])
def test_bool_and_float_split_sizes_are_refused(splits):
    from mxa2a.comm.all_to_all import _resolve_splits

    with pytest.raises(TypeError, match="input_split_sizes must be None or a list of 2 ints"):
        _resolve_splits("input_split_sizes", splits, 2, "input", 2)


def _dying_peer_rank(rank: int, world: int, port: int, pg_timeout_s: float, results) -> None:
    import datetime
    import os
    import time

    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=pg_timeout_s))
    from mxa2a.comm import all_to_all_single

    if rank == world - 1:
        os._exit(1)  # dies before its first (checked) call
    start = time.monotonic()
    try:
        all_to_all_single(torch.empty(8, H), torch.randn(8, H), wire="mxfp4")
        results.put((rank, "returned", time.monotonic() - start))
    except RuntimeError as e:
        results.put((rank, str(e)[:200], time.monotonic() - start))
    results.close()
    results.join_thread()
    time.sleep(pg_timeout_s)  # survivors stay alive after their error, as a training script's might
    os._exit(0)


def test_every_survivor_of_a_dead_peer_raises_long_before_the_timeout():
    """4 ranks, rank 3 dies: each survivor's checked call must fail fast. The header used to be an
    all_gather (a ring in gloo): rank 1, not next to rank 3, waited for the whole group timeout."""
    import time

    import torch.multiprocessing as mp
    from dist_testing import free_port

    world, pg_timeout_s = 4, 30.0
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_dying_peer_rank, args=(r, world, port, pg_timeout_s, results), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    got = {}
    deadline = time.monotonic() + 60
    while len(got) < world - 1 and time.monotonic() < deadline:
        try:
            rank, msg, seconds = results.get(timeout=1)
            got[rank] = (msg, seconds)
        except Exception:  # queue.Empty
            pass
    for p in procs:
        p.kill()
        p.join()
    assert sorted(got) == list(range(world - 1)), f"survivors that never reported: {got}"
    for rank, (msg, seconds) in got.items():
        assert msg != "returned" and seconds < pg_timeout_s / 3, (rank, msg, seconds)


def _tagged_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all_single

    g = torch.Generator().manual_seed(seed + rank)
    for wire in ("mxfp4", "fp8", "bf16", "raw"):
        for chunks in (1, 2):
            x = torch.randn(4, H, generator=g)
            out = torch.empty(4, H)
            all_to_all_single(out, x, wire=wire, chunks=chunks, check="tagged")  # checked: the header
            assert_same_bits(out, reference_exchange(qdq(x, wire, torch.float32), 4, None, None),
                             f"tagged {wire} chunks {chunks}, rank {rank}")
            # Item 1: rank 0 sends rank 1 one row fewer than it expects: rank 1 raises.
            ins = [2, 1] if rank == 0 else [2, 2]
            x = torch.randn(sum(ins), H, generator=g)
            out = torch.empty(4, H)
            if rank == 1:
                with pytest.raises(RuntimeError, match=r"rows expected from rank\(s\) \[0\] did not arrive"):
                    all_to_all_single(out, x, [2, 2], ins, wire=wire, chunks=chunks, check="tagged")
            else:
                all_to_all_single(out, x, [2, 2], ins, wire=wire, chunks=chunks, check="tagged")
    # Item 2: after both formats were verified, rank 1 switches to scale_mode "floor" (same row bytes,
    # so gloo moves the bytes) while rank 0 keeps "rceil": both receivers raise.
    for mode in ("rceil", "floor"):
        all_to_all_single(torch.empty(4, H), torch.randn(4, H), wire="mxfp4", scale_mode=mode, check="tagged")
    mode = "floor" if rank == 1 else "rceil"
    with pytest.raises(RuntimeError, match="did not arrive with this call's tag"):
        all_to_all_single(torch.empty(4, H), torch.randn(4, H), wire="mxfp4", scale_mode=mode, check="tagged")


def test_tagged_check_raises_on_the_receiver_of_rows_that_do_not_match(seed):
    run_distributed(_tagged_body, 2, seed, timeout_s=90, pg_timeout_s=20)


def _tagged_cuda_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all_single

    g = torch.Generator(device="cuda").manual_seed(seed)
    for wire in ("mxfp4", "fp8", "bf16", "raw"):
        for chunks in (1, 2):
            x = torch.randn(64, 7168, generator=g, device="cuda", dtype=torch.bfloat16)
            out = torch.empty_like(x)
            for async_op in (False, True, False):  # the first call checks the header, later ones the tags
                work = all_to_all_single(out, x, wire=wire, chunks=chunks, check="tagged", async_op=async_op)
                if work is not None:
                    work.wait()
            want = qdq(x.cpu(), wire, torch.bfloat16)  # a group of one: every row comes back to this rank
            assert_same_bits(out.cpu(), want, f"tagged {wire} chunks {chunks} on CUDA")
    torch.cuda.synchronize()  # a failed tag would surface here as a device-side assert


@pytest.mark.gpu
def test_tagged_check_passes_on_a_gpu(seed):
    run_distributed(_tagged_cuda_body, 1, seed, backend="nccl", timeout_s=300)
