"""Pre-dispatch: stored routing equals on-the-fly Grouter routing; id dtype by E; loader; bad input."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mxa2a.moe.grouter import Grouter, GrouterConfig
from mxa2a.moe.predispatch import (HEADER_NAME, TRAILER_BYTES, MicroBatch, PredispatchLoader,
                                   expert_id_dtype, open_predispatched, predispatch)

V = 40


def small_grouter(num_experts=8, top_k=2) -> Grouter:
    return Grouter(GrouterConfig(vocab_size=V, num_experts=num_experts, top_k=top_k, d_model=16, n_layers=1,
                                 n_heads=2, max_seq_len=16)).freeze()


def random_tokens(n=10, s=12, dtype=np.int32) -> np.ndarray:
    return torch.randint(0, V, (n, s)).numpy().astype(dtype)


def test_expert_id_dtype_is_uint8_up_to_256_experts_then_int16():
    assert expert_id_dtype(1) == np.uint8
    assert expert_id_dtype(256) == np.uint8
    assert expert_id_dtype(257) == np.int16
    assert expert_id_dtype(32768) == np.int16
    with pytest.raises(ValueError, match="int16"):
        expert_id_dtype(32769)


@pytest.mark.parametrize("num_experts, top_k, stored", [(8, 2, np.uint8), (300, 3, np.int16)])
def test_stored_plans_equal_on_the_fly_routing(tmp_path, seed, num_experts, top_k, stored):
    grouter = small_grouter(num_experts, top_k)
    tokens = random_tokens()
    data = predispatch(grouter, tokens, tmp_path / "ds", batch_size=4)
    assert data.expert_ids.dtype == stored and data.gates.dtype == np.float32
    assert data.expert_ids.shape == data.gates.shape == (10, 12, top_k)
    assert np.array_equal(data.tokens, tokens) and data.tokens.dtype == np.int32
    loader = PredispatchLoader(data, batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and [len(b.tokens) for b in batches] == [4, 4, 2]
    for mb in batches:
        assert isinstance(mb, MicroBatch)
        assert mb.tokens.dtype == mb.expert_ids.dtype == torch.int64 and mb.gates.dtype == torch.float32
        ids, gates = grouter.route(mb.tokens)  # same micro-batch shapes as the offline pass
        assert torch.equal(mb.expert_ids, ids)
        assert torch.equal(mb.gates, gates)
    all_ids = torch.cat([b.expert_ids for b in batches])
    if num_experts > 256:
        assert int(all_ids.max()) > 255  # the wide ids survived the int16 file
    reopened = open_predispatched(tmp_path / "ds")
    assert np.array_equal(reopened.expert_ids, data.expert_ids)
    assert np.array_equal(reopened.gates, data.gates)
    assert reopened.num_experts == num_experts and reopened.top_k == top_k


def test_header_describes_the_files(tmp_path, seed):
    grouter = small_grouter(12, 3)
    predispatch(grouter, random_tokens(5, 7, np.uint16), tmp_path, batch_size=2)
    header = json.loads((tmp_path / HEADER_NAME).read_text())
    assert header["num_sequences"] == 5 and header["seq_len"] == 7
    assert header["num_experts"] == 12 and header["top_k"] == 3 and header["scaling_factor"] == 2.5
    assert header["tokens"] == {"file": "tokens.bin", "dtype": "uint16", "shape": [5, 7]}
    assert header["expert_ids"] == {"file": "expert_ids.bin", "dtype": "uint8", "shape": [5, 7, 3]}
    assert header["gates"] == {"file": "gates.bin", "dtype": "float32", "shape": [5, 7, 3]}
    assert header["grouter"] == grouter.config.to_dict()
    assert (tmp_path / "expert_ids.bin").stat().st_size == 5 * 7 * 3 + TRAILER_BYTES
    assert len(header["run_id"]) == 32


def test_shuffled_loader_yields_every_sequence_once_with_its_plan(tmp_path, seed):
    grouter = small_grouter()
    tokens = random_tokens(11, 6)
    tokens[:, 0] = np.arange(11)  # the first token names the sequence
    data = predispatch(grouter, tokens, tmp_path, batch_size=5)
    loader = PredispatchLoader(data, batch_size=3, shuffle=True, seed=7)
    first = [int(t) for mb in loader for t in mb.tokens[:, 0]]
    second = [int(t) for mb in loader for t in mb.tokens[:, 0]]
    assert sorted(first) == sorted(second) == list(range(11))
    assert first != second  # a new order each epoch
    for mb in loader:
        rows = mb.tokens[:, 0].numpy()
        assert torch.equal(mb.expert_ids, torch.from_numpy(data.expert_ids[rows].astype(np.int64)))
        assert torch.equal(mb.gates, torch.from_numpy(data.gates[rows]))
    dropped = PredispatchLoader(data, batch_size=3, drop_last=True)
    assert len(dropped) == 3 and all(len(mb.tokens) == 3 for mb in dropped)


def test_predispatch_rejects_bad_input(tmp_path):
    grouter = small_grouter()
    with pytest.raises(TypeError, match="integer token ids"):
        predispatch(grouter, np.zeros((2, 4), dtype=np.float32), tmp_path / "a")
    with pytest.raises(ValueError, match=r"\[N, S\]"):
        predispatch(grouter, np.zeros(8, dtype=np.int32), tmp_path / "b")
    with pytest.raises(ValueError, match="max_seq_len"):
        predispatch(grouter, np.zeros((2, 17), dtype=np.int32), tmp_path / "c")
    with pytest.raises(ValueError, match="vocab_size"):
        predispatch(grouter, np.full((2, 4), V, dtype=np.int32), tmp_path / "d")
    with pytest.raises(ValueError, match="batch_size"):
        predispatch(grouter, np.zeros((2, 4), dtype=np.int32), tmp_path / "e", batch_size=0)
    predispatch(grouter, np.zeros((2, 4), dtype=np.int32), tmp_path / "f")
    with pytest.raises(FileExistsError):
        predispatch(grouter, np.zeros((2, 4), dtype=np.int32), tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="not a pre-dispatched"):
        open_predispatched(tmp_path / "d")  # the failed run left no header
    with open(tmp_path / "f" / "gates.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(ValueError, match="gates.bin"):
        open_predispatched(tmp_path / "f")
    with pytest.raises(TypeError, match="PredispatchedData"):
        PredispatchLoader(np.zeros((2, 4)), batch_size=2)


def _edit_header(path, edit):
    header = json.loads((path / HEADER_NAME).read_text())
    edit(header)
    (path / HEADER_NAME).write_text(json.dumps(header))


def test_header_shapes_that_disagree_are_refused(tmp_path, seed):
    grouter = small_grouter()
    predispatch(grouter, random_tokens(10, 12), tmp_path / "a", batch_size=4)
    predispatch(grouter, random_tokens(20, 12), tmp_path / "b", batch_size=4)
    # tokens of a 20-sequence run with their header entry, beside the 10-sequence run's routing
    (tmp_path / "a" / "tokens.bin").write_bytes((tmp_path / "b" / "tokens.bin").read_bytes())
    _edit_header(tmp_path / "a", lambda h: h["tokens"].update(shape=[20, 12]))
    with pytest.raises(ValueError, match=r"tokens \(tokens.bin\) has shape \[20, 12\].*\[10, 12\]"):
        open_predispatched(tmp_path / "a")
    predispatch(grouter, random_tokens(10, 12), tmp_path / "c", batch_size=4)
    _edit_header(tmp_path / "c", lambda h: h["expert_ids"].update(shape=[10, 6, 4]))  # same bytes
    with pytest.raises(ValueError, match=r"expert_ids \(expert_ids.bin\) has shape \[10, 6, 4\]"):
        open_predispatched(tmp_path / "c")


def test_a_file_from_another_run_is_refused(tmp_path, seed):
    grouter = small_grouter()
    predispatch(grouter, random_tokens(), tmp_path / "a", batch_size=4)
    predispatch(grouter, random_tokens(), tmp_path / "b", batch_size=4)  # same shapes, other tokens
    (tmp_path / "a" / "expert_ids.bin").write_bytes((tmp_path / "b" / "expert_ids.bin").read_bytes())
    with pytest.raises(ValueError, match=r"expert_ids.bin belongs to pre-dispatch run [0-9a-f]{32}"):
        open_predispatched(tmp_path / "a")


@pytest.mark.parametrize("array,value,match", [("expert_ids", 8, r"expert ids outside \[0, 8\)"),
                                               ("gates", np.nan, "1 non-finite gates"),
                                               ("gates", np.inf, "1 non-finite gates")])
def test_bad_ids_or_gates_are_refused_in_their_batch(tmp_path, seed, array, value, match):
    data = predispatch(small_grouter(), random_tokens(), tmp_path, batch_size=4)
    stored = np.memmap(tmp_path / f"{array}.bin", dtype=data.header[array]["dtype"], mode="r+",
                       shape=tuple(data.header[array]["shape"]))
    stored[5, 3, 1] = value  # sequence 5: batch 1 of 4-sequence batches
    stored.flush()
    del stored
    loader = PredispatchLoader(open_predispatched(tmp_path), batch_size=4)
    batches = iter(loader)
    next(batches)
    with pytest.raises(ValueError, match=f"batch 1 of .*{match}"):
        next(batches)


def test_a_file_shrunk_after_opening_is_an_error_not_a_sigbus(tmp_path, seed):
    predispatch(small_grouter(), random_tokens(64, 16), tmp_path, batch_size=16)
    script = textwrap.dedent(f"""
        from mxa2a.moe.predispatch import PredispatchLoader, open_predispatched
        loader = PredispatchLoader(open_predispatched({str(tmp_path)!r}), batch_size=8)
        batches = iter(loader)
        next(batches)
        with open({str(tmp_path / "gates.bin")!r}, "r+b") as f:
            f.truncate(4096)  # the memmap's later pages are gone
        try:
            for _ in batches:
                pass
        except OSError as err:
            print("refused:", err)
        """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"exit {child.returncode} (-7 = SIGBUS): {child.stderr[-2000:]}"
    assert "refused:" in child.stdout and "gates.bin changed after the data set was opened" in child.stdout


def test_version_1_data_set_without_run_id_opens_with_a_warning(tmp_path, seed):
    data = predispatch(small_grouter(), random_tokens(), tmp_path, batch_size=4)
    for name in ("tokens", "expert_ids", "gates"):
        with open(tmp_path / f"{name}.bin", "r+b") as f:
            f.truncate(f.seek(0, 2) - TRAILER_BYTES)
    _edit_header(tmp_path, lambda h: (h.pop("run_id"), h.update(version=1)))
    with pytest.warns(UserWarning, match="without a run id"):
        old = open_predispatched(tmp_path)
    assert np.array_equal(old.expert_ids, data.expert_ids) and np.array_equal(old.gates, data.gates)
