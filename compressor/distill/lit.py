"""LIT: learning intermediate representations (Koratana et al., ICML 2019; study C).

The student has as many stages as the teacher. Phase one (`lit_epochs`), block-wise: each student
stage j > 0 is fed, through a forward pre-hook on its module, the teacher's output of stage j - 1
(through a regressor where the sizes differ: a 1x1 conv for channels, average pooling or bilinear
resizing for height and width, a linear layer for flat features), and is trained to reproduce the
teacher's output of stage j (L2, through a 1x1-conv adapter where the channels differ). Stage 0
reads the image. All stages train at once, each from its own loss only, since its input no longer
depends on the stage before it. Phase two trains the whole student end to end with Hinton KD, the
hooks passing inputs through unchanged. The models stay off-the-shelf: only hooks are added.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import CompressorError
from compressor.distill.base import FeatureDistiller
from compressor.taps import probe_shapes
from compressor.distill.functional import as_map, kd_terms, match_spatial
from compressor.distill.registry import register_method


class Regressor(nn.Module):
    """Map a (C, H, W) or (D,) feature onto another shape: 1x1 conv (or linear) where the channels
    differ, then average pooling (smaller) or bilinear resizing (larger) to the target height and
    width. Identity where the shapes are equal."""

    def __init__(self, src: tuple, dst: tuple) -> None:
        super().__init__()
        if len(src) != len(dst) or len(src) not in (1, 3):
            raise CompressorError(f"--method lit cannot map a feature of shape {tuple(src)} onto {tuple(dst)}; name "
                                  "layers of the same kind with --layers")
        self.size = tuple(dst[1:])
        if src[0] == dst[0]:
            self.proj = nn.Identity()
        else:
            self.proj = nn.Conv2d(src[0], dst[0], 1, bias=False) if len(src) == 3 else nn.Linear(src[0], dst[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if x.dim() == 4 and tuple(x.shape[-2:]) != self.size:
            h, w = self.size
            x = (F.adaptive_avg_pool2d(x, self.size) if x.shape[-2] * x.shape[-1] > h * w else
                 F.interpolate(x, size=self.size, mode="bilinear", align_corners=False))
        return x


@register_method("lit", summary="block-wise: each student stage fed the teacher's previous stage output (through "
                 "forward pre-hooks) learns the teacher's output of its stage (L2); all stages at once for "
                 "`--lit-epochs`, then the whole student with `kd`; teacher and student need as many stages",
                 uses=("temperature", "alpha", "layers", "lit_epochs"), defaults={"temperature": 4.0, "alpha": 0.5})
class LIT(FeatureDistiller):
    @classmethod
    def pair_stages(cls, teacher_layers: list[str], student_layers: list[str], mode: str) -> list[tuple[str, str]]:
        """Stage j of the student with stage j of the teacher; refused when their numbers differ."""
        if len(teacher_layers) != len(student_layers):
            raise CompressorError(f"--method lit pairs the student's stages with the teacher's one by one, but the "
                                  f"teacher has {len(teacher_layers)} ({', '.join(teacher_layers)}) and the student "
                                  f"{len(student_layers)} ({', '.join(student_layers)}); choose a student with "
                                  f"{len(teacher_layers)} stages or name the pairs with --layers")
        return list(zip(teacher_layers, student_layers))

    def __init__(self, student, teacher, *, pairs, input_shape, temperature: float | None = None,
                 alpha: float | None = None, lit_epochs: int = 1, **kw) -> None:
        for side, names in (("teacher", [t for t, _ in pairs]), ("student", [s for _, s in pairs])):
            if len(set(names)) != len(names):
                raise CompressorError(f"--method lit pairs stages one to one, but --layers names a {side} layer "
                                      "twice")
        super().__init__(student, teacher, pairs=pairs, input_shape=input_shape, **kw)
        self.temperature, self.alpha = self.default("temperature", temperature), self.default("alpha", alpha)
        self.lit_epochs, self.phase = lit_epochs, "lit"
        fed = [s for _, s in self.pairs[1:]]
        s_inputs = probe_shapes(student, fed, input_shape, capture="input")
        # feed[j - 1]: teacher output of stage j - 1 -> the input of student stage j
        self.feed = nn.ModuleList(Regressor(self.t_shapes[t], s_inputs[s])
                                  for (t, _), (_, s) in zip(self.pairs, self.pairs[1:]))
        # match[j]: student output of stage j -> the teacher's output of stage j
        self.match = nn.ModuleList(Regressor(self.s_shapes[s], (self.t_shapes[t][0], *self.s_shapes[s][1:]))
                                   for t, s in self.pairs)
        self._inputs: dict[str, torch.Tensor] | None = None  # per fed student stage, during the block-wise phase
        modules = dict(student.named_modules())
        self._feeds = [modules[s].register_forward_pre_hook(self._feed_hook(s)) for s in fed]

    def _feed_hook(self, name: str):
        def hook(module, args):
            if self._inputs is None:
                return None
            return (self._inputs[name], *args[1:])
        return hook

    def phases(self, epochs: int) -> list[tuple[str, int]]:
        return ([("lit", self.lit_epochs)] if self.lit_epochs else []) + [("main", epochs)]

    def begin_phase(self, tag: str) -> None:
        self.phase = "lit" if tag == "lit" else "kd"

    def trainable_parameters(self):
        """Block-wise: the student's stages and the regressors (the classifier has no loss yet)."""
        if self.phase != "lit":
            return None
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teacher.")]

    def stage_inputs(self, t_feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What each student stage j > 0 is fed: the regressed teacher output of stage j - 1."""
        return {s: feed(t_feats[t]) for feed, (t, _), (_, s) in zip(self.feed, self.pairs, self.pairs[1:])}

    def forward_train(self, x, y):
        t_logits, t_feats = self.teacher_outputs(x)
        if self.phase != "lit":
            logits = self.model(x)
            self._s_tap.pop()
            ce, soft = kd_terms(logits, t_logits, y, self.temperature, self.alpha)
            return logits, {"loss_ce": ce, "loss_kd": soft}
        self._inputs = self.stage_inputs(t_feats)
        try:
            logits = self.model(x)
        finally:
            self._inputs = None
        s_feats = self._s_tap.pop()
        loss = sum(F.mse_loss(*match_spatial(as_map(m(s_feats[s])), as_map(t_feats[t])))
                   for m, (t, s) in zip(self.match, self.pairs))
        return logits.detach(), {"loss_lit": loss}

    def close(self) -> None:
        super().close()
        for h in self._feeds:
            h.remove()
        self._feeds = []
