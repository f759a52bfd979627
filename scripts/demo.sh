#!/usr/bin/env bash
# Creates the environment and runs the main demo on the embedded MNIST:
# inject a BadNets backdoor, then measure it. Outputs go to demo_out/.
source "$(dirname "$0")/setup_env.sh"
OUT=demo_out/mnist_badnets
if [ -f "$OUT/model.keras" ]; then
  echo "== reusing $OUT (delete it to retrain)"
else
  echo "== 1. inject: train the NC MNIST model with a 4x4 white square -> label 7"
  nc-tf inject --dataset mnist --target 7 --size 4 --margin 1 --ratio 0.1 --epochs 2 --out "$OUT"
fi
echo "== 2. evaluate: clean accuracy and attack success rate on the MNIST test set"
nc-tf evaluate "$OUT/model.keras" --dataset mnist --attack "$OUT/attack.json"
