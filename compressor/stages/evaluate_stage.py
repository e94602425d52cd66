"""eval: accuracy of an artifact directory or an .onnx file on the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compressor import CompressorError
from compressor.artifacts import SPEC_FILE, load_artifact, read_json
from compressor.config import EvalConfig
from compressor.deploy.runtimes import predict_batches, session
from compressor.models import ModelSpec
from compressor.stages.common import check_data_matches, load_bundle, test_logits
from compressor.stages.runner import as_config
from compressor.training import resolve_device


def evaluate(target=None, /, **options) -> dict:
    """Test accuracy of a model (artifact dir, or an .onnx file or OpenVINO IR .xml beside its model.json);
    agreement with a teacher."""
    data = as_config(EvalConfig, target, options)
    dev = resolve_device(data.device)
    p, teacher = Path(data.target).expanduser(), data.teacher
    if p.suffix in (".onnx", ".xml"):
        if not p.is_file():
            raise CompressorError(f"{'ONNX' if p.suffix == '.onnx' else 'OpenVINO IR'} file {p} does not exist")
        if not (p.parent / SPEC_FILE).is_file():
            raise CompressorError(f"no {SPEC_FILE} beside {p}: it says how inputs are normalized")
        spec = ModelSpec.read(read_json(p.parent / SPEC_FILE), p.parent / SPEC_FILE)
        sess = session(p)
        if sess.input_shape() != list(spec.input_shape):
            raise CompressorError(f"{p} takes {'x'.join(map(str, sess.input_shape()))} inputs but the "
                                  f"{SPEC_FILE} beside it says {'x'.join(map(str, spec.input_shape))}: "
                                  "they are not of one model")
        bundle = load_bundle(data, spec)
        logits, labels = predict_batches(sess, bundle.loader("test", 256), f"eval {p.name}")
        pred = logits.argmax(1)
    else:
        art = load_artifact(p)
        bundle = load_bundle(data, art.spec)
        lg, lb = test_logits(art.model.to(dev), bundle, dev)
        pred, labels = lg.argmax(1).numpy(), lb.numpy()
    out = {"model": str(p), "accuracy": float((pred == labels).mean()), "samples": int(len(labels))}
    if teacher:
        t = load_artifact(teacher)
        check_data_matches(t.spec, bundle)
        tl, _ = test_logits(t.model.to(dev), bundle, dev)
        out["teacher_accuracy"] = float((tl.argmax(1).numpy() == labels).mean())
        out["agreement"] = float((np.asarray(pred) == tl.argmax(1).numpy()).mean())
    return out
