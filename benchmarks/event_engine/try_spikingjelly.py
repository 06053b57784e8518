"""The event engine and cost's engine line on an adapted SpikingJelly multi-step net (docs/compression.md):
    python benchmarks/event_engine/try_spikingjelly.py"""
import torch, torch.nn as nn
import spikeprune as sp
from spikingjelly.activation_based import neuron, layer, functional, surrogate
from spikeprune.deploy import event_engine as ee
from spikeprune.compression.cost import cost_report, measure_latencies
torch.manual_seed(0)
net = nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.LIFNode(tau=2., surrogate_function=surrogate.ATan()),
                    layer.Conv2d(8, 16, 3, padding=1), layer.BatchNorm2d(16), neuron.LIFNode(tau=2.),
                    layer.MaxPool2d(2), layer.Flatten(), layer.Linear(16*4*4, 10))
functional.set_step_mode(net, "m")
m = sp.adapt(net, timesteps=4).eval()
for mod in m.modules():
    if isinstance(mod, nn.BatchNorm2d):
        mod.running_mean.normal_(0, .1); mod.weight.data.uniform_(0.8, 1.8); mod.bias.data.normal_(.4, .3)
conv2 = [x for x in m.modules() if isinstance(x, nn.Conv2d)][1]
conv2.weight.data.mul_((torch.rand_like(conv2.weight) < 0.1).float())
x = torch.rand(64, 1, 8, 8) * 2
eng = ee.compile(m)
print("engine dense fallback:", eng.dense, eng.reason)
print("flips:", ee.spike_flips(eng, x)["flips"])
convs = [s for s in eng.steps if s.syn is not None and s.syn.kind == "conv"]
print("flat lists:", [None if s.syn.flat is None else int(s.syn.flat[2].numel()) for s in convs])
lat = measure_latencies(m, x, repeats=3, event_engine=eng)
print("speedup", round(lat["event"]["speedup"], 2), "events/sample", lat["event"]["synaptic_events_per_sample"])
rep = cost_report(m, [x]); rep.latency = lat
print(rep.table().splitlines()[-1])
