"""evilbench: emergent misalignment under optimiser x regulariser LoRA fine-tuning.

Importing the package is cheap: the C++ extension loads on first use of a kernel
(evilbench.kernels), and heavy libraries (transformers, peft) load in the modules that need them.
"""

__version__ = "0.1.0"
