"""Deploy: what a trained model becomes on the runtimes it ships to.

- `graph`: the ONNX graph: export, the rewrites that make it fast, fp16, inspection;
- `runtimes`: onnxruntime and OpenVINO sessions, the CPU's flags and native precisions, latency;
- `int8`: the int8 forms and how each is made (calibration, onnxruntime's QDQ quantizer, NNCF);
- `choice`: the int8 form chosen by measuring every candidate on every runtime;
- `qat`: quantization-aware training's scheme (BatchNorm folding, fake-quantized layers).
- `phones`: the phone targets (ExecuTorch programs lowered to XNNPACK, PT2E int8) and their runtime.
"""
