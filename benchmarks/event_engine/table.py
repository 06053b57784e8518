import json, sys
r = json.load(open(sys.argv[1]))
print("| model | firing rate | weight density | events/dense MACs | acc dense/event (2048 img) | flips (64 img) | b1 | b256 | b256 vs uncompressed |")
print("|---|---|---|---|---|---|---|---|---|")
for m in r["rows"]:
    print(f"| {m['model']} | {m['firing_rate']:.3f} | {m['synapse_density']:.3f} | {m['rate_x_density']:.4f} | "
          f"{m['acc_dense']:.4f}/{m['acc_event']:.4f} | {sum(m['flips_64'])} | {m['dense_ms_b1']/m['event_ms_b1']:.2f} | "
          f"{m['dense_ms_b256']/m['event_ms_b256']:.2f} | {m['uncompressed_dense_ms_b256']/m['event_ms_b256']:.2f} |")
for b, f in r["sops_fit"].items():
    print(f"fit b{b}: event ms = {f['a_ms']:.3g} + {f['b_ms_per_sop']:.3g} x SOPs/sample, R^2 {f['r2']:.3f} ({f['points']} points)")
print(json.dumps(r["meta"])[:600])
