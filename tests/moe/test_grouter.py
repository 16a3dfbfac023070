"""The Grouter network: causal routing, top-k gates, frozen use, save/load, bad input."""

import pytest
import torch

from mxa2a.moe.grouter import Grouter, GrouterConfig, load_grouter, save_grouter, topk_gates


def small_config(**overrides) -> GrouterConfig:
    base = dict(vocab_size=50, num_experts=8, top_k=2, d_model=32, n_layers=2, n_heads=4, max_seq_len=24)
    base.update(overrides)
    return GrouterConfig(**base)


def test_gates_are_softmax_of_topk_logits_times_scaling_factor(seed):
    g = Grouter(small_config(top_k=3, scaling_factor=2.5)).freeze()
    ids = torch.randint(0, 50, (3, 20))
    topk_ids, gates = g.route(ids)
    logits = g(ids)
    assert topk_ids.shape == gates.shape == (3, 20, 3)
    assert topk_ids.dtype == torch.int64 and gates.dtype == torch.float32
    values, expected_ids = torch.topk(logits, 3, dim=-1)
    assert torch.equal(topk_ids, expected_ids)
    assert torch.equal(gates, torch.softmax(values, dim=-1) * 2.5)
    torch.testing.assert_close(gates.sum(-1), torch.full((3, 20), 2.5))
    # the chosen experts are the largest logits, in descending order
    assert bool((logits.gather(-1, topk_ids).diff(dim=-1) <= 0).all())


def test_topk_gates_sum_to_any_scaling_factor(seed):
    logits = torch.randn(7, 16) * 4
    for sf in (1.0, 2.5, 0.3):
        ids, gates = topk_gates(logits, 4, sf)
        torch.testing.assert_close(gates.sum(-1), torch.full((7,), sf))
        assert bool((ids.sort(-1).values.diff(dim=-1) > 0).all())  # k distinct experts per token


def test_causal_routing_of_a_token_ignores_later_tokens(seed):
    g = Grouter(small_config(causal=True)).freeze()
    ids = torch.randint(0, 50, (2, 20))
    t = 9
    changed = ids.clone()
    changed[:, t + 1:] = torch.randint(0, 50, (2, 20 - t - 1))
    changed[:, t + 1] = (ids[:, t + 1] + 1) % 50  # surely different at the first later position
    a, b = g(ids), g(changed)
    assert torch.equal(a[:, :t + 1], b[:, :t + 1])
    assert not torch.equal(a[:, t + 1:], b[:, t + 1:])
    # the prefix alone routes the same way (up to float reassociation of a shorter sequence)
    torch.testing.assert_close(g(ids[:, :t + 1]), a[:, :t + 1], rtol=1e-5, atol=1e-5)


def test_bidirectional_routing_depends_on_later_tokens(seed):
    causal = Grouter(small_config(causal=True)).freeze()
    bidir = Grouter(small_config(causal=False)).freeze()
    bidir.load_state_dict(causal.state_dict())  # same weights: only the mask differs
    ids = torch.randint(0, 50, (2, 20))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 50
    a, b = bidir(ids), bidir(changed)
    assert not torch.equal(a[:, :-1], b[:, :-1])  # earlier tokens see the change
    assert not torch.allclose(causal(ids)[:, :-1], a[:, :-1])  # same weights, different routing


def test_unbatched_ids_route_like_a_batch_of_one(seed):
    g = Grouter(small_config()).freeze()
    ids = torch.randint(0, 50, (20,))
    assert torch.equal(g(ids), g(ids[None])[0])
    topk_ids, gates = g.route(ids.to(torch.int32))
    assert topk_ids.shape == (20, 2)
    assert torch.equal(topk_ids, g.route(ids)[0])


def test_save_load_round_trip_gives_equal_outputs(tmp_path, seed):
    cfg = small_config(num_experts=12, top_k=3, causal=False, scaling_factor=1.5, n_layers=1)
    g = Grouter(cfg)
    path = tmp_path / "grouter.pt"
    save_grouter(g, path)
    blob = torch.load(path, weights_only=True)  # a plain dict: config + state_dict, no pickled classes
    assert blob["config"] == cfg.to_dict()
    assert set(blob["state_dict"]) == set(g.state_dict())
    loaded = load_grouter(path)
    assert loaded.config == cfg
    assert not loaded.training
    ids = torch.randint(0, 50, (2, 16))
    assert torch.equal(loaded(ids), g.eval()(ids))
    ids_a, gates_a = loaded.route(ids)
    ids_b, gates_b = g.route(ids)
    assert torch.equal(ids_a, ids_b) and torch.equal(gates_a, gates_b)
    assert torch.equal(Grouter.load(path)(ids), loaded(ids))


def test_freeze_stops_gradients_and_route_builds_no_graph(seed):
    g = Grouter(small_config()).freeze()
    assert not g.training
    assert all(not p.requires_grad for p in g.parameters())
    h = Grouter(small_config())
    _, gates = h.route(torch.randint(0, 50, (1, 8)))
    assert not gates.requires_grad


def test_bad_input_is_rejected_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="top_k"):
        GrouterConfig(vocab_size=10, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="n_heads"):
        GrouterConfig(vocab_size=10, num_experts=4, top_k=2, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GrouterConfig(vocab_size=0, num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="unknown keys"):
        GrouterConfig.from_dict({"vocab_size": 10, "num_experts": 4, "top_k": 2, "hidden": 3})
    g = Grouter(small_config())
    with pytest.raises(TypeError, match="integer"):
        g.route(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        g.route([[1, 2, 3]])
    with pytest.raises(ValueError, match="vocab_size"):
        g.route(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="vocab_size"):
        g.route(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        g.route(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[S\] or \[B, S\]"):
        g.route(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="top_k"):
        topk_gates(torch.randn(3, 4), 5)
    with pytest.raises(TypeError, match="floating"):
        topk_gates(torch.ones(3, 4, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="GrouterConfig"):
        Grouter({"vocab_size": 10})
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a Grouter file"):
        load_grouter(other)


def _saved(tmp_path, **overrides):
    g = Grouter(small_config(n_layers=1, **overrides))
    path = tmp_path / "grouter.pt"
    save_grouter(g, path)
    return g, path


def _resave(path, edit):
    blob = torch.load(path, weights_only=True)
    edit(blob)
    torch.save(blob, path)


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_empty_or_truncated_checkpoint_names_the_file(tmp_path, keep):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match=r"grouter\.pt.*(empty|truncated)"):
        load_grouter(path)


def test_missing_key_and_string_config_are_named(tmp_path):
    _, path = _saved(tmp_path)
    _resave(path, lambda b: b.pop("state_dict"))
    with pytest.raises(ValueError, match=r"grouter\.pt.*lacks the keys \['state_dict'\]"):
        load_grouter(path)
    _, path = _saved(tmp_path)
    _resave(path, lambda b: b.update(config="vocab_size=50"))
    with pytest.raises(ValueError, match=r"grouter\.pt.*'config' must be a dict.*got str"):
        load_grouter(path)
    _, path = _saved(tmp_path)
    _resave(path, lambda b: b["config"].update(top_k=0))
    with pytest.raises(ValueError, match=r"grouter\.pt.*invalid Grouter config.*top_k"):
        load_grouter(path)


def test_shapes_are_checked_against_the_config_before_allocating(tmp_path):
    # 10**13 x 32 fp32 embedding rows would be 1.3 PB: the load must fail on the shapes, not allocate.
    _, path = _saved(tmp_path)
    _resave(path, lambda b: b["config"].update(vocab_size=10**13))
    with pytest.raises(ValueError, match=r"tok_emb\.weight \(50, 32\) \(config: \(10000000000000, 32\)\)"):
        load_grouter(path)
    _, path = _saved(tmp_path)
    _resave(path, lambda b: b["state_dict"].pop("score.weight"))
    with pytest.raises(ValueError, match=r"missing \['score.weight'\]"):
        load_grouter(path)


def test_flipped_tensor_bytes_fail_the_checksum(tmp_path, seed):
    g, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(g.score.weight.detach().numpy().tobytes())  # stored uncompressed in the zip
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"grouter\.pt.*SHA-256.*changed or damaged"):
        load_grouter(path)


def test_version_1_checkpoint_without_checksum_loads_with_a_warning(tmp_path, seed):
    g, path = _saved(tmp_path)
    _resave(path, lambda b: (b.pop("checksum"), b.update(version=1)))
    with pytest.warns(UserWarning, match="without a checksum"):
        loaded = load_grouter(path)
    ids = torch.randint(0, 50, (2, 8))
    assert torch.equal(loaded(ids), g.eval()(ids))
