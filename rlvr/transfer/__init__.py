"""How tensors travel between processes: host arrays for Ray's object store and vLLM's ``load_weights``
(:mod:`rlvr.transfer.arrays`), and tensor specs with vLLM's bucket rules for the GPU roads (:mod:`rlvr.transfer.specs`).
A low module: the learners, the engines and the workers all import it, and it imports none of them."""
