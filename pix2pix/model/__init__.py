"""The model core: networks, losses, palettes, metrics, precision, inference and the export format.
Pure PyTorch: imports nothing from the pipelines, Ray, pyarrow, OpenCV or albumentations."""
