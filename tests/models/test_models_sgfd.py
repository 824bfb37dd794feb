"""SGFD module: teacher layer rule, collapsed teacher, and both loss flavours against direct
transcriptions of the formulas (docs/RELEASED_CODE.md §3.1-3.6; docs/DESIGN.md §3.5)."""

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.errors import ConfigError, DataError
from sgfd_fast.models.sgfd import SGFD, teacher_costs, teacher_widths
from sgfd_fast.testing import products


@pytest.mark.parametrize("d,widths", [
    (4096, [4096, 1024, 256, 128]),   # released: 4096->1024->256->128
    (2048, [2048, 512, 128]),
    (1024, [1024, 256, 128]),
    (768, [768, 192, 128]),
    (512, [512, 128]),
    (384, [384, 128]),                # <= 4D: one layer, the student's shape
    (1000, [1000, 250, 128]),         # released rule crashes (250 -> 4*62 != 250)
    (4095, [4095, 1023, 255, 128]),   # released rule crashes
    (7, [7, 128]),
    (128, [128, 128]),
])
def test_teacher_widths(d, widths):
    assert teacher_widths(d, 128) == widths


def _sgfd(widths=(40, 7, 13), n_items=11, n_labels=5, dim=8, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    feats = {f"m{j}": torch.randn(n_items, w, generator=g) for j, w in enumerate(widths)}
    labels = torch.randint(0, n_labels, (n_items,), generator=g)
    torch.manual_seed(seed)
    return SGFD(feats, labels, n_labels, dim, **kw).double()


def test_layers_follow_the_rule_and_shapes():
    s = _sgfd(widths=(1000, 7), dim=16)
    assert [l.out_features for l in s.teachers[0]] == [250, 62, 16]
    assert [l.in_features for l in s.teachers[1]] == [7]
    assert s.fusion.in_features == 2 * 16 and s.fusion_classifier.out_features == 5
    items = torch.tensor([0, 3, 3, 10])
    for j in range(2):
        t, st = s.teacher(j, items), s.student(j, items)
        assert t.shape == st.shape == (4, 16)
        assert torch.allclose(t.norm(dim=1), torch.ones(4, dtype=t.dtype))
    assert s.student(0).shape == (11, 16)


def _released_head(layers, x, leaky):
    # TeacherModel/StudentModel.forward: nn.Sequential of Linears, leaky_relu iff is_pruning,
    # F.normalize
    for layer in layers:
        x = F.linear(x, layer.weight, layer.bias)
    if leaky:
        x = F.leaky_relu(x)
    return F.normalize(x)


def _transcription(s, items, flavour, leaky=True):
    """FeatureExtractorModel.forward per modality + FeatureFusionModel.forward + bm3.py L169-178,
    generalised from 2 modalities to mean over M; standard = the textbook formulas."""
    t = s.tau
    y = s.labels[items]
    ces, lds, fds, teachers = [], [], [], []
    for j in range(len(s.modalities)):
        x = s.feature(j)[items]
        teacher_x = _released_head(list(s.teachers[j]), x, leaky)
        student_x = _released_head([s.students[j]], x, leaky)
        c = s.classifiers[j]
        t_logit, s_logit = c(teacher_x), c(student_x)
        if flavour == "official":
            ces.append(F.cross_entropy(F.softmax(t_logit, dim=1), y))
            lds.append(F.l1_loss(F.softmax(t_logit / t, dim=1), F.softmax(s_logit / t, dim=1)))
            fds.append(F.mse_loss(student_x, teacher_x))
        else:
            ces.append(F.cross_entropy(t_logit, y))
            p_t = F.softmax(t_logit.detach() / t, dim=1)
            kl = (p_t * (p_t.log() - F.log_softmax(s_logit / t, dim=1))).sum(1).mean()
            lds.append(kl * t * t)
            fds.append(((student_x - teacher_x.detach()) ** 2).mean())
        teachers.append(teacher_x)
    fused = F.leaky_relu_(s.fusion(torch.cat(teachers, dim=1)))
    fusion = F.cross_entropy(s.fusion_classifier(fused), y)
    m = len(s.modalities)
    return s.ce_weight * (sum(ces) / m + fusion) + s.kd_weight * (sum(lds) / m + sum(fds) / m)


def _grads(s, loss):
    s.zero_grad()
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in s.named_parameters()}


@pytest.mark.parametrize("flavour", ["official", "standard"])
@pytest.mark.parametrize("collapse", [False, True])
@pytest.mark.parametrize("widths", [(40, 7, 13), (300,)])
def test_losses_equal_transcription(flavour, collapse, widths):
    s = _sgfd(widths=widths, tau=3.0, ce_weight=0.7, kd_weight=1.3, flavour=flavour,
              collapse_teacher=collapse)
    items = torch.tensor([4, 1, 4, 9, 0, 4, 1, 10])       # duplicates weigh more, as released
    out = s.losses(items)
    want = _transcription(s, items, flavour)
    assert out["sgfd"].item() == pytest.approx(want.item(), rel=1e-10)
    assert set(out) == {"sgfd", "sgfd_ce", "sgfd_fusion", "sgfd_ld", "sgfd_fd"}
    got_g, want_g = _grads(s, out["sgfd"]), _grads(s, want)
    for name in want_g:
        assert torch.allclose(got_g[name], want_g[name], rtol=1e-7, atol=1e-12), name
    # the gradient table of docs/RELEASED_CODE.md §3.7: every SGFD parameter receives gradient
    assert all(g.abs().sum() > 0 for g in got_g.values())


@pytest.mark.parametrize("flavour", ["official", "standard"])
def test_losses_run_on_distinct_items(flavour):
    """Duplicates enter as row weights: no product (forward or backward) has the batch's B = 8
    rows, only its 4 distinct items (the equality with the per-row losses is
    test_losses_equal_transcription)."""
    s = _sgfd(dim=6, flavour=flavour)
    items = torch.tensor([4, 1, 4, 9, 0, 4, 1, 9])
    with products() as shapes:
        s.losses(items)["sgfd"].backward()
    assert (4, 5) in shapes  # the classifier's logits
    assert all(shape[0] != 8 for shape in shapes), shapes


def test_standard_flavour_detaches_teacher_from_distillation():
    s = _sgfd(flavour="standard", ce_weight=0.0, kd_weight=1.0)
    _grads(s, s.losses(torch.arange(11))["sgfd"])
    assert all(p.grad is None or not p.grad.any() for p in s.teachers.parameters())
    assert all(p.grad is not None and p.grad.any() for p in s.students.parameters())
    so = _sgfd(flavour="official", ce_weight=0.0, kd_weight=1.0)
    _grads(so, so.losses(torch.arange(11))["sgfd"])
    assert all(p.grad.any() for p in so.teachers.parameters())  # official: mutual learning


def test_given_students_are_used():
    s = _sgfd()
    items = torch.tensor([3, 3, 5])
    uniq = torch.unique(items)
    students = [s.student(j, uniq) for j in range(3)]
    a = s.losses(items, students=students)["sgfd"]
    assert a.item() == pytest.approx(s.losses(items)["sgfd"].item(), rel=1e-12)


@pytest.mark.parametrize("d", [4096, 1000, 7, 300])
def test_collapsed_teacher_matches_stack(d):
    torch.manual_seed(0)
    feats = {"x": torch.randn(6, d)}
    s = SGFD(feats, torch.tensor([0, 1, 2, 0, 1, 2]), 3, 32, collapse_teacher=False)
    items = torch.tensor([5, 0, 2])
    stacked = s.teacher(0, items)
    g_stack = torch.autograd.grad(stacked.square().sum() + stacked[:, 0].sum(),
                                  list(s.teachers.parameters()))
    s.collapse_teacher = True
    collapsed = s.teacher(0, items)
    g_coll = torch.autograd.grad(collapsed.square().sum() + collapsed[:, 0].sum(),
                                 list(s.teachers.parameters()))
    assert torch.allclose(stacked, collapsed, atol=1e-5)
    for a, b in zip(g_stack, g_coll):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_teacher_costs_pick_the_cheaper_order():
    shapes = [(1024, 4096), (256, 1024), (128, 256)]
    few, many = teacher_costs(shapes, 8), teacher_costs(shapes, 1060)
    assert few[0] < few[1] and many[1] < many[0]
    # 1,060 rows: forward, weight gradient and the chain's backward, counted by hand
    assert many[1] == 3 * (128 * 1024 * 4096 + 128 * 256 * 1024) + 2 * 1060 * 128 * 4096
    assert teacher_costs([(128, 384)], 5)[0] == 2 * 5 * 128 * 384


@pytest.mark.parametrize("n_rows, collapsed", [(6, False), (300, True)])
def test_step_in_the_cheaper_order_equals_the_stack(n_rows, collapsed):
    """One SGFD step (losses and every gradient) with ``collapse_teacher`` (GEMM order by row
    count) against the layer-by-layer stack of the released code, at a row count on each side of
    the break-even; float32 rounding only."""
    g = torch.Generator().manual_seed(5)
    feats = {"image": torch.randn(n_rows, 4096, generator=g).relu(),
             "text": torch.randn(n_rows, 384, generator=g)}
    labels = torch.randint(0, 4, (n_rows,), generator=g)
    items = torch.cat([torch.arange(n_rows), torch.randint(0, n_rows, (50,), generator=g)])
    torch.manual_seed(0)
    s = SGFD(feats, labels, 4, 128, collapse_teacher=False)
    want = s.losses(items)
    want_g = _grads(s, want["sgfd"])
    s.collapse_teacher = True
    with products() as shapes:
        got = s.losses(items)
    assert ((128, 4096) in shapes) == collapsed  # the collapsed weight is formed, or not
    got_g = _grads(s, got["sgfd"])
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5), k
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-4,
                                   atol=1e-6 * float(want_g[name].abs().max()), msg=name)


def test_no_leaky_variant_is_linear_then_normalised():
    s = _sgfd(leaky=False)
    x = s.feature(1)
    want = F.normalize(s.students[1](x))
    assert torch.allclose(s.student(1), want)
    assert (s.student(1) < 0).any()   # no activation clipped the negatives


def test_errors():
    labels = torch.zeros(3, dtype=torch.long)
    with pytest.raises(DataError, match="at least one"):
        SGFD({}, labels, 1, 4)
    with pytest.raises(ConfigError, match="sgfd_loss"):
        SGFD({"x": torch.ones(3, 2)}, labels, 1, 4, flavour="kl")
    # config types and missing keys are refused by load_config (tests/test_config.py)
    cfg = dict(embedding_size=4, t_decay=1.0, ce_weight=0.1, kd_weight=0.1, sgfd_loss="official")
    with pytest.raises(KeyError, match="collapse_teacher"):
        SGFD.from_config({"x": torch.ones(3, 2)}, labels, 1, cfg, leaky=True)
