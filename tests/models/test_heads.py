"""The item-feature head keys (student_activation, student_norm, student_init): ``auto`` is the
released head of each backbone, bit for bit, and the other values do what they say, on the SGFD
student and on the plain backbones' extractors alike."""

import math

import pytest
import torch
import torch.nn.functional as F

from sgfd_fast.config import load_config
from sgfd_fast.errors import ConfigError
from sgfd_fast.models import build_model
from sgfd_fast.models.sgfd import NEGATIVE_SLOPE


# what ``auto`` stands for: (model, sgfd) -> (activation, norm, init)
RELEASED = {
    ("BM3", True): ("leaky_relu", "l2", "pytorch"),
    ("BM3", False): ("identity", "none", "xavier_normal"),
    ("GRCN", True): ("identity", "l2", "pytorch"),
    ("GRCN", False): ("identity", "none", "pytorch"),
    ("MAML", True): ("leaky_relu", "l2", "pytorch"),
}


def _model(tiny, name, sgfd, **head):
    extra = [("hidden_layer_dim", 8)] if name == "MAML" else []
    overrides = [("embedding_size", 8), ("sgfd", sgfd), *extra,
                 *((f"student_{k}", v) for k, v in head.items())]
    cfg = load_config(name, None, overrides=overrides).points()[0]
    torch.manual_seed(3)
    return build_model(name, tiny(), cfg)


def _step(tiny, batch, model):
    users, items, neg = batch(tiny(), n_neg=model.n_negatives or 1)
    torch.manual_seed(4)
    loss = model.calculate_loss(users, items, neg if model.n_negatives else None)["loss"]
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,sgfd", list(RELEASED))
def test_auto_is_the_released_head_bit_for_bit(tiny, batch, name, sgfd):
    activation, norm, init = RELEASED[(name, sgfd)]
    loss0, grads0 = _step(tiny, batch, _model(tiny, name, sgfd))
    loss1, grads1 = _step(tiny, batch, _model(tiny, name, sgfd, activation=activation, norm=norm,
                                              init=init))
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys()
    for k in grads0:
        assert torch.equal(grads0[k], grads1[k]), k


def _head_output(model, j=0):
    """(raw rows, head layer, head output) of modality j over all items."""
    if model.sgfd is not None:
        return model.sgfd.feature(j), model.sgfd.students[j], model.sgfd.student(j)
    return model.features.rows(j), model.extractors[j], model.features.student(j)


@pytest.mark.parametrize("sgfd", [True, False])
def test_activation_and_norm_do_what_they_say(tiny, sgfd):
    x, layer, out = _head_output(_model(tiny, "BM3", sgfd, activation="leaky_relu", norm="l2"))
    h = F.leaky_relu(F.linear(x, layer.weight, layer.bias), NEGATIVE_SLOPE)
    torch.testing.assert_close(out, h / h.norm(dim=1, keepdim=True))
    x, layer, out = _head_output(_model(tiny, "BM3", sgfd, activation="identity", norm="none"))
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    assert (out < 0).any()  # no activation clipped them


def test_grcn_extractor_takes_the_students_head(tiny):
    m = _model(tiny, "GRCN", False, activation="leaky_relu", norm="l2")
    x, layer = m.features.rows(0), m.extractors[0]
    h = F.leaky_relu(F.linear(x, layer.weight, layer.bias), NEGATIVE_SLOPE)
    torch.testing.assert_close(m.features.student(0), F.normalize(h))


@pytest.mark.parametrize("sgfd", [True, False])
def test_init_does_what_it_says(tiny, sgfd):
    def weight(init):
        return _head_output(_model(tiny, "BM3", sgfd, init=init))[1].weight.detach()

    w = weight("xavier_uniform")
    fan_out, fan_in = w.shape
    assert w.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
    w = weight("xavier_normal")
    assert w.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.3)
    w = weight("pytorch")  # nn.Linear: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= 1 / math.sqrt(fan_in)
    assert not torch.equal(weight("pytorch"), weight("xavier_normal"))


def test_plain_maml_has_no_head_to_change(tiny):
    with pytest.raises(ConfigError, match="student_norm set with sgfd=false.*ce_weight=0"):
        _model(tiny, "MAML", False, norm="l2")


def test_unknown_head_value_is_a_config_error():
    with pytest.raises(ConfigError, match="student_norm='l1'.*auto, l2, none"):
        load_config("BM3", "office", overrides=["student_norm=l1"])
