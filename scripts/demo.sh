#!/usr/bin/env bash
# Creates the environment and runs the main demo on the embedded MNIST:
# inject a BadNets backdoor, measure it, then scan the model with Neural
# Cleanse, print the MAD report, repair it, verify the repair by a fresh
# scan, measure the repaired model, and write the one-page HTML report.
# Outputs go to demo_out/
EXTRAS="" source "$(dirname "$0")/setup_env.sh"
OUT=demo_out/mnist_badnets
if [ -f "$OUT/model.keras" ]; then
  echo "== reusing $OUT (delete demo_out/ to start over)"
else
  echo "== 1. inject: train the NC MNIST model with a 4x4 white square -> label 7"
  nc-tf inject --dataset mnist --target 7 --size 4 --margin 1 --ratio 0.1 --epochs 2 --out "$OUT"
fi
echo "== 2. evaluate: clean accuracy and attack success rate on the MNIST test set"
nc-tf evaluate "$OUT/model.keras" --dataset mnist --attack "$OUT/attack.json"
echo "== 3. scan: reverse-engineer a trigger for each of the 10 labels (resumes if interrupted)"
nc-tf scan "$OUT/model.keras" --dataset mnist --out demo_out/scan
echo "== 4. detect: MAD outlier test on the scan folder (PNG triggers in demo_out/scan/)"
nc-tf detect demo_out/scan
echo "== 5. repair: peel the rest of the flagged trigger, unlearn it, verify by a fresh scan"
echo "   (exit status 3 and a warning if a backdoor survives; resumes if interrupted)"
nc-tf mitigate "$OUT/model.keras" --method unlearn --scan demo_out/scan --dataset mnist \
  --attack "$OUT/attack.json" --out demo_out/repaired
echo "== 6. evaluate the repaired model: clean accuracy and the original trigger's attack success"
nc-tf evaluate demo_out/repaired/model.keras --dataset mnist --attack "$OUT/attack.json"
echo "== 7. report: one HTML page with the verdict, the triggers, the norm plot, Grad-CAM,"
echo "   the activation analysis and the repair (images inside the file; reads offline)"
# --force: the page is the demo's own output, rewritten on every run.
nc-tf report demo_out/scan demo_out/repaired --model "$OUT/model.keras" --dataset mnist \
  --attack "$OUT/attack.json" --out demo_out/report.html --force
echo "open demo_out/report.html in a browser"
