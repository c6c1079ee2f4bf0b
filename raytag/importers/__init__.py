"""Pretrained models from other toolkits, read without those toolkits and written as
raytag model folders (``musicnn``: musicnn's MTT and MSD taggers from TensorFlow 1)."""
