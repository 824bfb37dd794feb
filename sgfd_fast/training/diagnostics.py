"""What every SGFD run records beside its losses, so that a user sees whether distillation acts.

Per epoch, in ``metrics.jsonl`` under ``"sgfd"`` (only when the model runs SGFD):

* ``grad_share``: ``||d L_sgfd / d theta_s|| / ||d L / d theta_s||``, the SGFD losses' share of
  the student's gradient, where ``theta_s`` are the student heads' parameters (weights and biases,
  every modality, one flattened vector), ``L_sgfd`` the weighted SGFD total and ``L`` the whole
  training loss. It is measured on the epoch's last batch only (two extra backward passes per
  epoch, ``torch.autograd.grad`` on the student parameters, before that batch's own backward):
  one batch's value, not an epoch mean. 0 when ``ce_weight = kd_weight = 0``; near 0 means the
  backbone's loss alone drives the student. Absent when the student is not trained (MAML under
  ``protocol=legacy``).
* ``teacher_acc`` / ``student_acc``: ``{modality: accuracy}`` of each modality's classifier on the
  teacher's and on the student's features, argmax against the item labels over **all** items
  (the labels SGFD trains on, so this is fit, not generalisation); on evaluation epochs only.

Neither draws random numbers nor touches ``.grad``, so training is unchanged by them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gradient_share", "label_accuracy"]


def _norm(grads) -> torch.Tensor:
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))


def gradient_share(model, parts: dict) -> float | None:
    """The SGFD losses' share of the student's gradient norm on this batch (see module doc);
    ``parts`` is the model's ``calculate_loss`` output, before its backward. None without SGFD,
    or when the student is frozen."""
    sgfd = getattr(model, "sgfd", None)
    loss = parts.get("sgfd")
    if sgfd is None or loss is None or not loss.requires_grad:
        return None
    params = [p for p in sgfd.students.parameters() if p.requires_grad]
    if not params:
        return None
    g_sgfd = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    g_total = torch.autograd.grad(parts["loss"], params, retain_graph=True, allow_unused=True)
    total = _norm(g_total)
    return float(_norm(g_sgfd) / total) if total > 0 else None


def label_accuracy(model) -> dict | None:
    """``{"teacher_acc": {modality: float}, "student_acc": {...}}`` over all items (see module
    doc), or None without SGFD. Runs in eval mode under ``torch.no_grad()``; leaves the model in
    the mode it found."""
    sgfd = getattr(model, "sgfd", None)
    if sgfd is None:
        return None
    out = {"teacher_acc": {}, "student_acc": {}}
    was_training = sgfd.training
    sgfd.eval()
    try:
        with torch.no_grad():
            for j, m in enumerate(sgfd.modalities):
                c = sgfd.classifiers[j]
                for key, f in (("teacher_acc", sgfd.teacher(j)), ("student_acc", sgfd.student(j))):
                    hit = F.linear(f, c.weight, c.bias).argmax(1) == sgfd.labels
                    out[key][m] = float(hit.double().mean())
    finally:
        sgfd.train(was_training)
    return out
