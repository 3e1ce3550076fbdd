"""Images in: the dataset registry and its official-format readers (``registry``, ``formats``), and every other
source (paths, folders, arrays, torch Datasets) as an ``ImageSet`` of uint8 images with provenance (``sources``)."""
