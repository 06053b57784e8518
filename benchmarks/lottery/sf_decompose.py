"""Which factor of the SF score hurts? One-shot pruning (no retraining) at IMP's allocation (budget).

Scores on the spiking conv layers (magnitude elsewhere, as SF): |w| g (BN-folded magnitude),
|w| g phi (Eq. 12 without the input rate), r |w| (input rate only), sqrt(r) |w| g (= the ``sf-rms``
criterion). Compare with sf_analysis.json (magnitude, sf, sf-empirical, sf-current).

    python benchmarks/lottery/sf_decompose.py --checkpoint <dense convnet checkpoint>
"""
import argparse
from pathlib import Path
import torch, copy, json
torch.set_num_threads(1)
from spikeprune.engine.train import load_model, evaluate
from spikeprune.engine.data import load_dataset, BatchLoader
from spikeprune.tickets.calibration import calibrate
from spikeprune.tickets.pruning import prune
from spikeprune.tickets.masks import Mask, prunable_weights
from spikeprune.tickets.criteria import magnitude, sf_layers, bn_gain, gaussian_density_at_threshold, Scores
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument('--checkpoint', required=True)
parser.add_argument('--select-on', choices=('val', 'test'), default='val',
                    help='split the accuracies are measured on (issue 14: a criterion is chosen on validation)')
parser.add_argument('--out', default=str(Path(__file__).resolve().parent / 'sf_decompose.json'))
args = parser.parse_args()
m, meta = load_model(args.checkpoint)
ds = load_dataset('fashion_mnist')
from spikeprune.engine.data import split_validation
vcfg = meta.get('config', {})
fit_set, val_set, split = split_validation(ds, vcfg.get('val_fraction', 0.1), vcfg.get('val_seed', 0))
if args.select_on == 'val' and 'validation' not in meta:
    raise SystemExit(f'{args.checkpoint} was trained on the whole training set; train with the validation split first')
cal = calibrate(m, BatchLoader(fit_set,'train',128,shuffle=True,seed=0,timesteps=4,augment=False), 8)
test = (BatchLoader(val_set, 'test', 500, shuffle=False, timesteps=4) if args.select_on == 'val'
        else BatchLoader(ds, 'test', 500, shuffle=False, timesteps=4, limit=3000))
def make(use_rate, use_gain, use_density, sqrt_rate=False):
    def crit(model, calibration=None, **_):
        w = prunable_weights(model); sc = magnitude(model)
        for name, (bn, lif, st) in sf_layers(model, calibration).items():
            f = torch.ones(w[name].shape[0])
            if use_gain: f = f * bn_gain(bn)
            if use_density: f = f * gaussian_density_at_threshold(st.membrane_mean, st.membrane_var, lif.u_th)
            r = calibration.layers[name].input_rate
            r = r.sqrt() if sqrt_rate else r
            if not use_rate: r = torch.ones_like(r)
            sc.values[name] = (r.view(1,-1,1,1) * w[name].detach().abs() * f.view(-1,1,1,1)).float(); sc.kinds[name] = "x"
        return sc
    return crit
variants = {"|w| g": make(0,1,0), "|w| g phi": make(0,1,1), "r |w|": make(1,0,0), "sqrt(r) |w| g": make(1,1,0,True)}
res = {}
for label, c in variants.items():
    accs = []
    for s in (0.7, 0.8, 0.9):
        net = copy.deepcopy(m); prune(net, c, s, calibration=cal, normalize="budget", mask=Mask.ones(net))
        accs.append(round(100*evaluate(net, test)["test_accuracy"], 1))
    res[label] = accs; print(label, accs, flush=True)
json.dump({'checkpoint': args.checkpoint, 'sparsities': [0.7, 0.8, 0.9], 'measured_on': args.select_on,
           'samples': test.num_samples, 'validation': split, 'accuracy': res}, open(args.out, 'w'), indent=2)
