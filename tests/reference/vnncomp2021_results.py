"""The published VNN-COMP 2021 verdicts on `mnistfc`, from the competition's results repository.

Reads `results_csv/*.csv` of a checkout of `stanleybak/vnncomp2021_results` (the organisers'
raw per-tool results; commit a83b9da) and writes
`tests/fixtures/vnncomp2021-mnistfc/published_results.csv`: per instance, α,β-CROWN's result and
run time (seconds, as the CSV gives it, overhead included), and the tools that said `sat` and those that said
`unsat`, for the contradiction check of `examples/vnncomp.rs`.

    python tests/reference/vnncomp2021_results.py /path/to/vnncomp2021_results
"""
import csv
import glob
import os
import sys

WORDS = {"holds": "unsat", "unsat": "unsat", "violated": "sat", "sat": "sat"}


def main(root):
    verdicts, abcrown = {}, {}
    for path in sorted(glob.glob(os.path.join(root, "results_csv", "*.csv"))):
        tool = os.path.basename(path)[: -len(".csv")]
        for row in csv.reader(open(path)):
            if len(row) < 6 or row[0] != "mnistfc" or "mnist-net" not in row[1]:
                continue
            net = os.path.basename(row[1])[: -len(".onnx")]
            prop = os.path.basename(row[2])[: -len(".vnnlib")]
            key = (net, prop)
            word = WORDS.get(row[4].strip().lower())
            if word:
                verdicts.setdefault(key, {}).setdefault(word, []).append(tool)
            if tool == "a-b-CROWN":
                abcrown[key] = (WORDS.get(row[4].strip().lower(), "unknown"), float(row[5]))
    out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "vnncomp2021-mnistfc", "published_results.csv")
    with open(out, "w") as f:
        f.write("network,property,abcrown_result,abcrown_seconds,tools_sat,tools_unsat\n")
        for key in sorted(set(verdicts) | set(abcrown)):
            r, t = abcrown.get(key, ("unknown", float("nan")))
            v = verdicts.get(key, {})
            sat, unsat = (" ".join(sorted(v.get(w, []))) for w in ("sat", "unsat"))
            f.write(f"{key[0]},{key[1]},{r},{t:.2f},{sat},{unsat}\n")


if __name__ == "__main__":
    main(sys.argv[1])
