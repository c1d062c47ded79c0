# Included by _core.pyx: the Cython side of csrc/driver/softmax.c
# (attncore.softmax, masked_softmax, kernel_regression).
