"""Recipe: knowledge distillation with intermediate features (examples/distillation.py)."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.models import resnet18, resnet50

from tests.examples import load_example
from tests.reference import reference

recipe = load_example("distillation")
PATHS = list(recipe.STAGES)


def test_loss_terms_equal_reference_hooks() -> None:
    """Feature and KD terms computed from cloning reference hooks on both backbones agree."""
    student, teacher = resnet18(num_classes=10), resnet50(num_classes=10)
    distiller = recipe.Distiller(student, teacher).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))
    assert [a.in_channels for a in distiller.adapters.values()] == [128, 256]
    assert [a.out_channels for a in distiller.adapters.values()] == [512, 1024]
    with torch.no_grad():
        s_out, s = reference(student, PATHS, x)
        t_out, t = reference(teacher, PATHS, x)
        names = list(recipe.STAGES.values())
        feature = sum(
            F.mse_loss(distiller.adapters[n](s[p][0]), t[p][0])
            for n, p in zip(names, PATHS, strict=True)
        )
        kd = (
            F.kl_div(F.log_softmax(s_out / 4, 1), F.softmax(t_out / 4, 1), reduction="batchmean")
            * 16
        )
        got = distiller(x, y)
    torch.testing.assert_close(got["feature"], feature)
    torch.testing.assert_close(got["kd"], kd)
    torch.testing.assert_close(got["ce"], F.cross_entropy(s_out, y))


def test_student_learns_teacher_untouched() -> None:
    distiller = recipe.Distiller(resnet18(num_classes=10), resnet50(num_classes=10))
    teacher = distiller.teacher.backbone
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BatchNorm buffers too
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    losses = recipe.train(distiller, x, y, steps=5)
    assert losses[-1] < losses[0]
    after = teacher.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    assert distiller.student.training
    for module in (distiller.student, distiller.adapters):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_main_runs_and_the_loss_decreases() -> None:
    losses = recipe.main(steps=3, image_size=32, batch_size=2)
    assert len(losses) == 3
    assert losses[-1] < losses[0]
