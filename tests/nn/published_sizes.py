"""Sizes of the published models (`simdl.nn.published`) for tests: TINY for float64
gradient checks and every-cut runs (a few thousand parameters), REDUCED for a quick
real training step. A test helper (tests/conftest.py puts this folder on sys.path); the
registry-wide tests take TINY into their SMALL tables, so no test builds a full model by
accident. (EfficientNet's gradients at its SE biases are ~1e-7 here; in_ch=3 keeps the
sampled ones above what central differences at h=1e-6 resolve.)"""
from __future__ import annotations

TINY = {
    "resnet18": dict(in_ch=2, size=16, width=2, n_classes=3),
    "resnet50": dict(in_ch=2, size=16, width=2, n_classes=3),
    "mobilenet_v2": dict(in_ch=2, size=16, width=0.1, n_classes=3),
    "mobilenet_v3_small": dict(in_ch=2, size=16, width=0.1, n_classes=3),
    "efficientnet_b0": dict(in_ch=3, size=16, width=0.1, depth=0.2, n_classes=3),
    "deit_tiny": dict(in_ch=2, size=8, patch=4, dim=6, n_heads=2, n_layers=1, n_classes=3),
    "mobilebert": dict(vocab=9, hidden=8, bottleneck=4, n_layers=1, n_heads=2, ffn=6,
                       n_ffn=2, embed=3, max_len=6, seq_len=4, n_classes=3),
}

REDUCED = {
    "resnet18": dict(size=32, width=8, n_classes=10),
    "resnet50": dict(size=32, width=4, n_classes=10),
    "mobilenet_v2": dict(size=32, width=0.25, n_classes=10),
    "mobilenet_v3_small": dict(size=32, width=0.25, n_classes=10),
    "efficientnet_b0": dict(size=32, width=0.25, depth=0.34, n_classes=10),
    "deit_tiny": dict(size=32, patch=8, dim=24, n_heads=3, n_layers=2, n_classes=10),
    "mobilebert": dict(vocab=50, hidden=32, bottleneck=16, n_layers=2, n_heads=4, ffn=32,
                       n_ffn=2, embed=8, max_len=16, seq_len=8, n_classes=5),
}
