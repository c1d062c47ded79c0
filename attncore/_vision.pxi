# Included by _core.pyx: the Cython side of csrc/driver/vision.c
# (channel and spatial attention for images).
