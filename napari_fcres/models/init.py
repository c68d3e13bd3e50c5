"""Weight initialisation schemes for every architecture.

The paper's models were built in Keras, whose layers start from Glorot
(Xavier) uniform kernels and zero biases.  PyTorch's own default for
convolutions (Kaiming uniform with ``a = sqrt(5)``) draws weights with a third
of the variance that keeps a ReLU network's signal constant, so in the
norm-free UNet of Table I the signal (and the gradient) shrinks about six-fold
in variance per conv + ReLU; the deep levels then see gradients far below
RMSprop's epsilon and weight decay drives their weights to zero.
"""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = ("glorot", "he", "torch")


def init_weights(module: nn.Module, scheme: str = "glorot") -> None:
    """Re-initialise every convolution of ``module`` in place.

    ``glorot``: Glorot/Xavier uniform kernels, zero biases (Keras' default, as in
    the paper).  ``he``: Kaiming normal (fan-in, ReLU gain), zero biases.
    ``torch``: leave PyTorch's defaults (the behaviour before this option).
    Batch-norm layers keep weight 1 and bias 0 in every scheme.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got {scheme!r}")
    if scheme == "torch":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
