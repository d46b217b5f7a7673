"""近似計算 (approximation): token mixers that replace softmax attention with something cheaper."""
