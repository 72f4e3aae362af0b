"""One module per algorithm preset: its options model and its :class:`~rlvr.algos.registry.Preset`. Every module
here is imported by :func:`rlvr.algos.registry.names`, so a new preset needs no registration elsewhere. These modules
import no torch: the recipe's ``algorithm`` section is validated with them."""
