"""Which teacher layer a student layer learns from (`compressor.taps.FeatureTap` reads their features)."""

from __future__ import annotations

from compressor import CompressorError


def pair_layers(teacher_layers: list[str], student_layers: list[str], mode: str = "matched") -> list[tuple[str, str]]:
    """(teacher layer, student layer) pairs.

    matched: stage by stage by relative depth (student stage j of S gets teacher stage
    round((j + 1) * T / S) - 1), so the last stages always pair. all: every teacher layer with
    every student layer (T x S pairs), which lets models of different depths be distilled.
    """
    if mode == "all":
        return [(t, s) for t in teacher_layers for s in student_layers]
    if mode != "matched":
        raise CompressorError(f"--pairs must be matched or all, got '{mode}'")
    n_t, n_s = len(teacher_layers), len(student_layers)
    if n_s > n_t:
        return [(teacher_layers[round((i + 1) * n_t / n_s) - 1 if n_t else 0], student_layers[i])
                for i in range(n_s)][-n_t:]
    return [(teacher_layers[round((j + 1) * n_t / n_s) - 1], student_layers[j]) for j in range(n_s)]


def parse_layer_pairs(spec: str) -> list[tuple[str, str]]:
    """'t1:s1,t2:s2' -> [(t1, s1), (t2, s2)]."""
    pairs = []
    for item in spec.split(","):
        if item.count(":") != 1 or not all(part.strip() for part in item.split(":")):
            raise CompressorError(f"--layers wants TEACHER:STUDENT pairs separated by commas, got '{item}'")
        t, s = item.split(":")
        pairs.append((t.strip(), s.strip()))
    return pairs
