"""QP-SNN compression: weight/membrane quantization, structured channel removal, the joint pipeline, the cost report."""
