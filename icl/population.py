"""Deprecated module: Exact population training of one LSA layer (Zhang, Frei & Bartlett 2023).

Everything moved; ``icl.population.NAME`` still works and warns (``DeprecationWarning``) with the new name.
Tasks live in :mod:`icl.tasks`, closed forms in :mod:`icl.theory` (docs/theory.md).
"""

from __future__ import annotations

from icl._deprecation import shim


_MOVED: dict[str, tuple[str, str, str]] = {
    "population_loss": ("icl.theory", "population_loss", "icl.population_loss"),
    "conserved_quantity": ("icl.theory", "conserved_quantity", "icl.conserved_quantity"),
    "zfb_initialization": ("icl.theory", "zfb_initialization", "icl.zfb_initialization"),
    "gradient_flow_limit": ("icl.theory", "gradient_flow_limit", "icl.gradient_flow_limit"),
    "flow_time_scales": ("icl.theory", "flow_time_scales", "icl.flow_time_scales"),
    "PopulationFlow": ("icl.theory", "PopulationFlow", "icl.PopulationFlow"),
    "train_population": ("icl.theory", "train_population", "icl.train_population"),
    "lsa_from_parameters": ("icl.theory", "lsa_from_parameters", "icl.lsa_from_parameters"),
    "query_marginal_loss": ("icl.theory", "query_marginal_loss", "icl.query_marginal_loss"),
}


__getattr__, __dir__ = shim("icl.population", _MOVED)
