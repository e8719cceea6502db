"""OAT (distribution-level alignment) and CMCL (instance-level alignment)."""
import pytest
import torch

from recgoat_dist.ot import OAT, cmcl_loss, select_landmarks, sinkhorn

MODALITIES = ("text", "visual")
B, D, L = 48, 16, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed=0, b=B, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    emb = {m: torch.randn(b, D, generator=g, dtype=dtype) for m in MODALITIES}
    ids = torch.randn(b, D, generator=g, dtype=dtype)
    return emb, ids


def _model(**kw):
    torch.manual_seed(0)
    model = OAT(MODALITIES, D, eps=0.1, num_landmarks=L, **kw)
    with torch.no_grad():  # a non-trivial residual, so the tests do not pass by T = T0
        for p in model.residual.values():
            p.normal_(0, 0.5)
        model.gamma_logits.copy_(torch.tensor([0.3, -0.2]))
    return model


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_adapted_plan_is_a_valid_coupling_and_gamma_normalised(use_landmarks):
    model = _model()
    emb, ids = _batch()
    landmarks = ids[select_landmarks(ids, L, torch.Generator().manual_seed(0))] if use_landmarks else None
    out = model(emb, ids, landmarks)
    for m in MODALITIES:
        plan = out.plans[m]
        assert plan.shape == (B, L if use_landmarks else B) and bool((plan >= 0).all())
        torch.testing.assert_close(plan.sum(1), torch.full((B,), 1.0 / B), rtol=0, atol=1e-6)
        assert out.transported[m].shape == (B, D)
    assert abs(sum(g.item() for g in out.gamma.values()) - 1.0) < 1e-6
    fused = ids + sum(out.gamma[m] * out.transported[m] for m in MODALITIES)
    torch.testing.assert_close(out.fused, fused)
    assert out.loss.dim() == 0 and out.loss.item() > 0


def test_zero_residual_gives_the_sinkhorn_plan():
    model = OAT(MODALITIES, D, eps=0.1, num_landmarks=L)  # residual initialised at zero
    emb, ids = _batch(dtype=torch.float64)
    model = model.double()
    out = model(emb, ids)
    T0 = sinkhorn(emb["text"], ids, eps=0.1, cost="cosine", tol=1e-5, max_iter=200, return_plan=True).plan
    torch.testing.assert_close(out.plans["text"], T0, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_forward_with_landmarks_equals_transport(training):
    model = _model()
    emb, ids = _batch()
    landmarks = ids[select_landmarks(ids, L, torch.Generator().manual_seed(1))]
    model.train(training)
    out = model(emb, ids, landmarks)
    for m in MODALITIES:
        torch.testing.assert_close(model.transport(m, emb[m], landmarks), out.transported[m], rtol=0, atol=1e-6)


def test_transport_is_blocked_and_block_independent():
    """Cold-start catalog items: any N, memory O(batch_size L); blocks do not change results."""
    model = _model()
    emb, ids = _batch()
    landmarks = ids[:L]
    model.eval()
    model(emb, ids, landmarks)  # sets the landmark potentials
    catalog = torch.randn(1000, D, generator=torch.Generator().manual_seed(5))
    whole = model.transport("visual", catalog, landmarks, batch_size=1 << 16)
    blocked = model.transport("visual", catalog, landmarks, batch_size=37)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)
    # each item's result depends on that item only
    torch.testing.assert_close(model.transport("visual", catalog[:5], landmarks), whole[:5], rtol=0, atol=1e-6)


def test_transport_needs_potentials_and_state_dict_keeps_them():
    model = _model()
    emb, ids = _batch()
    with pytest.raises(RuntimeError):
        model.transport("text", emb["text"], ids[:L])
    model(emb, ids, ids[:L])
    clone = _model()
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        clone.transport("text", emb["text"], ids[:L]), model.transport("text", emb["text"], ids[:L])
    )
    clone.fit_potentials(emb, ids[:L])
    assert bool(clone.potentials_ready.all())


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_gradients_reach_residual_gamma_and_inputs(use_landmarks):
    model = OAT(MODALITIES, D, eps=0.1, num_landmarks=L)  # zero residual: gradients must still flow
    emb, ids = _batch()
    emb = {m: e.requires_grad_() for m, e in emb.items()}
    ids.requires_grad_()
    landmarks = ids[:L] if use_landmarks else None
    out = model(emb, ids, landmarks)
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(9))
    ((out.fused - target) ** 2).mean().add(out.loss).backward()
    for tensor in [model.gamma_logits, ids, *emb.values(), *model.residual.values()]:
        assert tensor.grad is not None and float(tensor.grad.abs().sum()) > 0


def test_select_landmarks():
    ids = torch.randn(500, D, generator=torch.Generator().manual_seed(0))
    idx = select_landmarks(ids, 64, torch.Generator().manual_seed(3))
    assert idx.shape == (64,) and len(set(idx.tolist())) == 64
    assert torch.equal(idx, select_landmarks(ids, 64, torch.Generator().manual_seed(3)))
    assert sorted(select_landmarks(ids[:10], 64).tolist()) == list(range(10))
    assert len(set(select_landmarks(torch.zeros(20, D), 5).tolist())) == 5  # duplicates


def test_cmcl_pulls_views_of_the_same_item_together():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 32, generator=g)
    views = [base + 0.1 * torch.randn(64, 32, generator=g) for _ in range(3)]
    aligned = cmcl_loss(views)
    perm = [torch.randperm(64, generator=g) for _ in range(2)]
    shuffled = cmcl_loss([views[0], views[1][perm[0]], views[2][perm[1]]])
    assert aligned.item() < 0.5 * shuffled.item()
    assert shuffled.item() > 3.0  # about log(64) when views carry no pairing

    # Minimising it pulls matched views together.
    free = [torch.randn(64, 32, generator=g, requires_grad=True) for _ in range(3)]
    opt = torch.optim.Adam(free, lr=0.05)

    def matched_cosine():
        z = [torch.nn.functional.normalize(v.detach(), dim=1) for v in free]
        return float(((z[0] * z[1]).sum(1) + (z[0] * z[2]).sum(1) + (z[1] * z[2]).sum(1)).mean() / 3)

    before, loss0 = matched_cosine(), cmcl_loss(free).item()
    for _ in range(100):
        opt.zero_grad()
        cmcl_loss(free).backward()
        opt.step()
    assert cmcl_loss(free).item() < loss0 and matched_cosine() > before + 0.3


def test_cmcl_is_symmetric_and_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    u, v, w = (torch.randn(8, 4, generator=g) for _ in range(3))
    assert torch.allclose(cmcl_loss([u, v, w]), cmcl_loss([w, u, v]))
    zu, zv = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
    logits = zu @ zv.T / 0.2
    expected = 0.5 * (-logits.log_softmax(1).diag().mean() - logits.log_softmax(0).diag().mean())
    torch.testing.assert_close(cmcl_loss([u, v]), expected)
    with pytest.raises(ValueError):
        cmcl_loss([u])


def test_free_fusion_starts_at_the_simplex_and_learns_the_content_weight():
    """``fusion="free"``: gamma is the parameter itself (its sum is not held at 1), it starts
    where the simplex starts (1/M each, the same fused vectors) and it is trained."""
    from recgoat_dist.config import ConfigError, load_config

    emb, ids = _batch()
    landmarks = ids[select_landmarks(ids, L, torch.Generator().manual_seed(0))]
    simplex, free = OAT(MODALITIES, D, num_landmarks=L), OAT(MODALITIES, D, num_landmarks=L, fusion="free")
    torch.testing.assert_close(simplex(emb, ids, landmarks).fused, free(emb, ids, landmarks).fused, rtol=0, atol=0)
    with torch.no_grad():
        free.gamma_logits.copy_(torch.tensor([0.2, 0.9]))
    out = free(emb, ids, landmarks)
    assert [float(out.gamma[m]) for m in MODALITIES] == pytest.approx([0.2, 0.9])
    torch.testing.assert_close(out.fused, ids + 0.2 * out.transported["text"] + 0.9 * out.transported["visual"])
    out.fused.sum().backward()
    assert free.gamma_logits.grad is not None and bool((free.gamma_logits.grad != 0).all())
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        OAT(MODALITIES, D, fusion="sum")
    assert load_config(None, []).model.fusion == "simplex"
    with pytest.raises(ConfigError, match=r"model\.fusion.*'sum' is not one of simplex, free"):
        load_config(None, ["model.fusion=sum"])
    from recgoat_dist.model.recgoat import build_model
    model = build_model(load_config(None, ["model.fusion=free"]).model, 5, 6, {"text": 4, "visual": 4})
    assert model.oat.fusion == "free" and model.oat.gamma_logits.tolist() == [0.5, 0.5]


def test_training_steps_warm_start_from_the_stored_potentials():
    """A training forward with landmarks starts Sinkhorn from the stored landmark potentials; its
    loss and transport equal those of a module that solves from scratch (same parameters)."""
    emb, ids = _batch(dtype=torch.float64)
    landmarks = ids[select_landmarks(ids, L, torch.Generator().manual_seed(1))]
    warm, cold = _model().double(), _model().double()
    for model in (warm, cold):
        model.tol = 1e-10
    warm(_batch(seed=5, dtype=torch.float64)[0], ids, landmarks)      # stores potentials from another batch
    assert bool(warm.potentials_ready.all()) and not bool(cold.potentials_ready.any())
    out_warm, out_cold = warm(emb, ids, landmarks), cold(emb, ids, landmarks)
    torch.testing.assert_close(out_warm.loss, out_cold.loss, rtol=1e-9, atol=0)
    for m in MODALITIES:
        torch.testing.assert_close(out_warm.transported[m], out_cold.transported[m], rtol=0, atol=1e-8)
