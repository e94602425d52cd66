"""The Distiller base classes: a student, a frozen teacher, and named losses."""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor import CompressorError, distributed
from compressor.distill.features import pair_layers
from compressor.taps import FeatureTap, probe_shapes
from compressor.distill.registry import METHODS
from compressor.training import Task


class Distiller(Task):
    """Wrap a student and a teacher; a subclass owns its method's whole protocol.

    `forward_train(x, y)` returns (student logits, {name: loss}); the trainer sums and logs the
    losses and never branches on the method. Besides it, a method may override:

    - `phases(epochs)`: the training phases as (tag, epochs) (fitnet: hints, then kd);
      `begin_phase(tag)` is called before each.
    - `trainable_parameters()`: what the optimizer updates (default: every parameter that requires
      grad: the student's and the method's own adapters).
    - `train_step(x, y, optimizer)`: a custom step replacing the default one (l2tww's bilevel step).
    - `cost(device)`: what the method cost, for metrics.json.

    Offline scheme: the teacher is frozen (no gradients) and always in eval mode, whatever
    `train()` is called with.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, input_shape: list[int] | None = None) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self._t_tap: FeatureTap | None = None  # teacher features a method reads, if any
        self.kept: dict[str, torch.Tensor] = {}  # teacher channels kept per layer (from select)
        self.cache = None  # a TeacherCache, when the teacher's outputs are reused across runs
        # balance(): the knowledge term's scale, fixed on the first training batch (0: not yet measured);
        # a buffer, so checkpoints keep it and a resumed run goes on with the same scale
        self.register_buffer("knowledge_scale", torch.zeros(()))
        self._scale_known = False
        self.balanced = False  # a method that balances sets it from its `balance` option

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_layers(self) -> list[str]:
        """What the teacher cache must store besides the logits (part of its key)."""
        if self._t_tap is None:
            return []
        return [f"{n}:{self._t_tap.capture}:{self.kept[n].tolist() if n in self.kept else 'all'}"
                for n in self._t_tap.names]

    def on_batch(self, epoch: int, index: torch.Tensor) -> None:
        """Called by the training loop before each batch: which samples, at which epoch."""
        if self.cache is not None:
            self.cache.begin(epoch, index)

    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The frozen teacher's logits and tapped features for this batch (from the cache if stored)."""
        if self.cache is not None:
            hit = self.cache.lookup()
            if hit is not None:
                return hit[0].to(x.device), {k: v.to(x.device) for k, v in hit[1].items()}
        with torch.no_grad():
            logits = self.teacher(x)
        feats = {}
        if self._t_tap is not None:
            feats = self._t_tap.pop()
            for name, idx in self.kept.items():
                feats[name] = feats[name].index_select(1, idx.to(feats[name].device))
        if self.cache is not None:
            feats = self.cache.store(logits, feats)
        return logits, feats

    def balance(self, ce: torch.Tensor, knowledge: torch.Tensor) -> torch.Tensor:
        """`knowledge` times a scale fixed on the first training batch, where it makes the knowledge
        term as large as the (unweighted) cross-entropy `ce`; its weight --beta is then relative to the
        cross-entropy, whatever the feature-map sizes, the number of layer pairs or the model. Under
        torchrun the scale comes from the sums over every process's share of that batch.

        (Equal gradient norms over the student's weights instead of equal values was tried too, and
        was worse.)
        With `balanced` off (--no-balance) the raw term is returned."""
        if not self.balanced:
            return knowledge
        if not self._scale_known:
            if float(self.knowledge_scale) == 0 and self.training:
                sums = distributed.sum_(torch.stack([ce.detach().float(), knowledge.detach().float().abs()]))
                self.knowledge_scale.fill_(float(sums[0]) / max(float(sums[1]), 1e-12))
            self._scale_known = float(self.knowledge_scale) != 0
        return knowledge * self.knowledge_scale if self._scale_known else knowledge

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_outputs(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor):
        raise NotImplementedError

    def close(self) -> None:
        """Remove any hooks this distiller put on the models; write what the cache still holds."""
        if self._t_tap is not None:
            self._t_tap.remove()
        if self.cache is not None:
            self.cache.close()

    def default(self, name: str, value):
        """`value`, or the registered default of this method's option `name` when it is None."""
        return METHODS[self.method_name].defaults[name] if value is None else value


class FeatureDistiller(Distiller):
    """A distiller that reads intermediate features of both models through forward hooks.

    Args:
        pairs: (teacher layer, student layer) module names.
        channels: optional {teacher layer: kept channel indices} (from `select`): teacher features
            are restricted to those channels before any loss sees them.
        input_shape: (C, H, W), used to probe feature shapes for sizing adapters.
    """

    def __init__(self, student, teacher, *, pairs: list[tuple[str, str]], input_shape: list[int],
                 channels: dict[str, list[int]] | None = None, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.pairs = list(pairs)
        t_names = list(dict.fromkeys(t for t, _ in self.pairs))
        s_names = list(dict.fromkeys(s for _, s in self.pairs))
        self.t_shapes = probe_shapes(teacher, t_names, input_shape)
        self.s_shapes = probe_shapes(student, s_names, input_shape)
        for name in t_names:
            if channels and name in channels:
                idx = torch.tensor(channels[name], dtype=torch.long)
                if len(idx) and int(idx.max()) >= self.t_shapes[name][0]:
                    raise CompressorError(f"--channels keeps channel {int(idx.max())} of teacher layer {name}, "
                                          f"which has only {self.t_shapes[name][0]}; was it made for this teacher?")
                self.kept[name] = idx
                self.t_shapes[name] = (len(idx), *self.t_shapes[name][1:])
        self._t_tap = FeatureTap(teacher, t_names, detach=True)
        self._s_tap = FeatureTap(student, s_names)

    @classmethod
    def pair_stages(cls, teacher_layers: list[str], student_layers: list[str], mode: str) -> list[tuple[str, str]]:
        """The (teacher, student) pairs of the models' stage layers when --layers does not name them."""
        return pair_layers(teacher_layers, student_layers, mode)

    def features(self, x: torch.Tensor):
        """(student logits, teacher logits, student features, teacher features) for one batch."""
        t_logits, t_feats = self.teacher_outputs(x)
        s_logits = self.model(x)
        return s_logits, t_logits, self._s_tap.pop(), t_feats

    def close(self) -> None:
        super().close()
        self._s_tap.remove()
