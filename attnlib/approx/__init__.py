"""近似計算 (approximation): token mixers that replace softmax attention with something cheaper,
and approximations of softmax attention itself.

* ``mixer.py``, ``poolformer.py``, ``coat.py``: other token mixers in attention's place (vision);
* ``linear.py``: linear attention, the kernel view (elu + 1), with its quadratic, recurrent and
  chunked causal forms and one-token decoding;
* ``performer.py``: Performer's FAVOR+, an unbiased random-feature estimate of softmax's kernel;
* ``linformer.py``: Linformer, keys and values projected along the sequence to k rows.
"""
