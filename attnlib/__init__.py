"""attnlib: from-scratch PyTorch implementations of the alternatives to self-attention.

The sub-packages follow the book's three families:

* ``attnlib.sparse``  - attentionの間引き (sparsification)
* ``attnlib.approx``  - 近似計算 (approximation)
* ``attnlib.optim``   - 計算過程の最適化 (computation optimization)

``attnlib.reference`` is the dense ground truth, ``attnlib.registry`` lists every
method, ``attnlib.viz`` draws patterns and ``attnlib.bench`` measures them.
Importing attnlib does no work: sub-modules are imported when used.
"""

__version__ = "0.1.0"
