"""The README's Python example, runnable: ``python -m examples.python_api CHECKPOINT IMAGES.npy OUT``.

Score your own images with a trained model: the measurement, the theory's ledger and the detection table.
"""

from __future__ import annotations

import sys


def main(checkpoint: str, images: str, out: str) -> None:
    # --- README example: begin
    import numpy as np

    from empirical.data.imageset import as_image_set
    from empirical.data.sources import open_in
    from empirical.ood.detectors import Typicality
    from verify.api import compare, load_model

    trained = load_model(checkpoint)                    # our checkpoint; or any nn.Module with log_prob
    in_train, in_test = open_in(trained.dataset)        # the data it was trained on: "fashionmnist", a path, …
    mine = as_image_set(np.load(images), "my images")    # any uint8 array N×H×W, N×H×W×C or N×C×H×W
    result = compare(trained, in_train, in_test, mine)  # measure, predict, explain, detect
    print(result.verdict, result.gap.bpd, result.ledger.summary, result.detection.table(), sep="\n")
    result.write(out)                                    # report.md, results.json, per_image.npz, figures

    typicality = Typicality(trained.model).fit(in_test)  # a detector alone: fit on IN it never trained on,
    print(typicality.score(mine)[:5])                     # then score anything; higher = more OOD
    # --- README example: end


if __name__ == "__main__":
    main(*sys.argv[1:4])
