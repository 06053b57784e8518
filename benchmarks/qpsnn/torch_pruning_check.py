"""Does Torch-Pruning handle spikeprune's multi-step models? (It does not; see structured.py.)

    .venv/bin/pip install --no-deps torch-pruning      # 1.6.0 was tried
    .venv/bin/python benchmarks/qpsnn/torch_pruning_check.py

Each registered model is pruned by Torch-Pruning's MetaPruner (L1 importance, 50 % of channels,
classifier ignored) and run again. Our models fold T into the batch (``flatten(0, 1)`` /
``unflatten``) and repeat the encoding layer's output over T (``expand``); Torch-Pruning's dependency
graph mis-tracks channel indices through these reshapes.
"""

import torch
import torch_pruning as tp

import spikeprune as sp

torch.manual_seed(0)
for name in ["convnet", "resnet19", "vgg16"]:
    model = sp.create_model(name, 10, 1, 2, 0.25, image_size=16).eval()
    x = torch.randn(4, 1, 16, 16)
    try:
        imp = tp.importance.MagnitudeImportance(p=1)
        pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.5, ignored_layers=[model.classifier])
        pruner.step()
        y = model(x)
        print(name, "ok", tuple(y.shape), sum(p.numel() for p in model.parameters()))
    except Exception as e:  # report, do not stop: the point is which models fail and how
        print(name, "FAILED", type(e).__name__, str(e)[:200])
