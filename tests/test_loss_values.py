"""Every method's loss terms on fixed models and inputs, against values stored when they were checked
(torchdistill's practice): a change to any loss formula, weight or balancing shows here first.

Regenerate after an intended change: python tests/test_loss_values.py (then review the diff)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressor.distill import METHODS, build_distiller
from compressor.models import ConvNet

STORED = Path(__file__).parent / "data" / "loss_values.json"


def loss_terms(method: str, **options) -> dict[str, float]:
    """The named loss terms of one training forward of `method` (its defaults unless `options`; lit's
    block-wise phase and fitnet's hint phase included) on seeded models and inputs."""
    torch.manual_seed(0)
    teacher = ConvNet((8, 16, 32), 32, num_classes=10, in_chans=3).eval()
    student = ConvNet((4, 8, 16), 16, num_classes=10, in_chans=3)
    task = build_distiller(method, student, teacher, input_shape=[3, 16, 16], options=options)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    terms = {}
    for tag, _ in task.phases(2):
        task.begin_phase(tag)
        task.train()
        _, losses = task.forward_train(x, y)
        terms.update({f"{tag}/{k}": float(v.detach()) for k, v in losses.items()})
    return terms


# Balanced methods scale their knowledge term to the cross-entropy on the first batch; their raw
# terms (--no-balance) are what checks the formula itself.
CASES = {m: {} for m in METHODS} | {f"{m}/raw": {"balance": False} for m, info in METHODS.items() if "balance" in info.uses}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_terms_match_the_stored_values(case):
    stored = json.loads(STORED.read_text())
    assert case in stored, f"no stored values for {case}: python tests/test_loss_values.py"
    assert loss_terms(case.split("/")[0], **CASES[case]) == pytest.approx(stored[case], rel=1e-4, abs=1e-6)


if __name__ == "__main__":
    STORED.parent.mkdir(exist_ok=True)
    values = {case: loss_terms(case.split("/")[0], **options) for case, options in sorted(CASES.items())}
    STORED.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORED}")
