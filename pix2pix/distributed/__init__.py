"""The Ray side of the project: the only package that imports Ray."""
