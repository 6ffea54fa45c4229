"""Train, evaluate, reload, as in a notebook: python examples/notebook.py [N training images]"""
import sys
import time

import tinyconv as tc

limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
model = tc.LeNet5(seed=0)
run_dir = f"runs/example-{time.strftime('%Y%m%d-%H%M%S')}"
history = tc.fit(model, epochs=2, run_dir=run_dir, limit_train=limit)  # the CLI's loop
print(f"epoch {history[-1]['epoch']}: {history[-1]['test_accuracy']:.2%} test accuracy")
print("per class:", " ".join(f"{a:.1%}" for a in tc.evaluate(model)["per_class_accuracy"]))
best = tc.load(f"{run_dir}/best.npz")  # the epoch with the best test accuracy
print(f"best.npz in {run_dir}: {tc.evaluate(best)['accuracy']:.2%}")
