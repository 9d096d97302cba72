"""Datasets (the embedded ``textures`` set and image folders) and their input pipelines."""
