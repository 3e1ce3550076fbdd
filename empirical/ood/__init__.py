"""Out-of-distribution detection: one function per score (``scores``, ``model_scores``), detectors as objects that
fit on held-out IN images and score new ones (``detectors``), and the metrics that judge them (``metrics``)."""
