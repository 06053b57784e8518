import torch, torch_pruning as tp, spikeprune as sp
torch.manual_seed(0)
for name in ["convnet", "resnet19", "vgg16"]:
    model = sp.create_model(name, 10, 1, 2, 0.25, image_size=16).eval()
    x = torch.randn(4, 1, 16, 16)
    ref = model(x)
    try:
        imp = tp.importance.MagnitudeImportance(p=1)
        pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.5, ignored_layers=[model.classifier])
        pruner.step()
        y = model(x)
        print(name, "ok", y.shape, sum(p.numel() for p in model.parameters()))
        for n, m in model.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                print("  ", n, tuple(m.weight.shape))
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:300])
