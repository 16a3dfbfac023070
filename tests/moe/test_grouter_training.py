"""Making a Grouter: distillation, expert folding (co-activation grouping), expert tuning."""

import pytest
import torch
import torch.nn.functional as F

from mxa2a.moe import grouter_training as gt
from mxa2a.moe.grouter import Grouter, GrouterConfig

V = 64


def small_grouter(num_experts=8, top_k=2, **overrides) -> Grouter:
    cfg = dict(vocab_size=V, num_experts=num_experts, top_k=top_k, d_model=32, n_layers=1, n_heads=2,
               max_seq_len=32)
    cfg.update(overrides)
    return Grouter(GrouterConfig(**cfg))


def token_batches(n, b=8, s=16):
    return [torch.randint(0, V, (b, s)) for _ in range(n)]


# --- distillation ---------------------------------------------------------------------------------

class StandInRouter(torch.nn.Module):
    """A 'trained MoE router' stand-in: token embedding + linear scores [T, E]."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(V, 16)
        self.lin = torch.nn.Linear(16, num_experts)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return 3.0 * self.lin(self.emb(ids)).reshape(-1, self.lin.out_features)  # [B*S, E]


def test_distillation_kl_is_kl_teacher_to_student(seed):
    student, teacher = torch.randn(5, 3, 8), torch.randn(5, 3, 8)
    expected = F.kl_div(F.log_softmax(student, -1).reshape(-1, 8), F.log_softmax(teacher, -1).reshape(-1, 8),
                        log_target=True, reduction="batchmean")
    torch.testing.assert_close(gt.distillation_kl(student, teacher), expected)
    assert gt.distillation_kl(teacher + 7.0, teacher).abs() < 1e-6  # softmax is shift-invariant
    # hand-checked: p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3)
    p_logits = torch.zeros(1, 2)
    q_logits = torch.log(torch.tensor([[0.25, 0.75]]))
    hand = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2.0 / 3.0))
    torch.testing.assert_close(gt.distillation_kl(q_logits, p_logits), hand)
    with pytest.raises(ValueError, match="teacher logits"):
        gt.distillation_kl(torch.randn(4, 8), torch.randn(4, 6))


def test_distillation_lowers_the_kl_to_the_teacher(seed):
    teacher = StandInRouter(8)
    grouter = small_grouter()
    train, held_out = token_batches(6), token_batches(2)
    before = gt.evaluate_kl(grouter, teacher, held_out)
    lines = []
    losses = gt.distill_grouter(grouter, teacher, train, steps=30, lr=3e-3, log_every=10, log=lines.append)
    after = gt.evaluate_kl(grouter, teacher, held_out)
    assert len(losses) == 30 and len(lines) == 3 and "step 30/30" in lines[-1]
    assert after < 0.25 * before, (before, after)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is only read


def test_distillation_from_an_moe_model_layer(seed):
    from mxa2a.moe.layer import MoELayerConfig
    from mxa2a.moe.model import MoEModel, MoEModelConfig

    model = MoEModel(MoEModelConfig(MoELayerConfig(hidden=32, d_expert=16, num_experts=8, top_k=2),
                                    vocab_size=V, seq_len=16, n_layers=2, n_heads=2))
    teacher = gt.model_router_teacher(model, layer=1)
    ids = torch.randint(0, V, (2, 16))
    assert torch.equal(teacher(ids), model.eval()(ids).records[1].logits)
    grouter = small_grouter()
    before = gt.evaluate_kl(grouter, teacher, [ids])
    gt.distill_grouter(grouter, teacher, [ids], steps=5, lr=3e-3, log_every=0)
    assert gt.evaluate_kl(grouter, teacher, [ids]) < before
    with pytest.raises(ValueError, match="MoE layers"):
        gt.model_router_teacher(model, layer=2)(ids)


def test_distillation_rejects_a_one_shot_iterator_that_runs_out(seed):
    grouter, teacher = small_grouter(), StandInRouter(8)
    with pytest.raises(ValueError, match="ran out after 2 of 5"):
        gt.distill_grouter(grouter, teacher, iter(token_batches(2)), steps=5, lr=1e-3, log_every=0)
    with pytest.raises(ValueError, match="teacher logits"):
        gt.distill_grouter(grouter, StandInRouter(6), token_batches(1), steps=1, lr=1e-3, log_every=0)
    with pytest.raises(ValueError, match="lr"):
        gt.distill_grouter(grouter, teacher, token_batches(1), steps=1, lr=0.0)


# --- expert folding -------------------------------------------------------------------------------

def test_coactivation_affinity_counts_token_pairs():
    ids = torch.tensor([[0, 1], [1, 0], [1, 2], [2, 3], [3, 2]])
    a = gt.coactivation_affinity(ids, 5)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for x, y, n in ((0, 1, 2), (1, 2, 1), (2, 3, 2)):
        expected[x, y] = expected[y, x] = n
    assert torch.equal(a, expected)


def test_coactivation_affinity_is_rtr_with_zero_diagonal(seed):
    e, k = 10, 3
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(50)])
    r = torch.zeros(50, e, dtype=torch.int64).scatter_(1, ids, 1)  # one-hot top-k map
    expected = r.T @ r
    expected.fill_diagonal_(0)
    assert torch.equal(gt.coactivation_affinity(ids, e), expected)
    # any integer dtype, any leading shape
    assert torch.equal(gt.coactivation_affinity(ids.view(5, 10, k).to(torch.int16), e), expected)


def test_coactivation_affinity_sums_over_chunks(seed, monkeypatch):
    ids = torch.stack([torch.randperm(6)[:2] for _ in range(40)])
    whole = gt.coactivation_affinity(ids, 6)
    monkeypatch.setattr(gt, "_AFFINITY_CHUNK", 7)
    assert torch.equal(gt.coactivation_affinity(ids, 6), whole)


def test_group_sizes_put_the_remainder_in_the_first_groups():
    assert gt.fold_group_sizes(10, 4) == [3, 3, 2, 2]
    assert gt.fold_group_sizes(8, 4) == [2, 2, 2, 2]
    assert gt.fold_group_sizes(7, 7) == [1] * 7
    assert gt.fold_group_sizes(64, 6) == [11, 11, 11, 11, 10, 10]


def test_fold_groups_hand_checked_example():
    # E_S = 5 -> E_T = 2: sizes [3, 2]. Group 0 seeds at 0; A[0] favours 3 (5); then A[0]+A[3] favours
    # 4 (0 + 4) over 1 (1 + 0) and 2 (0 + 0). Group 1 is what is left, seeded by 1.
    a = torch.zeros(5, 5, dtype=torch.int64)
    for x, y, n in ((0, 3, 5), (0, 1, 1), (3, 4, 4), (1, 2, 6), (2, 4, 3)):
        a[x, y] = a[y, x] = n
    a[2, 2] = 100  # the diagonal is ignored
    assert gt.fold_groups(a, 2) == [(0, 3, 4), (1, 2)]
    # E_T = 3: sizes [2, 2, 1]: {0, 3}, then seed 1 takes 2 (6), and 4 is left alone
    assert gt.fold_groups(a, 3) == [(0, 3), (1, 2), (4,)]


def test_fold_groups_break_ties_by_lowest_expert():
    a = torch.ones(6, 6)  # everything equally affine
    assert gt.fold_groups(a, 2) == [(0, 1, 2), (3, 4, 5)]
    assert gt.fold_groups(torch.zeros(5, 5), 2) == [(0, 1, 2), (3, 4)]


def test_fold_groups_partition_every_source_expert_once(seed):
    e_s, e_t = 13, 5
    x = torch.randint(0, 20, (e_s, e_s))
    groups = gt.fold_groups(x + x.T, e_t)
    assert [len(g) for g in groups] == gt.fold_group_sizes(e_s, e_t) == [3, 3, 3, 2, 2]
    assert sorted(s for g in groups for s in g) == list(range(e_s))
    seeds = [g[0] for g in groups]
    assert seeds == sorted(seeds) and seeds[0] == 0  # each seed is the lowest expert still unused
    for t, g in enumerate(groups):
        assert g[0] == min(s for h in groups[t:] for s in h)
    m = gt.folding_matrix(groups, e_s)
    assert torch.equal(m.sum(0), torch.ones(e_s)) and m.shape == (e_t, e_s)


def test_folded_logits_equal_summed_source_logits_with_a_different_top_k(seed):
    source = small_grouter(num_experts=12, top_k=2).eval()
    x = torch.randint(0, 50, (12, 12))
    groups = gt.fold_groups(x + x.T, 5)  # sizes [3, 3, 2, 2, 2]
    folded = gt.fold_grouter(source, groups, target_top_k=3)
    assert folded.config.num_experts == 5 and folded.config.top_k == 3
    assert source.config.num_experts == 12  # the source is untouched
    ids = torch.randint(0, V, (2, 16))
    src = source(ids)
    summed = torch.stack([src[..., list(g)].sum(-1) for g in groups], dim=-1)
    torch.testing.assert_close(folded(ids), summed, rtol=1e-5, atol=1e-6)
    topk_ids, gates = folded.route(ids)
    assert topk_ids.shape == (2, 16, 3) and int(topk_ids.max()) < 5
    torch.testing.assert_close(gates.sum(-1), torch.full((2, 16), 2.5))
    # everything but the score layer is copied as is
    fs, ss = folded.state_dict(), source.state_dict()
    assert all(torch.equal(fs[n], ss[n]) for n in ss if n != "score.weight")


def test_fold_experts_counts_affinity_from_routing(seed):
    source = small_grouter(num_experts=10, top_k=3).eval()
    batches = token_batches(3)
    result = gt.fold_experts(source, batches, 4, target_top_k=1)
    expected = sum(gt.coactivation_affinity(source.route(b)[0], 10) for b in batches)
    assert torch.equal(result.affinity, expected)
    assert list(result.groups) == gt.fold_groups(expected, 4)
    assert [len(g) for g in result.groups] == [3, 3, 2, 2]
    assert result.grouter.config.top_k == 1 and result.grouter.config.num_experts == 4


def test_folding_rejects_bad_input():
    source = small_grouter(num_experts=6, top_k=2)
    with pytest.raises(ValueError, match="E_T=7.*E_S=6"):
        gt.fold_group_sizes(6, 7)
    with pytest.raises(ValueError, match="E_T"):
        gt.fold_experts(source, token_batches(1), 7)
    with pytest.raises(ValueError, match="target_top_k"):
        gt.fold_grouter(source, [(0, 1, 2), (3, 4, 5)], target_top_k=3)
    with pytest.raises(ValueError, match="exactly once"):
        gt.folding_matrix([(0, 1, 2), (2, 4, 5)], 6)
    with pytest.raises(ValueError, match="symmetric"):
        gt.fold_groups(torch.triu(torch.ones(4, 4)), 2)
    with pytest.raises(ValueError, match="square"):
        gt.fold_groups(torch.ones(4, 3), 2)
    with pytest.raises(ValueError, match="distinct"):
        gt.coactivation_affinity(torch.tensor([[1, 1]]), 4)
    with pytest.raises(ValueError, match="num_experts=4"):
        gt.coactivation_affinity(torch.tensor([[1, 4]]), 4)
    with pytest.raises(TypeError, match="integer"):
        gt.coactivation_affinity(torch.tensor([[1.0, 2.0]]), 4)


# --- expert tuning --------------------------------------------------------------------------------

def skewed_setup():
    """A Grouter whose routing piles onto experts 0 and 1, fed Zipf-distributed tokens."""
    g = small_grouter(num_experts=8, top_k=2)
    zipf = 1.0 / torch.arange(1, V + 1).float() ** 1.2
    batches = [torch.multinomial(zipf, 8 * 16, replacement=True).view(8, 16) for _ in range(6)]
    with torch.no_grad():
        h = torch.cat([g.features(b).reshape(-1, 32) for b in batches]).mean(0)
        g.score.weight.normal_(0, 0.5)
        g.score.weight[:2] += 4 * h / h.norm()  # experts 0, 1 aligned with the mean feature
    return g, batches


def test_routing_max_violation_is_max_over_mean_count(seed):
    g, batches = skewed_setup()
    ids = torch.cat([g.route(b)[0].reshape(-1) for b in batches])
    c = torch.bincount(ids, minlength=8).double()
    assert gt.routing_max_violation(g, batches) == pytest.approx(float(c.max() / c.mean()), rel=1e-6)


def test_tuning_lowers_maxvio_and_changes_only_the_score_layer(seed):
    g, batches = skewed_setup()
    before = {n: t.clone() for n, t in g.state_dict().items()}
    lines = []
    # 4x alignment and 60 steps: over 300 seeds MaxVio before >= 2.32 and after/before <= 0.48 (with 3x
    # and 30 steps one seed in CI gave MaxVio 1.96 before, failing the skew precondition).
    result = gt.tune_score_layer(g, batches, steps=60, lr=3e-2, log_every=20, log=lines.append)
    assert result.maxvio_before > 2.0, result  # the setup really is skewed
    assert result.maxvio_after < 0.6 * result.maxvio_before, result
    assert result.maxvio_after == gt.routing_max_violation(g, batches)
    assert len(result.losses) == 60 and result.losses[-1] < result.losses[0]
    assert "MaxVio before" in lines[0] and "MaxVio after" in lines[-1]
    after = g.state_dict()
    assert not torch.equal(after["score.weight"], before["score.weight"])
    assert all(torch.equal(after[n], before[n]) for n in before if n != "score.weight")
    assert all(p.requires_grad for p in g.parameters())  # flags restored
